"""Workspaces: bound to the active boot only after its attach call succeeded."""

from __future__ import annotations

from bgdeploy import health
from bgdeploy.boots import Supervisor
from bgdeploy.control.app import App
from bgdeploy.errors import OperationFailed
from bgdeploy.registry.models import Workspace, utcnow


def attach(app: App, workspace: str) -> str:
    reg = app.registry
    row = reg.deployment(app.service)
    boot = reg.boot(row.active_boot_id)
    if boot is None or not Supervisor(app.config, reg).is_running(boot):
        raise OperationFailed(
            "There is no running active boot to attach the workspace to.",
            hint="Run `bgdeploy up` first.",
        )
    health.attach(app.config, boot, workspace)  # raises unless the daemon said yes
    with reg.writing() as s:
        current = reg.locked_deployment(s, app.service)
        if current.active_boot_id != boot.boot_id:
            raise OperationFailed(
                "The active boot changed while attaching; nothing recorded.",
                hint="Run the command again.",
            )
        ws = s.get(Workspace, (app.service, workspace))
        if ws is None:
            s.add(
                Workspace(
                    service=app.service,
                    workspace=workspace,
                    boot_id=boot.boot_id,
                    attached_ts=utcnow(),
                )
            )
        else:
            ws.boot_id, ws.attached_ts = boot.boot_id, utcnow()
    return boot.boot_id


def detach(app: App, workspace: str) -> None:
    with app.registry.writing() as s:
        ws = s.get(Workspace, (app.service, workspace))
        if ws is None:
            raise OperationFailed(
                f"Workspace {workspace!r} is not attached.",
                hint="`bgdeploy status` lists the active boot.",
            )
        s.delete(ws)
