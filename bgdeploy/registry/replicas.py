"""Replica rows: the processes of a boot of several (``daemon.replicas``).

A boot of one process has no rows here: its ``port`` and ``pid`` say it all, as
before replicas. A boot of several has one row per replica, and its own ``port``,
``pid`` and ``log_path`` are replica 0's, written in the same transaction. The
boot's ``ports`` column lists the replicas the router balances over; every change
of it tells PostgreSQL routers to read the route again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from bgdeploy.errors import BootError
from bgdeploy.registry.models import Boot, Replica, utcnow
from bgdeploy.states import LIVE_BOOT_STATES

if TYPE_CHECKING:
    from bgdeploy.registry.store import Registry

_PORTS_LOCK_KEY = 0x62676470  # the same key as boot ports: one allocator at a time

STARTING = "starting"  # started, not yet healthy: out of rotation
SERVING = "serving"  # healthy, in rotation
OUT = "out"  # exited or failed its checks: out of rotation until it is healthy again
STOPPED = "stopped"  # scaled away, or its boot stopped


def single(boot: Boot) -> Replica:
    """The one replica of a boot of one process, as a row it does not have."""
    return Replica(
        boot_id=boot.boot_id,
        replica=0,
        port=boot.port,
        pid=boot.pid,
        pid_create_time=boot.pid_create_time,
        log_path=boot.log_path,
        state=SERVING,
        started_ts=boot.started_ts,
        exits=0,
        fails=0,
        restarts=0,
    )


def join_ports(ports: list[int]) -> str | None:
    return ",".join(str(p) for p in ports) if ports else None


class ReplicaRecords:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def rows(self, boot_id: str) -> list[Replica]:
        with self.registry.reading() as s:
            return list(
                s.scalars(
                    select(Replica).where(Replica.boot_id == boot_id).order_by(Replica.replica)
                )
            )

    def of(self, boot: Boot) -> list[Replica]:
        """Every replica of ``boot``: its rows, or the one it is."""
        return self.rows(boot.boot_id) or [single(boot)]

    def get(self, boot_id: str, replica: int) -> Replica | None:
        with self.registry.reading() as s:
            return s.get(Replica, (boot_id, replica))

    def add(self, boot_id: str, replica: int) -> None:
        """A row for a replica about to start (replacing a stopped one of that number)."""
        with self.registry.writing() as s:
            s.execute(delete(Replica).where(Replica.boot_id == boot_id, Replica.replica == replica))
            s.add(Replica(boot_id=boot_id, replica=replica, state=STARTING, started_ts=utcnow()))

    def assign_port(
        self,
        boot_id: str,
        replica: int,
        port_range: tuple[int, int],
        is_free: Callable[[int], bool],
        prefer: int | None = None,
    ) -> int:
        """A port no live boot or replica holds, recorded on the replica's row (and on
        the boot for replica 0) in one transaction; ``prefer`` first, when free."""
        with self.registry.writing() as s:
            if self.registry.postgres:
                s.execute(select(func.pg_advisory_xact_lock(_PORTS_LOCK_KEY)))
            live = [st.value for st in LIVE_BOOT_STATES]
            taken = set(
                s.scalars(
                    select(Boot.port).where(
                        Boot.port.is_not(None),
                        Boot.state.in_(live),
                        (Boot.boot_id != boot_id) if replica == 0 else Boot.port.is_not(None),
                    )
                )
            )
            taken |= set(
                s.scalars(
                    select(Replica.port)
                    .join(Boot, Boot.boot_id == Replica.boot_id)
                    .where(
                        Replica.port.is_not(None),
                        Replica.state != STOPPED,
                        Boot.state.in_(live),
                        (Replica.boot_id != boot_id) | (Replica.replica != replica),
                    )
                )
            )
            low, high = port_range
            order = list(range(low, high + 1))
            if prefer is not None and low <= prefer <= high:
                order.insert(0, prefer)
            for port in order:
                if port not in taken and is_free(port):
                    s.execute(
                        update(Replica)
                        .where(Replica.boot_id == boot_id, Replica.replica == replica)
                        .values(port=port)
                    )
                    if replica == 0:
                        s.execute(update(Boot).where(Boot.boot_id == boot_id).values(port=port))
                    return port
        raise BootError(
            f"No free internal port in {low}-{high} for replica {replica} of boot {boot_id}.",
            hint="Widen daemon.port_range in bgdeploy.toml, or stop what holds those ports.",
        )

    def set_process(
        self, boot_id: str, replica: int, pid: int, create_time: float, log_path: str
    ) -> None:
        values = {"pid": pid, "pid_create_time": create_time, "log_path": log_path}
        with self.registry.writing() as s:
            s.execute(
                update(Replica)
                .where(Replica.boot_id == boot_id, Replica.replica == replica)
                .values(**values, started_ts=utcnow(), stopped_ts=None, exit_code=None)
            )
            if replica == 0:
                s.execute(update(Boot).where(Boot.boot_id == boot_id).values(**values))

    def update(self, boot_id: str, replica: int, **values: Any) -> None:
        with self.registry.writing() as s:
            s.execute(
                update(Replica)
                .where(Replica.boot_id == boot_id, Replica.replica == replica)
                .values(**values)
            )

    def exited(
        self,
        boot_id: str,
        replica: int,
        code: int | None,
        *,
        crash_window: float,
        backoff: Callable[[int], float],
    ) -> float:
        """A replica's process is gone: out of rotation; returns the wait before its
        next start (its own crash loop: quick exits in a row back off)."""
        with self.registry.writing() as s:
            row = s.get(Replica, (boot_id, replica))
            if row is None or row.state == STOPPED:
                return 0.0  # stopped is final: its port may be another boot's by now
            now = utcnow()
            quick = (now - row.started_ts).total_seconds() < crash_window
            exits = (row.exits or 0) + 1 if quick else 1
            delay = backoff(exits)
            row.state = OUT
            row.exits = exits
            row.exit_code = code
            row.stopped_ts = now
            row.next_ts = now + timedelta(seconds=delay)
            self._drop_port(s, boot_id, row.port)
            return delay

    def set_rotation(self, boot_id: str, ports: list[int]) -> None:
        """The replicas the router balances over, as one write the router follows."""
        with self.registry.writing() as s:
            boot = s.get(Boot, boot_id)
            if boot is None:
                return
            boot.ports = join_ports(ports)
            self.registry.route_changed(s, boot.service)

    def into_rotation(self, boot_id: str, replica: int) -> None:
        with self.registry.writing() as s:
            row = s.get(Replica, (boot_id, replica))
            boot = s.get(Boot, boot_id)
            if row is None or boot is None or row.port is None or row.state == STOPPED:
                return  # a stopped replica's port may be another boot's by now
            row.state = SERVING
            row.fails = 0
            ports = [p for p in _parse(boot.ports) if p != row.port] + [row.port]
            boot.ports = join_ports(sorted(ports))
            self.registry.route_changed(s, boot.service)

    def out_of_rotation(self, boot_id: str, replica: int, state: str = OUT) -> None:
        with self.registry.writing() as s:
            row = s.get(Replica, (boot_id, replica))
            if row is None or row.state == STOPPED:
                return
            row.state = state
            if state == STOPPED:
                row.stopped_ts = utcnow()
            self._drop_port(s, boot_id, row.port)

    def _drop_port(self, s: Any, boot_id: str, port: int | None) -> None:
        boot = s.get(Boot, boot_id)
        if boot is None or port is None:
            return
        ports = [p for p in _parse(boot.ports) if p != port]
        boot.ports = join_ports(ports)
        self.registry.route_changed(s, boot.service)

    def adopt_single(self, boot_id: str) -> None:
        """A boot of one process becomes a set of one (``scale`` is about to change it):
        its process becomes replica 0, in rotation."""
        with self.registry.writing() as s:
            boot = s.get(Boot, boot_id)
            if boot is None or s.get(Replica, (boot_id, 0)) is not None:
                return
            s.add(
                Replica(
                    boot_id=boot_id,
                    replica=0,
                    port=boot.port,
                    pid=boot.pid,
                    pid_create_time=boot.pid_create_time,
                    log_path=boot.log_path,
                    state=SERVING,
                    started_ts=boot.started_ts,
                )
            )
            boot.ports = join_ports([boot.port] if boot.port else [])
            self.registry.route_changed(s, boot.service)

    def set_count(self, boot_id: str, count: int) -> None:
        with self.registry.writing() as s:
            s.execute(update(Boot).where(Boot.boot_id == boot_id).values(replicas=count))


def _parse(text: str | None) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()] if text else []
