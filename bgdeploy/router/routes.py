"""Where requests go: the route table, and the watcher of a SQLite registry, both on the
worker's event loop.

The watcher asks ``PRAGMA data_version`` on its own SQLite connection whenever
inotify says the database or its WAL was written (every few milliseconds where
inotify is missing): the number changes exactly when another connection commits,
so the route follows a commit at once, and an idle registry costs nothing. If
the registry cannot be read, the last route stays. A PostgreSQL registry is
followed by pg_watch instead (LISTEN/NOTIFY, in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from bisect import bisect_right
from collections import Counter
from math import ceil
from typing import TYPE_CHECKING

from bgdeploy.registry.urls import is_postgres, sqlite_path
from bgdeploy.router.route_core import RouteCore
from bgdeploy.router.route_state import ROUTE_SQL, Route, RouteState, route_state
from bgdeploy.router.stats import LATENCY_BOUNDS  # (its home; also imported from here)
from bgdeploy.router.steering import Maintenance, Pause, WaitingRequests
from bgdeploy.router.upstream import Pools, Replica
from bgdeploy.router.wake import FileWaker

if TYPE_CHECKING:
    from bgdeploy.router.client import ClientConnection
    from bgdeploy.router.pg_watch import PgRouteWatcher

log = logging.getLogger("bgdeploy.router")

WATCH_POLL_S = 0.01  # without inotify, and for a moment after each write
# A WAL commit becomes visible with its shared-memory index, just after its last
# write to the WAL file (and mmap writes wake no inotify): so after a write, poll
# this long before sleeping again.
WAKE_FOLLOW_S = 0.05
SLOW_POLL_S = 1.0  # read the row anyway this often (belt and braces)


class RouteTable(RouteCore):
    """Lives on the event loop thread; other threads change it via call_soon_threadsafe.

    The fields that every request reads (the route, the clock, the flags) are
    RouteCore's: C fields in the compiled build."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_connections: int) -> None:
        self.loop = loop
        self.active: Route | None = None
        self.pools = Pools()
        # Per boot that new requests may go to (the active one, the preview), its replicas
        # in rotation (Route.targets), which Exchange.start balances over; and the replicas
        # whose connections go back to their keep-alive pool after an answer: those in
        # rotation of the active boot and of a canary candidate (see pooled).
        self.targets: dict[str, tuple[Replica, ...]] = {}
        self.kept: frozenset[Replica] = frozenset()
        # Plain dicts, updated inline on the request path (cheaper than Counter).
        # Per boot, answers by status: {status: count}, counted inline on the request path
        # (Exchange.send_head, through the boot's Upstream); see ``requests``.
        self.statuses: dict[str, dict[int, int]] = {}
        self.upstream_errors: Counter[tuple[str, str]] = Counter()
        # Per boot, answers by latency: one count per LATENCY_BOUNDS bucket, then +inf.
        self.latency: dict[str, list[int]] = {}
        # A coarse clock for timeouts, set by tick(): reading it costs less than a call.
        self.clock = time.monotonic()
        self.switches = 0
        self.route_changed_at = time.time()
        self.connections: set[ClientConnection] = set()
        self.max_connections = max_connections
        self.preview: Route | None = None
        self.pause: Pause | None = None
        self.maintenance: Maintenance | None = None
        self.waiting = WaitingRequests()
        self.canary_weight = 0  # percent of new requests the preview route gets
        # Any of the four set: one attribute for the request path to check.
        self.controlled = False
        # Set when this worker drains: every response from now on says Connection: close.
        self.draining = False
        # Set by the worker while its ticks rest (no client connection): the first one
        # wakes them.
        self.wake: asyncio.Event | None = None

    # -- routing -----------------------------------------------------------------------

    def apply(self, state: RouteState) -> None:
        """The registry's word: route, preview, pause and maintenance (resume releases)."""
        moved = state.active != self.active
        self.set_active(state.active)
        if state.preview != self.preview:
            log.info("preview: %s", state.preview.boot_id if state.preview else None)
            self.preview = state.preview
        if state.maintenance != self.maintenance:
            log.info("maintenance: %s", "on" if state.maintenance else "off")
            self.maintenance = state.maintenance
        if state.canary_weight != self.canary_weight:
            log.info("canary: %d%% of new requests to the candidate", state.canary_weight)
            self.canary_weight = state.canary_weight
        self._retarget()
        was_paused, self.pause = self.pause, state.pause
        self.controlled = (
            self.preview is not None
            or self.pause is not None
            or self.maintenance is not None
            or self.canary_weight > 0
        )
        if was_paused is not None and state.pause is None:
            log.info("resume: %d held requests released in order", len(self.waiting))
            self.waiting.release()
        elif state.pause is not None and state.pause != was_paused:
            log.info("pause: new requests are held (at most %gs)", state.pause.max_s)
            if state.pause.max_s <= 0:
                # A crash-loop backoff longer than router.hold_timeout: waiting is futile.
                self.waiting.expire(float("inf"), 1, healing=state.pause.healing)
            elif state.pause.healing:
                # Requests held since their boot died now wait for its replacement.
                self.waiting.extend(time.monotonic() + state.pause.max_s)
        elif state.pause is None and self.waiting and moved:
            # Held after their boot died, with no pause: the new route takes them.
            self.waiting.release()

    def set_active(self, route: Route | None) -> None:
        old = self.active
        if old == route:
            return
        self.active = route
        self.route_changed_at = time.time()
        if old is not None and route is not None and old.boot_id != route.boot_id:
            self.switches += 1
        self._retarget()
        before, after = (old.boot_id if old else None), (route.boot_id if route else None)
        if before != after:  # a new generation of the same boot is not news
            log.info("route: %s -> %s", before, after)

    def is_active(self, boot_id: str) -> bool:
        return self.active is not None and self.active.boot_id == boot_id

    def pooled(self) -> set[tuple[str, int]]:
        """The replicas, (boot, port), whose idle upstream connections are kept: those in
        rotation of the active boot and of a canary candidate (the others can drain)."""
        routes = [self.active]
        if self.canary_weight > 0:
            routes.append(self.preview)
        return {(r.boot_id, p) for r in routes if r is not None for p in r.targets}

    def _retarget(self) -> None:
        """After a route change: the replicas each boot's new requests go to, the pools
        kept, and the idle connections of the others closed."""
        pools = self.pools
        self.targets = {
            r.boot_id: tuple(pools.replica(r.boot_id, p) for p in r.targets)
            for r in (self.preview, self.active)  # the active boot's wins, if both
            if r is not None
        }
        keep = self.pooled()
        self.kept = frozenset(pools.replica(b, p) for b, p in keep)
        pools.close_all_but(keep)

    def replicas_of(self, route: Route) -> tuple[Replica, ...]:
        """The replicas a route's new requests go to (its targets), for a route that is
        not the active one or the preview (the table's copy is in ``targets``)."""
        reps = self.targets.get(route.boot_id)
        if reps is None or tuple(r.port for r in reps) != route.targets:
            reps = tuple(self.pools.replica(route.boot_id, p) for p in route.targets)
        return reps

    # -- counting --------------------------------------------------------------------------

    @property
    def inflight(self) -> dict[str, int]:
        """Per boot, requests (and upgraded connections) in flight: its replicas'
        outstanding requests, which the request path counts (Exchange.start)."""
        out: dict[str, int] = {}
        for rep in self.pools.replicas.values():
            if rep.outstanding:
                out[rep.boot_id] = out.get(rep.boot_id, 0) + rep.outstanding
        return out

    def replica_counts(self) -> list[list[object]]:
        """Per replica this worker has used: [boot, port, answers, upstream errors,
        outstanding requests] (the supervisor sums them over workers: stats.RouterStats)."""
        return [
            [r.boot_id, r.port, r.requests, r.errors, r.outstanding]
            for r in self.pools.replicas.values()
            if r.requests or r.errors or r.outstanding
        ]

    def status_counts(self, boot_id: str) -> dict[int, int]:
        """The boot's answers by status (made on its first answer)."""
        counts = self.statuses.get(boot_id)
        if counts is None:
            counts = self.statuses[boot_id] = {}
        return counts

    def count_status(self, boot_id: str, status: int) -> None:
        counts = self.status_counts(boot_id)
        counts[status] = counts.get(status, 0) + 1

    @property
    def requests(self) -> dict[tuple[str, int], int]:
        """Answers by (boot, status), for the supervisor's sums."""
        return {(b, c): n for b, counts in self.statuses.items() for c, n in counts.items()}

    def histogram(self, boot_id: str) -> list[int]:
        """The boot's latency counts (made on its first answer); see LATENCY_BOUNDS."""
        counts = self.latency.get(boot_id)
        if counts is None:
            counts = self.latency[boot_id] = [0] * (len(LATENCY_BOUNDS) + 1)
        return counts

    def count_latency(self, boot_id: str, seconds: float) -> None:
        """An answer of ours (not on the fast path): count it in the boot's histogram."""
        self.histogram(boot_id)[bisect_right(LATENCY_BOUNDS, seconds)] += 1

    def upstream_error(self, rep: Replica, kind: str) -> None:
        """A failed connection to a replica: counted for its boot by kind, and for it."""
        self.upstream_errors[(rep.boot_id, kind)] += 1
        rep.errors += 1

    def connection_opened(self, conn: ClientConnection) -> bool:
        if not self.connections:
            # The worker's clock rests while it has no client (worker._sweep): set it
            # now, and wake the ticks.
            self.clock = time.monotonic()
            if self.wake is not None:
                self.wake.set()
        if len(self.connections) >= self.max_connections:
            return False
        self.connections.add(conn)
        return True

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def tick(self) -> None:
        self.clock = time.monotonic()

    def sweep(self) -> None:
        now = self.clock = time.monotonic()
        if self.waiting:
            pause = self.pause
            self.waiting.expire(
                now,
                max(1, ceil(pause.max_s)) if pause else 1,
                healing=pause is not None and pause.healing,
                unpaused=pause is None,  # held after a crash that no one acts on
            )
        for conn in list(self.connections):
            conn.sweep(now)


