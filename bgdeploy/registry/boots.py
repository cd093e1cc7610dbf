"""Boot rows as the daemon spawner writes them: ports, pids, exits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from bgdeploy.errors import BootError
from bgdeploy.registry.models import Boot, utcnow
from bgdeploy.states import LIVE_BOOT_STATES, BootState

if TYPE_CHECKING:
    from bgdeploy.registry.store import Registry

# pg_advisory_xact_lock key that serialises port allocation across processes and hosts.
_PORTS_LOCK_KEY = 0x62676470  # "bgdp"


class BootRecords:
    """Boot rows as the supervisor writes them (ports, pids, exits)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def assign_port(
        self, boot_id: str, port_range: tuple[int, int], is_free: Callable[[int], bool]
    ) -> int:
        """Pick a port no live boot holds and ``is_free`` accepts, and record it, atomically.

        The write transaction serialises allocators across processes, so two boots
        started at the same moment never get the same port.
        """
        with self.registry.writing() as s:
            if self.registry.postgres:
                s.execute(select(func.pg_advisory_xact_lock(_PORTS_LOCK_KEY)))
            taken = set(
                s.scalars(
                    select(Boot.port).where(
                        Boot.port.is_not(None),
                        Boot.boot_id != boot_id,
                        Boot.state.in_([st.value for st in LIVE_BOOT_STATES]),
                    )
                )
            )
            low, high = port_range
            for port in range(low, high + 1):
                if port not in taken and is_free(port):
                    s.execute(update(Boot).where(Boot.boot_id == boot_id).values(port=port))
                    return port
        raise BootError(
            f"No free internal port in {low}-{high} for boot {boot_id}.",
            hint="Widen daemon.port_range in bgdeploy.toml, or stop what holds those ports.",
        )

    def set_process(self, boot_id: str, pid: int, create_time: float, log_path: str) -> None:
        with self.registry.writing() as s:
            s.execute(
                update(Boot)
                .where(Boot.boot_id == boot_id)
                .values(pid=pid, pid_create_time=create_time, log_path=log_path)
            )

    def mark_exited(self, boot_id: str, state: BootState, exit_code: int | None) -> None:
        """A boot's process is gone: record how (stopped by us, or failed) and when."""
        with self.registry.writing() as s:
            s.execute(
                update(Boot)
                .where(Boot.boot_id == boot_id)
                .values(state=state.value, exit_code=exit_code, stopped_ts=utcnow())
            )
