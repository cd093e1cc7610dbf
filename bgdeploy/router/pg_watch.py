"""Route following for a PostgreSQL registry: LISTEN/NOTIFY, with a slow poll.

Every deploy transition of the deployment row, and every change of its operator
controls (pause, maintenance, healing, a canary step), sends ``NOTIFY bgdeploy_route,
'<service>'`` in its own transaction (Registry.route_changed), so the notification
arrives exactly when the change commits.
The watcher thread holds one plain psycopg connection (no SQLAlchemy, no pool),
listens, and reads the route with one small query after each notification for its
service and once a second anyway (the fallback if a notification is ever lost).

When the server cannot be reached the route table keeps the last known route and
forwarding goes on; the outage is logged once, and the recovery once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import psycopg

from bgdeploy.registry.engine import CONNECT_TIMEOUT_S, libpq_url, safe_url
from bgdeploy.registry.store import ROUTE_CHANNEL
from bgdeploy.router.route_state import ROUTE_SQL, Route, RouteState, route_state

if TYPE_CHECKING:
    from bgdeploy.router.routes import RouteTable

log = logging.getLogger("bgdeploy.router")

SLOW_POLL_S = 1.0
RETRY_S = 0.25
# The shared route query with psycopg's placeholder instead of sqlite3's.
ROUTE_SQL_PG = ROUTE_SQL.replace("?", "%s")


class PgRouteWatcher:
    """Pushes the route state of a PostgreSQL registry (RouteState: route, preview, pause,
    maintenance, canary weight) into the route table."""

    def __init__(self, url: str, service: str, table: RouteTable) -> None:
        self.url = url
        self.service = service
        self.table = table
        self.down = False
        self.last_error: str | None = None
        self._stop = threading.Event()

    def _connect(self) -> psycopg.Connection:
        # TCP keepalives and a user timeout: a server that vanishes without closing the
        # socket (a host gone, a cable pulled) is noticed in seconds, not hours.
        return psycopg.connect(
            libpq_url(self.url),
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="bgdeploy router",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=5000,
        )

    def _read(self, conn: psycopg.Connection) -> RouteState:
        """The whole route state: the active boot and the operator controls with it."""
        return route_state(conn.execute(ROUTE_SQL_PG, (self.service,)).fetchone())

    def refresh(self) -> Route | None:
        """Read the route now (blocking) and apply it; for start-up."""
        with self._connect() as conn:
            state = self._read(conn)
        self.table.apply(state)
        return state.active

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self._follow, args=(loop,), name="pg-route", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()  # until the router cancels us
        finally:
            self._stop.set()

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {ROUTE_CHANNEL}")
                    # Read after LISTEN: a switch committed in between is not missed.
                    self._apply(loop, self._read(conn))
                    self._recovered()
                    while not self._stop.is_set():
                        got = [n.payload for n in conn.notifies(timeout=SLOW_POLL_S, stop_after=1)]
                        if not got or self.service in got:
                            self._apply(loop, self._read(conn))
            except psycopg.Error as e:
                self._lost(e)
                self._stop.wait(RETRY_S)

    def _apply(self, loop: asyncio.AbstractEventLoop, state: RouteState) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the router is stopping
            loop.call_soon_threadsafe(self.table.apply, state)

    def _lost(self, e: Exception) -> None:
        self.last_error = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        if not self.down:
            self.down = True
            log.warning(
                "registry %s unreachable, forwarding on the last known route %s: %s",
                safe_url(self.url),
                self.table.active.boot_id if self.table.active else None,
                self.last_error,
            )

    def _recovered(self) -> None:
        if self.down:
            self.down = False
            self.last_error = None
            log.warning("registry %s reachable again", safe_url(self.url))
