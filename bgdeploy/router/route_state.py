"""The route state: what the registry's deployment row tells the router.

Where requests go (the active boot, the candidate held at ready) and the operator
controls with them (pause, maintenance, canary weight), read in one query that the
SQLite watcher (routes.RegistryWatcher) and the PostgreSQL one (pg_watch) share,
stdlib only: a worker never loads SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass

from bgdeploy.router.steering import Maintenance, Pause


@dataclass(frozen=True)
class Route:
    boot_id: str
    port: int
    generation: int
    # The ports of the boot's replicas in rotation (``boots.ports``); empty for a boot
    # of one process, which is reached on ``port``.
    ports: tuple[int, ...] = ()

    @property
    def targets(self) -> tuple[int, ...]:
        """Where this route's requests may go: its replicas in rotation, else its port."""
        return self.ports or (self.port,)


def parse_ports(text: str | None) -> tuple[int, ...]:
    """``boots.ports`` ("41001,41002") as a tuple; () when NULL or empty."""
    if not text:
        return ()
    return tuple(int(p) for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class RouteState:
    """What the registry row tells the router: where requests go, and the operator controls."""

    active: Route | None
    preview: Route | None = None  # the candidate held at ready
    pause: Pause | None = None
    maintenance: Maintenance | None = None
    # Percent (0-100) of new requests that go to the preview route, the canary candidate.
    canary_weight: int = 0


# The route state in one indexed read, on the watcher's own connection. The table names
# are spelled out so that a worker never loads SQLAlchemy.
ROUTE_SQL = (
    "SELECT d.active_boot_id, b.port, d.generation, c.boot_id, c.port, "
    "d.paused_ts IS NOT NULL, d.pause_max_s, d.maintenance_ts IS NOT NULL, "
    "d.maintenance_message, d.maintenance_retry_after, "
    "d.healing_ts IS NOT NULL, d.healing_hold_s, d.canary_weight, b.ports, c.ports "
    "FROM deployments AS d "
    "LEFT JOIN boots AS b ON b.boot_id = d.active_boot_id "
    "LEFT JOIN boots AS c "
    "ON c.boot_id = d.candidate_boot_id AND d.held_ts IS NOT NULL "
    "WHERE d.service = ?"
)


def route_state(row: tuple | None) -> RouteState:  # type: ignore[type-arg]
    if row is None:
        return RouteState(None)
    (
        active_id,
        port,
        generation,
        held_id,
        held_port,
        paused,
        pause_max,
        maint,
        msg,
        retry,
        healing,
        hold_s,
    ) = row[:12]
    # The share of new requests the held candidate gets (a canary step); none without one.
    weight = row[12] if len(row) > 12 else None
    ports, held_ports = (parse_ports(row[13]), parse_ports(row[14])) if len(row) > 14 else ((), ())
    if paused:
        pause: Pause | None = Pause(float(pause_max or 30.0))
    elif healing:
        # The active boot died: hold new requests for its replacement, as a pause does.
        pause = Pause(float(hold_s or 0.0), healing=True)
    else:
        pause = None
    preview = Route(held_id, held_port, generation, held_ports) if held_id and held_port else None
    return RouteState(
        active=Route(active_id, port, generation, ports) if active_id and port else None,
        preview=preview,
        pause=pause,
        maintenance=Maintenance(msg or "Down for maintenance.", int(retry or 60))
        if maint
        else None,
        canary_weight=min(100, max(0, int(weight or 0))) if preview is not None else 0,
    )