class RegistryWatcher:
    """Follows the route state of a SQLite registry and pushes it into the route table.

    On each write to the SQLite files (inotify; every 10 ms without it) it asks
    ``PRAGMA data_version`` on its own SQLite connection, never
    waiting for a lock; after a change (and once a second anyway) it reads the whole
    route state (RouteState: route, preview, pause, maintenance, canary weight) with
    one small query on that connection. Both take microseconds, so they run on the
    event loop: no thread, and so no GIL hand-offs in the middle of forwarding.
    """

    def __init__(self, url: str, service: str, table: RouteTable) -> None:
        path = sqlite_path(url)
        if path is None:
            raise ValueError(f"not a SQLite file registry: {url}")
        self.url = url
        self.path = path
        self.service = service
        self.table = table
        self.last_error: str | None = None
        self._conn: sqlite3.Connection | None = None
        self.checks = 0  # data_version asked (each wake-up, each poll)
        self.reads = 0  # route state read (after a change, and once a second)

    def refresh(self) -> Route | None:
        """Read the route now (blocking) and apply it; for start-up."""
        state = self._read()
        self.table.apply(state)
        return state.active

    def _open(self) -> sqlite3.Connection:
        """The watcher's own connection."""
        if self._conn is None:
            # timeout=0: a locked registry answers "busy" at once and we try next poll.
            self._conn = sqlite3.connect(
                str(self.path), timeout=0, isolation_level=None, check_same_thread=False
            )
        return self._conn

    def _data_version(self) -> int:
        return self._open().execute("PRAGMA data_version").fetchone()[0]

    def _read(self) -> RouteState:
        return route_state(self._open().execute(ROUTE_SQL, (self.service,)).fetchone())

    def _waker(self, loop: asyncio.AbstractEventLoop) -> FileWaker | None:
        """Wake-ups on writes to the registry file or its WAL; None: poll instead."""
        path = self.path
        try:
            return FileWaker(loop, path.parent, {path.name, path.name + "-wal"})
        except OSError as e:
            log.info("no inotify on %s (%s): polling the registry", path.parent, e)
            return None

    async def run(self) -> None:
        last_version: int | None = None
        last_read = 0.0
        waker = self._waker(asyncio.get_running_loop())
        follow_until = 0.0
        try:
            while True:
                if waker is None or time.monotonic() < follow_until:
                    await asyncio.sleep(WATCH_POLL_S)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waker.changed.wait(), SLOW_POLL_S)
                if waker is not None and waker.changed.is_set():
                    waker.changed.clear()  # before the read: a later write wakes us again
                    follow_until = time.monotonic() + WAKE_FOLLOW_S
                try:
                    self.checks += 1
                    version = self._data_version()
                    now = time.monotonic()
                    if version != last_version or now - last_read > SLOW_POLL_S:
                        self.reads += 1
                        self.table.apply(self._read())
                        last_version, last_read = version, now
                    self.last_error = None
                except Exception as e:  # noqa: BLE001 - keep the last route whatever happens
                    follow_until = time.monotonic() + WAKE_FOLLOW_S  # e.g. busy: try again soon
                    if self.last_error != str(e):
                        log.warning("registry unreadable, keeping the last route: %s", e)
                    self.last_error = str(e)
        finally:
            if waker is not None:
                waker.close()
            if self._conn is not None:
                self._conn.close()


def watcher_for(url: str, service: str, table: RouteTable) -> RegistryWatcher | PgRouteWatcher:
    """``data_version`` polling on a SQLite file; LISTEN/NOTIFY on PostgreSQL (psycopg,
    the optional extra, is imported only then). ValueError for any other registry."""
    if is_postgres(url):
        from bgdeploy.router.pg_watch import PgRouteWatcher

        return PgRouteWatcher(url, service, table)
    return RegistryWatcher(url, service, table)
