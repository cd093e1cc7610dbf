"""Workspaces: bound to the active boot only after its attach call succeeded.

`attach` takes no lifecycle lock (so a deploy never locks it out); the registry
fences it instead: the binding is written only if the boot that attached the
workspace is still the active boot, in the same transaction that a switch or
rollback would need to see it. A deploy that meets a workspace attached to the
old boot meanwhile attaches it to its candidate before the switch.
"""

from __future__ import annotations

from bgdeploy.boots import BootProcesses
from bgdeploy.control import replica_set
from bgdeploy.control.app import App
from bgdeploy.errors import OperationFailed

# A switch between reading the active boot and binding sends us round again.
ATTACH_TRIES = 3


def attach(app: App, workspace: str) -> str:
    reg = app.registry
    sup = BootProcesses(app.config, reg)
    for _ in range(ATTACH_TRIES):
        boot = reg.boot(reg.deployment(app.service).active_boot_id)
        if boot is None or not sup.is_running(boot):
            raise OperationFailed(
                "There is no running active boot to attach the workspace to.",
                hint="Run `bgdeploy up` first.",
            )
        replica_set.attach(app, boot, workspace)  # raises unless every replica said yes
        if reg.workspaces.bind(app.service, workspace, boot.boot_id):
            return boot.boot_id
    raise OperationFailed(
        f"The active boot changed {ATTACH_TRIES} times while attaching {workspace!r}; "
        "it is not bound.",
        hint="Run the command again.",
    )


def detach(app: App, workspace: str) -> None:
    if not app.registry.workspaces.unbind(app.service, workspace):
        raise OperationFailed(
            f"Workspace {workspace!r} is not attached.",
            hint="`bgdeploy status` lists the active boot.",
        )
