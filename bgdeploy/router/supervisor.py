"""The router supervisor: owns the fixed address and starts the workers that forward on it.

nginx's shape. The supervisor gets the listening socket once (see sockets.py:
handed over by the supervisor it replaces, from systemd, from a live worker
after a kill -9, or made here), starts ``router.workers`` worker processes
that inherit it, and restarts one that dies: its event loop sleeps until a
worker exits (a pidfd each), a command ends, or the once-a-second sample of the
workers' counters for the dashboard's series. It runs the admin listener and
the control loop (a thread, wired in by the caller), and sums the workers'
counters for both (``info``, ``route``, ``traffic``: the admin's answers, as
dicts). The socket is never closed while any of these processes lives, so new
connections wait in the backlog instead of being refused.

A reload starts new workers from the installed code (a fresh exec), waits
until they serve, then drains the old ones. When the installed bgdeploy is a
different version from this process, the supervisor is replaced too (handover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop

from bgdeploy import __version__
from bgdeploy.config import Config, config_digest
from bgdeploy.errors import BgdeployError, ConfigError, OperationFailed
from bgdeploy.failpoints import failpoint
from bgdeploy.registry.store import Registry
from bgdeploy.router import ipc
from bgdeploy.router.admin import Admin, AdminConnection, route_dict, traffic_dict
from bgdeploy.router.handover import address_change, hand_over, refused
from bgdeploy.router.sockets import READY_ENV, TAKEOVER_ENV, Sockets, notify_systemd
from bgdeploy.router.stats import RouterStats
from bgdeploy.router.workers import (
    ExitWatch,
    WorkerProc,
    WorkersFailed,
    start_workers,
    worker_count,
)

log = logging.getLogger("bgdeploy.router")

SAMPLE_S = 1.0  # the workers' counters for the dashboard's series (and a check for exits)
RESPAWN_GAP_S = 0.5  # at most one replacement per this long: a crash loop must not spin
TRAFFIC_WAIT_S = 5.0  # traffic() from another thread: the event loop answers within this


@dataclass
class SupervisorWiring:
    """What the process that hosts the supervisor wires in (see bgdeploy/routerd.py)."""

    status: Callable[[dict[str, int], dict[str, Any]], dict[str, Any]]
    history: Callable[[], list[dict[str, Any]]]
    load_config: Callable[[], Config]
    control_tick: Callable[[Callable[[], dict[str, int]]], None] | None = None
    # Every service of the registry (`/api/status?all=1`); None: this one only.
    status_all: Callable[[dict[str, int], dict[str, Any]], list[dict[str, Any]]] | None = None
    on_config: Callable[[Config], None] = lambda config: None
    argv: list[str] = field(default_factory=list)  # how to start a new supervisor


class RouterSupervisor:
    def __init__(
        self, config: Config, registry: Registry, service: str, wiring: SupervisorWiring
    ) -> None:
        self.config = config
        self.registry = registry
        self.service = service
        self.wiring = wiring
        self.ns = ipc.namespace(config.state_dir)
        self.started = time.time()
        self.workers: dict[int, WorkerProc] = {}
        self.retired = RouterStats()  # counters of workers that have exited
        self.lock = threading.RLock()  # self.workers, shared by the loop and request threads
        self.reloading = threading.Lock()
        self.stopping = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Event | None = None
        self.sockets: Sockets | None = None
        self.admin: Admin | None = None
        self._last_spawn = 0.0
        # On the event loop's thread only: worker exits, a respawn on its way or due.
        self.exits: ExitWatch | None = None
        self._respawning = False
        self._respawn_due: asyncio.TimerHandle | None = None

    # -- entry point ---------------------------------------------------------------------

    def serve(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        # From the start: a SIGTERM while starting still drains whatever was started.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.done.set)
        sockets = self.sockets = Sockets.acquire(self.config, self.ns)
        for pid in sockets.orphans:  # workers of a supervisor that was killed: replaced below
            self.workers[pid] = WorkerProc(pid, None, time.time())
        control = ipc.listen(ipc.supervisor_address(self.ns, os.getpid()))
        threading.Thread(target=self._serve_control, args=(control,), daemon=True).start()
        admin_server = sampling = None
        try:
            try:
                await loop.run_in_executor(None, self._replace_workers, self.config)
            except OperationFailed:
                with self.lock:  # orphans we could not replace serve on, as they were
                    for pid in sockets.orphans:
                        self.workers.pop(pid, None)
                raise
            admin = self.admin = Admin(
                self._snapshot,
                self._status,
                self.wiring.history,
                self.info,
                self._status_all if self.wiring.status_all else None,
                self._live_boots,
            )
            admin_server = await loop.create_server(
                lambda: AdminConnection(admin), sock=sockets.admin.dup()
            )
            takeover = os.environ.pop(TAKEOVER_ENV, None)
            if takeover:  # the supervisor we replace drains its workers and exits
                await loop.run_in_executor(None, self._retire_old, int(takeover))
            self._record(True)
            ready = os.environ.pop(READY_ENV, None)
            if ready:
                # The supervisor that started us may have died meanwhile: we serve anyway.
                with contextlib.suppress(OSError):
                    os.write(int(ready), b"ready\n")
                os.close(int(ready))
            notify_systemd(os.getpid())
            gc.collect()
            gc.freeze()  # the long-lived start-up objects stay out of the collector's passes
            self.exits = ExitWatch(loop, self._check)
            with self.lock:
                for w in self.workers.values():
                    self.exits.add(w)
            sampling = loop.create_task(self._sample())
            self._check()
            threading.Thread(
                target=self._control_loop, name="bgdeploy-control", daemon=True
            ).start()
            cfg = self.config.router
            n = len(self.workers)
            log.info(
                "router supervisor on http://%s:%d, admin on http://%s:%d (pid %d, %d worker%s, "
                "sockets %s)",
                cfg.host,
                cfg.port,
                cfg.host,
                cfg.admin_port,
                os.getpid(),
                n,
                "" if n == 1 else "s",
                sockets.source,
            )
            await self.done.wait()
        finally:
            self.stopping.set()
            if sampling is not None:
                sampling.cancel()
            if self.exits is not None:
                self.exits.close()
                self.exits = None
            log.info("router supervisor stopping: draining the workers")
            await loop.run_in_executor(None, self._stop_workers)
            # A reload that is handing over to a successor answers its caller first.
            await loop.run_in_executor(None, self.reloading.acquire, True, 60)
            if admin_server is not None:
                admin_server.close()
            control.close()
            self._record(False)
            sockets.close()
            log.info("router supervisor stopped")

    # -- workers -------------------------------------------------------------------------

    def _start_workers(self, config: Config, n: int) -> list[WorkerProc]:
        """n new workers, serving; or none and WorkersFailed saying why."""
        assert self.sockets is not None
        self._last_spawn = time.monotonic()
        workers = start_workers(config, self.sockets, self.ns, self.service, n)
        with self.lock:
            for w in workers:
                self.workers[w.pid] = w
        self._on_loop(self._watch, workers)
        return workers

    def _replace_workers(self, config: Config) -> list[WorkerProc]:
        with self.lock:
            old = [w for w in self.workers.values() if not w.draining]
        new = self._start_workers(config, worker_count(config))
        for w in old:
            w.drain()
        return new

    def _stop_workers(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.drain()
        deadline = time.monotonic() + self.config.daemon.drain_timeout + 5
        for w in workers:
            while not w.exited() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not w.exited():
                with contextlib.suppress(ProcessLookupError):  # it exited just now
                    os.kill(w.pid, signal.SIGKILL)
            if w.proc is not None:
                w.proc.wait()

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn on the event loop (from any thread); nothing once the loop has closed."""
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(fn, *args)

    def _watch(self, workers: list[WorkerProc]) -> None:
        if self.exits is not None:  # else: added with every other worker when watching starts
            for w in workers:
                self.exits.add(w)

    async def _sample(self) -> None:
        """Once a second: the workers' counters for the dashboard's series; and a look for
        exits no pidfd reported (a kernel without them)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SAMPLE_S)
            snapshot = await loop.run_in_executor(None, self._snapshot)
            if self.admin is not None:
                self.admin.series.sample(
                    snapshot.requests, snapshot.upstream_errors, snapshot.latency
                )
            self._check()

    def _check(self) -> None:
        """On the event loop, when a worker exited or a command ended: forget (and reap) the
        workers that exited, and replace the missing serving ones, one start at a time,
        at most one per RESPAWN_GAP_S (else later); none while reloading or stopping."""
        if self.exits is None:
            return
        with self.lock:
            gone = [w for w in self.workers.values() if w.exited()]  # poll() reaps a child
            for w in gone:
                del self.workers[w.pid]
                if w.last is not None:
                    self.retired.add(w.last)
            serving = sum(1 for w in self.workers.values() if not w.draining)
        for w in gone:
            self.exits.forget(w.pid)
            if not w.draining:
                code = w.proc.returncode if w.proc else None
                log.warning("worker %d exited (code %s); starting another", w.pid, code)
        want = worker_count(self.config)
        if serving >= want or self._respawning or self.reloading.locked() or self.stopping.is_set():
            return
        wait = RESPAWN_GAP_S - (time.monotonic() - self._last_spawn)
        if wait > 0:
            if self._respawn_due is None:
                self._respawn_due = self.loop.call_later(wait, self._respawn_now)
            return
        self._respawning = True
        started = self.loop.run_in_executor(None, self._respawn, want - serving)
        started.add_done_callback(self._respawned)

    def _respawn_now(self) -> None:
        self._respawn_due = None
        self._check()

    def _respawned(self, started: asyncio.Future[None]) -> None:
        self._respawning = False
        if not started.cancelled() and started.exception() is not None:
            log.warning("could not replace a worker: %s", started.exception())
        self._check()  # a start that failed is tried again after RESPAWN_GAP_S

    def _respawn(self, n: int) -> None:
        try:
            self._start_workers(self.config, n)
        except OperationFailed as e:
            log.warning("could not replace a worker: %s", e.message)

    # -- what the workers count ------------------------------------------------------------

    def collect(self) -> list[dict[str, Any]]:
        """Every live worker's counters (blocking: a unix-socket round trip each)."""
        with self.lock:
            workers = list(self.workers.values())
        out = []
        for w in workers:
            try:
                stats, _ = ipc.request(ipc.worker_address(self.ns, w.pid), {"cmd": "stats"}, 1.0)
            except (OSError, ValueError):
                if w.last is None or w.exited():
                    continue
                stats = w.last  # busy for a moment: its last counters stand in
            stats["draining"] = stats["draining"] or w.draining  # told to, maybe not yet begun
            w.last = stats
            out.append(stats)
        return out

    def _snapshot(self) -> RouterStats:
        return RouterStats.of(self.collect(), self.retired)

    def _live_boots(self) -> set[str] | None:
        """The boots whose series /metrics shows (None: all, if the registry is unreadable)."""
        try:
            return {b.boot_id for b in self.registry.boots(self.service, live_only=True)}
        except Exception as e:  # noqa: BLE001 - metrics must answer while the registry is away
            log.debug("live boots unknown: %s", e)
            return None

    # -- what the admin listener answers, for the control loop (any thread, blocking) ------

    def inflight(self) -> dict[str, int]:
        return self._snapshot().inflight

    def info(self, snapshot: RouterStats | None = None) -> dict[str, Any]:
        """``/api/router``: this supervisor and its workers."""
        snap = snapshot or self._snapshot()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started": self.started,
            "workers": snap.workers_info(),
            "admin_requests": self.admin.requests if self.admin is not None else 0,
        }

    def _status(self, snapshot: RouterStats) -> dict[str, Any]:
        return self.wiring.status(snapshot.inflight, self.info(snapshot))

    def _status_all(self, snapshot: RouterStats) -> list[dict[str, Any]]:
        assert self.wiring.status_all is not None
        return self.wiring.status_all(snapshot.inflight, self.info(snapshot))

    def route(self) -> dict[str, Any]:
        """``/api/route``: where the workers route, and the controls they apply."""
        return route_dict(self._snapshot())

    def traffic(self, window: float, end: float | None = None) -> dict[str, Any]:
        """``/api/traffic?window=&end=``: each boot's answers over the window (ValueError
        for a bad one). The series lives on the event loop: computed there."""
        loop, admin = self.loop, self.admin
        if loop is None or admin is None:
            raise OperationFailed("The router is not serving yet: no traffic to report.")
        with contextlib.suppress(RuntimeError):  # RuntimeError: not on a loop's thread
            if asyncio.get_running_loop() is loop:
                return traffic_dict(admin.series, window, end)

        async def compute() -> dict[str, Any]:
            return traffic_dict(admin.series, window, end)

        return asyncio.run_coroutine_threadsafe(compute(), loop).result(TRAFFIC_WAIT_S)

    # -- control requests (`bgdeploy router reload`, a successor) ---------------------------

    def _serve_control(self, control: Any) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = control.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        with conn:
            try:
                if not ipc.peer_is_us(conn):
                    return
                message, _ = ipc.read_message(conn)
                ipc.send_message(conn, self._handle(message))
            except (OSError, ValueError) as e:
                log.warning("control request failed: %s", e)

    def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        cmd = message.get("cmd")
        if cmd == "info":
            return self.info()
        if cmd == "reload":
            return self.reload(str(message.get("version")))
        if cmd == "retire":
            assert self.loop is not None and self.done is not None
            self.loop.call_soon_threadsafe(self.done.set)
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def reload(self, installed: str) -> dict[str, Any]:
        if not self.reloading.acquire(blocking=False):
            return refused(OperationFailed("A reload of the router is already running."))
        try:
            try:
                config = self.wiring.load_config()
            except BgdeployError as e:
                return refused(e)
            why = address_change(self.config, config)
            if why is not None:
                return refused(
                    ConfigError(
                        f"The router was not reloaded: {why}",
                        hint="Put the old value back, or use `bgdeploy down` and `up` to move.",
                    )
                )
            try:
                if installed != __version__:
                    pid = hand_over(self.sockets, self.wiring.argv, self.config)
                    return {"ok": True, "supervisor": pid, "replaced_supervisor": os.getpid()}
                with self.lock:
                    old = [w for w in self.workers.values() if not w.draining]
                new = self._start_workers(config, worker_count(config))
                failpoint("reload_after_new_workers")
                for w in old:
                    w.drain()
            except WorkersFailed as e:
                return refused(
                    OperationFailed(
                        f"The router was not reloaded: {e.why}; the old workers keep serving.",
                        hint=e.hint,
                    )
                )
            except OperationFailed as e:
                return refused(e)
            self.config = config
            self.wiring.on_config(config)
            self._record(True)
            return {
                "ok": True,
                "supervisor": os.getpid(),
                "workers": [w.pid for w in new],
                "drained": [w.pid for w in old],
            }
        finally:
            self.reloading.release()
            self._on_loop(self._check)  # a worker that exited meanwhile is replaced now

    def _retire_old(self, pid: int) -> None:
        try:
            ipc.request(ipc.supervisor_address(self.ns, pid), {"cmd": "retire"}, 5.0)
        except (OSError, ValueError) as e:
            # It died: its workers are ours to drain, as after any supervisor's death.
            log.warning("the supervisor we replace (pid %d) did not answer: %s", pid, e)
            with self.lock:
                strays = [p for p in ipc.live_workers(self.ns) if p not in self.workers]
                for p in strays:
                    self.workers[p] = WorkerProc(p, None, time.time())
                adopted = [self.workers[p] for p in strays]
            for w in adopted:
                w.drain()
            self._on_loop(self._watch, adopted)

    # -- the control loop and the registry row ---------------------------------------------

    def _control_loop(self) -> None:
        tick = self.wiring.control_tick
        if tick is None:
            return
        failing = False  # a registry outage fails every pass: say so once, and the end once
        while not self.stopping.wait(self.config.health.interval):
            try:
                tick(self.inflight)
            except Exception as e:  # noqa: BLE001 - the loop must outlive one bad pass
                if not failing:
                    log.warning("control loop pass failed (quiet until one works): %s", e)
                failing = True
            else:
                if failing:
                    log.warning("control loop passes work again")
                failing = False

    def _record(self, running: bool) -> None:
        routers = self.registry.routers
        if not running:
            routers.forget(self.service)
            return
        cfg = self.config.router
        routers.record(
            self.service,
            f"http://{cfg.host}:{cfg.port}",
            f"http://{cfg.host}:{cfg.admin_port}",
            config_digest(self.config),
        )
