"""``bgdeploy scale N``: the number of replicas, changed in place, without a deploy.

The count is recorded in the intent (every later boot is a set of N). The active
boot grows or shrinks now: a new replica takes traffic only once it is healthy and
has attached the boot's workspaces; a replica that goes leaves the rotation first,
then drains (its open connections end, up to ``daemon.drain_timeout``), then stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from bgdeploy import health
from bgdeploy.boots import BootProcesses, log_tail
from bgdeploy.control import replica_set
from bgdeploy.control.app import App
from bgdeploy.errors import BgdeployError, BootError, OperationFailed
from bgdeploy.registry.models import Boot, Replica
from bgdeploy.registry.replicas import OUT, STOPPED
from bgdeploy.states import DeploymentState as St

DRAIN_POLL_S = 0.05


@dataclass(frozen=True)
class ScaleResult:
    count: int
    before: int | None  # the active boot's replicas before; None: no active boot changed
    boot_id: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return {
            "replicas": self.count,
            "before": self.before,
            "boot_id": self.boot_id,
            "message": self.message,
        }


def scale(app: App, count: int) -> ScaleResult:
    """Record ``count`` and apply it to the active boot (the caller holds the lock)."""
    if count < 1:
        raise OperationFailed(
            f"A service needs at least one replica, not {count}.",
            hint="`bgdeploy down` stops the service.",
        )
    reg = app.registry
    sup = BootProcesses(app.config, reg)
    row = reg.deployment(app.service)
    active = reg.boot(row.active_boot_id)
    reg.intents.set_replicas(app.service, count, f"scale to {count} by {reg.actor_command}")
    if active is None or not sup.is_running(active):
        return ScaleResult(count, None, None, f"Recorded: the next boot starts {count} replicas.")
    if row.state != St.IDLE:
        return ScaleResult(
            count,
            None,
            None,
            f"Recorded: a deploy is under way ({row.state}); its next boot starts "
            f"{count} replicas, and `bgdeploy scale {count}` again applies it to this one.",
        )
    reg.replicas.adopt_single(active.boot_id)
    current = replica_set.live(reg.replicas.rows(active.boot_id))
    before = len(current)
    if count > before:
        _grow(app, sup, active, current, count)
    elif count < before:
        _shrink(app, sup, current[count:])
    reg.replicas.set_count(active.boot_id, count)
    reg.note(app.service, "scaled", f"boot {active.boot_id}: {before} -> {count} replicas")
    return ScaleResult(
        count,
        before,
        active.boot_id,
        f"Boot {active.boot_id} ({active.version}) runs {count} replica"
        f"{'s' if count != 1 else ''} (was {before}).",
    )


def _grow(app: App, sup: BootProcesses, boot: Boot, current: list[Replica], count: int) -> None:
    used = {r.replica for r in current}
    numbers = [n for n in range(count + len(used)) if n not in used][: count - len(current)]
    started: list[Replica] = []
    try:
        for n in numbers:
            started.append(sup.spawn_replica(boot, n))
        for rep in started:
            health.wait_healthy(
                app.config,
                boot,
                is_running=lambda rep=rep: sup.replica_running(rep),
                describe_exit=lambda rep=rep: sup.describe_replica_exit(rep),
                log_tail=lambda rep=rep: log_tail(rep.log_path),
                port=rep.port,
                what=f"Replica {rep.replica} of boot {boot.boot_id}",
            )
            replica_set.attach_bound(app, boot, rep)
        for rep in started:
            app.registry.replicas.into_rotation(boot.boot_id, rep.replica)
    except BgdeployError as e:
        if started:
            sup.stop_replicas(started, timeout=app.config.daemon.stop_timeout)
        raise BootError(
            f"Scaling boot {boot.boot_id} to {count} failed: {e.message} "
            f"It keeps its {len(current)} replicas.",
            hint=e.hint,
        ) from None


def _shrink(app: App, sup: BootProcesses, going: list[Replica]) -> None:
    reps = app.registry.replicas
    for rep in going:
        reps.out_of_rotation(rep.boot_id, rep.replica, OUT)
    deadline = time.monotonic() + app.config.daemon.drain_timeout
    for rep in going:
        while _open_connections(rep) and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
    sup.stop_replicas(going, timeout=app.config.daemon.stop_timeout, state=STOPPED)


def _open_connections(rep: Replica) -> int:
    """Connections the replica still serves on its port (the router's, mostly): once
    out of rotation, the router closes its idle ones and its requests end."""
    if rep.pid is None:
        return 0
    try:
        conns = psutil.Process(rep.pid).net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return 0
    return sum(
        1
        for c in conns
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == rep.port
    )
