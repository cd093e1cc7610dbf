"""The router process: owns the fixed address, follows the registry, runs the control loop.

``serve`` runs in the foreground until SIGTERM/SIGINT: then it stops accepting,
lets in-flight requests finish (up to ``drain_timeout``) and exits. The control
loop (a reconcile pass every ``health.interval``) runs in its own thread, so a
slow registry or health call never stalls forwarding.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import uvloop

from bgdeploy.boots import port_holder
from bgdeploy.control.app import App
from bgdeploy.errors import OperationFailed
from bgdeploy.registry.models import Router, utcnow
from bgdeploy.router.admin import Admin, AdminConnection
from bgdeploy.router.client import ClientConnection, Limits
from bgdeploy.router.routes import RouteTable, watcher_for

log = logging.getLogger("bgdeploy.router")

TICK_S = 0.1  # the route table's coarse clock
SWEEP_TICKS = 5  # cut slow and idle clients every 0.5 s
SAMPLE_S = 1.0  # the dashboard chart's resolution

ControlTick = Callable[[App, Callable[[], dict[str, int]]], Any]


class RouterProcess:
    def __init__(self, app: App, control_tick: ControlTick | None = None) -> None:
        self.app = app
        self.config = app.config
        self.control_tick = control_tick
        self.loop: asyncio.AbstractEventLoop | None = None
        self.table: RouteTable | None = None
        self.stopping = threading.Event()

    # -- entry point ---------------------------------------------------------------------

    def serve(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    def inflight(self) -> dict[str, int]:
        """A snapshot of in-flight counts per boot, safe to call from any thread."""
        if self.loop is None or self.table is None or self.loop.is_closed():
            return {}

        async def snap() -> dict[str, int]:
            return dict(self.table.inflight)  # type: ignore[union-attr]

        try:
            return asyncio.run_coroutine_threadsafe(snap(), self.loop).result(timeout=2)
        except Exception:  # noqa: BLE001 - loop shutting down
            return {}

    async def _main(self) -> None:
        cfg = self.config.router
        loop = asyncio.get_running_loop()
        table = self.table = RouteTable(loop, cfg.max_connections)
        limits = Limits(
            header_timeout=cfg.header_timeout,
            idle_timeout=cfg.idle_timeout,
            upstream_timeout=cfg.upstream_timeout,
            stream_idle_timeout=cfg.stream_idle_timeout,
            max_body=cfg.max_body,
        )
        registry = self.app.registry
        watcher = watcher_for(registry, self.app.service, table)
        try:
            watcher.refresh()
        except Exception as e:  # noqa: BLE001 - start serving anyway; the watcher retries
            log.warning("registry unreadable at start: %s", e)
        server = await self._listen(
            loop, lambda: ClientConnection(table, limits), cfg.host, cfg.port, "router"
        )
        admin = Admin(table, self._status, self._history, self._status_all)
        listeners = [server]
        try:
            admin_server = await self._listen(
                loop, lambda: AdminConnection(admin), cfg.host, cfg.admin_port, "admin listener"
            )
            listeners.append(admin_server)
            if cfg.preview_port is not None:
                listeners.append(
                    await self._listen(
                        loop,
                        lambda: ClientConnection(table, limits, preview=True),
                        cfg.host,
                        cfg.preview_port,
                        "preview listener",
                    )
                )
        except OperationFailed:
            for listener in listeners:
                listener.close()
            raise
        self._record(True)
        # Everything loaded so far (SQLAlchemy, Typer, rich, ... about 90k objects) lives
        # as long as the process: keep it out of the collector's full passes, which
        # otherwise stall forwarding for tens of milliseconds now and then.
        gc.collect()
        gc.freeze()
        watching = loop.create_task(watcher.run())
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        sweeper = loop.create_task(self._sweep(table))
        sampler = loop.create_task(self._sample(table, admin))
        control = threading.Thread(target=self._control_loop, name="bgdeploy-control", daemon=True)
        control.start()
        log.info(
            "router on http://%s:%d, admin on http://%s:%d (pid %d)",
            cfg.host,
            cfg.port,
            cfg.host,
            cfg.admin_port,
            os.getpid(),
        )
        try:
            await done.wait()
        finally:
            log.info("router stopping: draining in-flight requests")
            self.stopping.set()
            server.close()
            for listener in listeners[2:]:
                listener.close()
            for conn in list(table.connections):
                if conn.is_idle():
                    conn.close()
            await self._drain(table)
            admin_server.close()
            sweeper.cancel()
            sampler.cancel()
            watching.cancel()
            self._record(False)
            log.info("router stopped")

    async def _listen(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], Any],
        host: str,
        port: int,
        what: str,
    ) -> asyncio.AbstractServer:
        try:
            return await loop.create_server(factory, host, port, reuse_address=True, backlog=2048)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                who = port_holder(host, port)
                raise OperationFailed(
                    f"The {what} cannot listen on {host}:{port}: the port is taken"
                    + (f" by {who}." if who else "."),
                    hint="Stop that process, or set another port in [router] of bgdeploy.toml.",
                ) from None
            raise OperationFailed(
                f"The {what} cannot listen on {host}:{port}: {e.strerror}."
            ) from None

    async def _sweep(self, table: RouteTable) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            ticks += 1
            if ticks % SWEEP_TICKS:
                table.tick()
            else:
                table.sweep()

    async def _sample(self, table: RouteTable, admin: Admin) -> None:
        """The dashboard chart's data: the response counters once a second."""
        while True:
            admin.series.sample(table.requests)
            await asyncio.sleep(SAMPLE_S)

    async def _drain(self, table: RouteTable) -> None:
        deadline = time.monotonic() + self.config.daemon.drain_timeout
        while table.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            for conn in list(table.connections):
                if conn.is_idle():
                    conn.close()
        for conn in list(table.connections):
            conn.close()

    def _status(self, inflight: dict[str, int]) -> dict[str, Any]:
        from bgdeploy.control.status import status

        return status(self.app, inflight)

    def _status_all(self, inflight: dict[str, int]) -> list[dict[str, Any]]:
        from bgdeploy.control.status import all_statuses

        return all_statuses(self.app, inflight)

    def _history(self) -> list[dict[str, Any]]:
        from bgdeploy.control.status import history

        return history(self.app, 20)

    def _record(self, running: bool) -> None:
        cfg = self.config.router
        with self.app.registry.writing() as s:
            row = s.get(Router, self.app.service)
            if not running:
                if row is not None and row.pid == os.getpid():
                    s.delete(row)
                return
            if row is None:
                row = Router(service=self.app.service)
                s.add(row)
            row.pid = os.getpid()
            row.pid_create_time = psutil.Process().create_time()
            row.url = f"http://{cfg.host}:{cfg.port}"
            row.admin_url = f"http://{cfg.host}:{cfg.admin_port}"
            row.started_ts = utcnow()

    def _control_loop(self) -> None:
        if self.control_tick is None:
            return
        interval = self.config.health.interval
        failing = False  # a registry outage fails every pass: say so once, and the end once
        while not self.stopping.wait(interval):
            try:
                self.control_tick(self.app, self.inflight)
            except Exception as e:  # noqa: BLE001 - the loop must outlive one bad pass
                if not failing:
                    log.warning("control loop pass failed (quiet until one works): %s", e)
                failing = True
            else:
                if failing:
                    log.warning("control loop passes work again")
                failing = False
