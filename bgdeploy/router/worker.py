"""A router worker: forwards requests on a listening socket it inherited, and nothing else.

Started by the supervisor as ``python -m bgdeploy.router.worker`` with its
settings in ``$BGDEPLOY_WORKER`` (JSON) and the sockets as inherited
descriptors. It follows the registry's route itself (one small sqlite3 query,
see routes.RegistryWatcher), so it never loads SQLAlchemy, Typer or rich: what
it imports is the proxy, uvloop and httptools.

It answers the supervisor on its own unix socket (see ipc): ``stats`` (its
counters), ``sockets`` (its listening sockets, by SCM_RIGHTS, for a supervisor
that starts after the last one was killed) and ``drain``. Those questions are
answered on the event loop without ever blocking it (a client that connects and
says nothing must not hold up forwarding): at most CONTROL_CLIENTS at once, each
given CONTROL_TIMEOUT_S to ask and be answered, its question at most
CONTROL_MAX_REQUEST bytes. SIGTERM drains too:
stop accepting (the socket stays open in the other processes, so nothing is
refused), answer each keep-alive connection's current request with
``Connection: close``, let streams and WebSockets run until they end or
``drain_timeout``, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

import uvloop

from bgdeploy import __version__
from bgdeploy.router import build, ipc
from bgdeploy.router.client import ClientConnection, Limits
from bgdeploy.router.routes import RouteTable, watcher_for

log = logging.getLogger("bgdeploy.router.worker")

TICK_S = 0.1  # the route table's coarse clock
SWEEP_TICKS = 5  # cut slow and idle clients every 0.5 s
# With no client connection and no held request nothing can time out: the ticks rest
# until a connection comes (RouteTable.connection_opened wakes them), or this long.
REST_S = 5.0
# While draining, a keep-alive connection idle this long is closed. A client that is
# between two requests gets a moment to send the next (and be told Connection: close)
# rather than have the connection shut under it.
DRAIN_IDLE_S = 1.0
# The control socket's clients (the supervisor, a successor, `bgdeploy` commands): each
# gets this long to send its question and take the answer; this many are served at
# once (the rest wait in the listen backlog); a question is at most this big.
CONTROL_TIMEOUT_S = 10.0
CONTROL_CLIENTS = 16
CONTROL_MAX_REQUEST = 64 * 1024


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.started = time.time()
        self.listen = socket.socket(fileno=spec["listen_fd"])
        # Held, never used: while any worker lives the admin port stays open too, so a
        # supervisor that replaces a killed one can take it over.
        self.admin = socket.socket(fileno=spec["admin_fd"]) if spec.get("admin_fd") else None
        self.preview = socket.socket(fileno=spec["preview_fd"]) if spec.get("preview_fd") else None
        self.table: RouteTable | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.done = asyncio.Event()
        self.draining = False
        self.control: socket.socket | None = None
        self.control_clients: set[asyncio.Task[None]] = set()
        self.control_requests: Counter[str] = Counter()  # answered, by command
        self.watcher: Any = None

    def run(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        table = self.table = RouteTable(loop, spec["max_connections"])
        limits = Limits(
            header_timeout=spec["header_timeout"],
            idle_timeout=spec["idle_timeout"],
            upstream_timeout=spec["upstream_timeout"],
            stream_idle_timeout=spec["stream_idle_timeout"],
            max_body=spec["max_body"],
        )
        watcher = self.watcher = watcher_for(spec["registry_url"], spec["service"], table)
        try:
            watcher.refresh()
        except Exception as e:  # noqa: BLE001 - start serving anyway; the watcher retries
            log.warning("registry unreadable at start: %s", e)
        # The server gets its own descriptor: closing it to stop accepting leaves ours,
        # which can still be handed to a new supervisor.
        self.servers.append(
            await loop.create_server(
                lambda: ClientConnection(table, limits), sock=self.listen.dup()
            )
        )
        if self.preview is not None:
            self.servers.append(
                await loop.create_server(
                    lambda: ClientConnection(table, limits, preview=True), sock=self.preview.dup()
                )
            )
        control = self.control = ipc.listen(ipc.worker_address(spec["namespace"], os.getpid()))
        control.setblocking(False)
        loop.add_reader(control.fileno(), self._control_accept)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        watching = loop.create_task(watcher.run())
        sweeper = loop.create_task(self._sweep(table))
        gc.collect()
        gc.freeze()
        ready = spec.get("ready_fd")
        if ready is not None:
            with contextlib.suppress(OSError):  # a supervisor that died meanwhile
                os.write(ready, b"ready\n")
            os.close(ready)
        log.info("worker %d serving (bgdeploy %s)", os.getpid(), __version__)
        try:
            await self.done.wait()
            await self._drain(table)
        finally:
            loop.remove_reader(control.fileno())
            control.close()
            for task in list(self.control_clients):
                task.cancel()
            sweeper.cancel()
            watching.cancel()
            log.info("worker %d stopped", os.getpid())

    # -- draining ----------------------------------------------------------------------

    def drain(self) -> None:
        self.done.set()

    async def _drain(self, table: RouteTable) -> None:
        self.draining = table.draining = True
        for server in self.servers:
            server.close()
        for conn in table.connections:
            if conn.active is not None and not conn.active.response_started:
                conn.active.close_after = True
        deadline = time.monotonic() + self.spec["drain_timeout"]
        while table.connections and time.monotonic() < deadline:
            for conn in list(table.connections):
                if conn.is_idle() and table.clock - conn.last_activity >= DRAIN_IDLE_S:
                    conn.close()
            await asyncio.sleep(0.05)
        for conn in list(table.connections):
            conn.close()

    async def _sweep(self, table: RouteTable) -> None:
        ticks = 0
        while True:
            if not table.connections and not table.waiting:
                table.wake = wake = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), REST_S)
                table.wake = None
                table.sweep()
                ticks = 0
                continue
            await asyncio.sleep(TICK_S)
            ticks += 1
            if ticks % SWEEP_TICKS:
                table.tick()
            else:
                table.sweep()

    # -- the supervisor's questions ----------------------------------------------------

    def _control_accept(self) -> None:
        """The control socket is readable: take its waiting clients, up to CONTROL_CLIENTS
        at once; at the limit, stop watching it until one of them is done."""
        loop = asyncio.get_running_loop()
        control = self.control
        assert control is not None
        while len(self.control_clients) < CONTROL_CLIENTS:
            try:
                conn, _ = control.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. out of descriptors: try again on the next wake
                log.warning("control socket: %s", e)
                return
            conn.setblocking(False)
            task = loop.create_task(self._control_client(conn))
            self.control_clients.add(task)
            task.add_done_callback(self._control_done)
        loop.remove_reader(control.fileno())

    def _control_done(self, task: asyncio.Task[None]) -> None:
        full = len(self.control_clients) >= CONTROL_CLIENTS
        self.control_clients.discard(task)
        if full and self.control is not None and self.control.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.control.fileno(), self._control_accept)

    async def _control_client(self, conn: socket.socket) -> None:
        with conn:
            try:
                if not ipc.peer_is_us(conn):
                    return
                async with asyncio.timeout(CONTROL_TIMEOUT_S):
                    message = json.loads(await self._read_request(conn))
                    cmd = message.get("cmd") if isinstance(message, dict) else None
                    answer, fds = self._answer(cmd)
                    await self._send(conn, answer, fds)
                if cmd == "drain":
                    self.drain()
            except TimeoutError:
                log.warning("control request: no question within %gs", CONTROL_TIMEOUT_S)
            except (OSError, ValueError) as e:
                log.warning("control request failed: %s", e)

    async def _read_request(self, conn: socket.socket) -> bytes:
        """One JSON line (or what came before the peer shut its side), at most
        CONTROL_MAX_REQUEST bytes. Descriptors a peer sends along are not taken."""
        loop = asyncio.get_running_loop()
        data = b""
        while not data.endswith(b"\n"):
            chunk = await loop.sock_recv(conn, 65536)
            if not chunk:
                break
            data += chunk
            if len(data) > CONTROL_MAX_REQUEST:
                raise ValueError(f"a control request over {CONTROL_MAX_REQUEST} bytes")
        if not data:
            raise ConnectionError("the peer closed the connection without a question")
        return data

    async def _send(self, conn: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        data = json.dumps(message).encode() + b"\n"
        loop = asyncio.get_running_loop()
        while fds:  # the descriptors go with the first bytes sent (SCM_RIGHTS)
            try:
                sent = socket.send_fds(conn, [data], fds)
            except (BlockingIOError, InterruptedError):
                writable = loop.create_future()
                loop.add_writer(conn.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(conn.fileno())
                continue
            data, fds = data[sent:], []
        if data:
            await loop.sock_sendall(conn, data)

    def _answer(self, cmd: object) -> tuple[dict[str, Any], list[int]]:
        self.control_requests[cmd if cmd in ("stats", "sockets", "drain") else "other"] += 1
        if cmd == "stats":
            return self.stats(), []
        if cmd == "sockets":
            held = [("listen", self.listen), ("admin", self.admin), ("preview", self.preview)]
            fds = [sock.fileno() for _, sock in held if sock is not None]
            names = [name for name, sock in held if sock is not None]
            return {"ok": True, "names": names}, fds
        if cmd == "drain":
            return {"ok": True}, []
        return {"ok": False, "error": f"unknown command {cmd!r}"}, []

    def stats(self) -> dict[str, Any]:
        table = self.table
        assert table is not None
        route = table.active
        return {
            "pid": os.getpid(),
            "version": __version__,
            "build": build(),  # "compiled" or "pure-python": the request path this runs
            "started": self.started,
            "draining": self.draining,
            "connections": len(table.connections),
            "inflight": dict(table.inflight),
            "requests": [[b, c, n] for (b, c), n in table.requests.items()],
            "upstream_errors": [[b, k, n] for (b, k), n in table.upstream_errors.items()],
            "latency": [[b, list(counts)] for b, counts in table.latency.items()],
            # Per replica (boot, port): answers, upstream errors, outstanding requests.
            "replicas": table.replica_counts(),
            "switches": table.switches,
            "route": None if route is None else [route.boot_id, route.generation],
            "route_changed_at": table.route_changed_at,
            "preview": None
            if table.preview is None
            else [table.preview.boot_id, table.preview.generation],
            "paused": table.pause is not None and not table.pause.healing,
            "healing": table.pause is not None and table.pause.healing,
            "held": len(table.waiting),
            "maintenance": table.maintenance is not None,
            "canary_weight": table.canary_weight,
            # What the worker is asked besides forwarding: control requests answered (by
            # command) and open now (this one included), and the registry watcher's
            # change checks and route reads (issue 22: what the control plane costs it).
            "control_requests": dict(self.control_requests),
            "control_clients": len(self.control_clients),
            "registry_checks": getattr(self.watcher, "checks", None),
            "registry_reads": getattr(self.watcher, "reads", None),
        }


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    spec = json.loads(os.environ.pop(ipc.WORKER_SPEC_ENV))
    Worker(spec).run()


if __name__ == "__main__":
    main()
