"""Boot rows as the daemon spawner writes them: ports, pids, exits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bgdeploy.errors import BootError
from bgdeploy.machine import DeploymentFields
from bgdeploy.registry.intent import quarantine_in
from bgdeploy.registry.models import Boot, Replica, Workspace, utcnow
from bgdeploy.states import LIVE_BOOT_STATES, BootState, DeploymentEvent

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
            taken |= set(
                s.scalars(
                    select(Replica.port)
                    .join(Boot, Boot.boot_id == Replica.boot_id)
                    .where(
                        Replica.port.is_not(None),
                        Replica.state != "stopped",
                        Replica.boot_id != boot_id,
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


def apply_boot_effects(
    s: Session, ev: DeploymentEvent, before: DeploymentFields, after: DeploymentFields
) -> None:
    """Boot states and workspace bindings that follow an event, in the same transaction.

    Demotions run before promotions: the partial unique index allows one active boot.
    A demotion applies only to a live boot: one recorded failed or stopped has no
    process, and never comes back as standby or draining.
    """

    def set_state(boot_id: str | None, state: BootState, only_live: bool = False) -> None:
        if boot_id is None:
            return
        q = update(Boot).where(Boot.boot_id == boot_id)
        if only_live:
            q = q.where(Boot.state.in_([st.value for st in LIVE_BOOT_STATES]))
        values: dict[str, Any] = {"state": state.value}
        if state is BootState.DRAINING:
            values["draining_ts"] = utcnow()
        s.execute(q.values(**values).execution_options(synchronize_session=False))

    if ev is DeploymentEvent.CANDIDATE_READY:
        set_state(before.candidate_boot_id, BootState.HEALTHY, only_live=True)
    elif ev is DeploymentEvent.ABORT:
        set_state(before.candidate_boot_id, BootState.FAILED, only_live=True)
    elif ev is DeploymentEvent.SWITCH:
        set_state(after.old_boot_id, BootState.STANDBY, only_live=True)
        set_state(after.active_boot_id, BootState.ACTIVE)
        _rebind_workspaces(s, after.service, after.active_boot_id)
    elif ev is DeploymentEvent.FINALIZE:
        set_state(before.old_boot_id, BootState.DRAINING, only_live=True)
    elif ev is DeploymentEvent.ROLLBACK:
        set_state(after.old_boot_id, BootState.DRAINING, only_live=True)
        set_state(after.active_boot_id, BootState.ACTIVE)
        _rebind_workspaces(s, after.service, after.active_boot_id)
    elif ev is DeploymentEvent.ROLLBACK_DONE and before.old_boot_id:
        failed = s.get(Boot, before.old_boot_id)
        if failed is not None:
            quarantine_in(
                s, after.service, failed.version, after.generation, before.rollback_reason
            )


def _rebind_workspaces(s: Session, service: str, boot_id: str | None) -> None:
    if boot_id is not None:
        s.execute(
            update(Workspace)
            .where(Workspace.service == service)
            .values(boot_id=boot_id)
            .execution_options(synchronize_session=False)
        )
