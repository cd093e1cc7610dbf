"""The world as the decision function sees it: gathered once per pass from the
registry (intent, quarantine, the deployment row and its boots), the processes and
the installed version."""

from __future__ import annotations

from bgdeploy.boots import Supervisor
from bgdeploy.control import crashes
from bgdeploy.control.app import App
from bgdeploy.control.decide import BootSeen, World
from bgdeploy.errors import BgdeployError
from bgdeploy.installed import installed_version
from bgdeploy.registry.models import Boot
from bgdeploy.states import BootState


def gather(app: App, sup: Supervisor, *, deploy_if_none: bool = False) -> World:
    reg = app.registry
    row = reg.deployment(app.service)
    try:
        installed, installed_error = installed_version(app.config), None
    except BgdeployError as e:
        installed, installed_error = None, e.message
    failed_version = failed_error = None
    if row.last_error is not None and row.generation > 0:
        for boot in reg.boots(app.service):
            if boot.generation == row.generation and boot.state == BootState.FAILED:
                failed_version, failed_error = boot.version, row.last_error
    loop = crashes.read_crash_loop(app)
    return World(
        intent=reg.intents.read(app.service),
        state=row.state,
        generation=row.generation,
        held=row.held_ts is not None,
        active=seen(sup, reg.boot(row.active_boot_id)),
        old=seen(sup, reg.boot(row.old_boot_id)),
        candidate=seen(sup, reg.boot(row.candidate_boot_id)),
        installed=installed,
        installed_error=installed_error,
        quarantined={q.version: q.reason for q in reg.intents.quarantine(app.service)},
        crash_wait=crashes.next_try_in(app),
        crash_line=loop.line() if loop else None,
        failed_version=failed_version,
        failed_error=failed_error,
        deploy_if_none=deploy_if_none,
    )


def seen(sup: Supervisor, boot: Boot | None) -> BootSeen | None:
    if boot is None:
        return None
    return BootSeen(boot.boot_id, boot.version, sup.is_running(boot))
