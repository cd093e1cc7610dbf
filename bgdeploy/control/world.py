"""The world as the decision function sees it: read once per pass, in one read
transaction, from the registry (the deployment row, its live and named boots, the
intent, the quarantine, the crash series), then the processes and the installed
version."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select

from bgdeploy.boots import BootProcesses
from bgdeploy.control import crashes
from bgdeploy.control.app import App
from bgdeploy.control.decide import BootSeen, CanarySeen, World
from bgdeploy.errors import BgdeployError
from bgdeploy.installed import installed_version
from bgdeploy.registry.intent import IntentView
from bgdeploy.registry.models import Boot, Deployment, Intent, Quarantine, Replica, utcnow
from bgdeploy.registry.store import Registry
from bgdeploy.states import LIVE_BOOT_STATES, BootState


@dataclass(frozen=True)
class Seen:
    """What one pass read: the decision's world, and the rows behind it."""

    world: World
    row: Deployment
    boots: dict[str, Boot]  # the live boots and the ones the row names
    # Their replica rows (empty for a boot of one process), read in the same transaction.
    replicas: dict[str, list[Replica]]

    def live(self) -> list[Boot]:
        return [b for b in self.boots.values() if b.state in LIVE_BOOT_STATES]


def gather(app: App, sup: BootProcesses, *, deploy_if_none: bool = False) -> World:
    return read(app, sup, deploy_if_none=deploy_if_none).world


def read(app: App, sup: BootProcesses, *, deploy_if_none: bool = False) -> Seen:
    reg, svc = app.registry, app.service
    rows = _rows(reg, svc)
    if rows is None:
        reg.deployment(svc)  # creates the row; from here on it exists
        rows = _rows(reg, svc)
        assert rows is not None
    row, boots, replicas = rows.row, rows.boots, rows.replicas
    intent, quarantined, failed = rows.intent, rows.quarantined, rows.failed
    try:
        installed, installed_error = installed_version(app.config), None
    except BgdeployError as e:
        installed, installed_error = None, e.message
    loop = crashes.crash_loop(row)
    wait = 0.0
    if row.crash_next_ts is not None:
        wait = max(0.0, (row.crash_next_ts - utcnow()).total_seconds())

    def seen(boot_id: str | None) -> BootSeen | None:
        boot = boots.get(boot_id) if boot_id else None
        if boot is None:
            return None
        alive = sup.is_running(boot, replicas.get(boot.boot_id))
        return BootSeen(boot.boot_id, boot.version, alive)

    canary = None
    if row.canary_steps and row.canary_step is not None and row.canary_step_ts is not None:
        elapsed = (utcnow() - row.canary_step_ts).total_seconds()
        canary = CanarySeen(
            tuple(int(w) for w in row.canary_steps.split(",")),
            row.canary_step,
            (row.canary_step_s or 0.0) - elapsed,
        )
    world = World(
        intent=intent,
        state=row.state,
        generation=row.generation,
        held=row.held_ts is not None,
        active=seen(row.active_boot_id),
        old=seen(row.old_boot_id),
        candidate=seen(row.candidate_boot_id),
        installed=installed,
        installed_error=installed_error,
        quarantined=quarantined,
        crash_wait=wait,
        crash_line=loop.line() if loop else None,
        failed_version=failed,
        failed_error=row.last_error if failed else None,
        deploy_if_none=deploy_if_none,
        canary=canary,
    )
    return Seen(world, row, boots, replicas)


@dataclass(frozen=True)
class _Rows:
    row: Deployment
    boots: dict[str, Boot]
    replicas: dict[str, list[Replica]]
    intent: IntentView
    quarantined: dict[str, str | None]
    failed: str | None


def _rows(reg: Registry, svc: str) -> _Rows | None:
    """The pass's rows in one read transaction; None before the deployment row exists."""
    live = [st.value for st in LIVE_BOOT_STATES]
    with reg.reading() as s:
        row = s.get(Deployment, svc)
        if row is None:
            return None
        named = [b for b in (row.active_boot_id, row.candidate_boot_id, row.old_boot_id) if b]
        boots = {
            b.boot_id: b
            for b in s.scalars(
                select(Boot).where(
                    Boot.service == svc, or_(Boot.state.in_(live), Boot.boot_id.in_(named))
                )
            )
        }
        replicas: dict[str, list[Replica]] = {b: [] for b in boots}
        for rep in s.scalars(
            select(Replica).where(Replica.boot_id.in_(list(boots))).order_by(Replica.replica)
        ):
            replicas[rep.boot_id].append(rep)
        intent = IntentView.of(s.get(Intent, svc))
        quarantined = {
            q.version: q.reason
            for q in s.scalars(select(Quarantine).where(Quarantine.service == svc))
        }
        failed = None
        if row.last_error is not None and row.generation > 0:
            failed = s.scalars(
                select(Boot.version).where(
                    Boot.service == svc,
                    Boot.generation == row.generation,
                    Boot.state == BootState.FAILED.value,
                )
            ).first()
    return _Rows(row, boots, replicas, intent, quarantined, failed)
