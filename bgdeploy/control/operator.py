"""What an operator's lifecycle command records as intent, beside what it does.

`deploy --version V` pins V; `deploy` alone follows the installed version again;
`rollback` records the version rolled back to and quarantines the one rolled back
from, with the operator's reason; `unpin` ends a pin or an operator rollback. Each is
written while the command still holds the lifecycle lock, so no automatic actor acts
between the deed and its intent.
"""

from __future__ import annotations

from dataclasses import dataclass

from bgdeploy.control.app import App
from bgdeploy.control.deploy import Deployer, DeployResult
from bgdeploy.control.drain import Progress, no_progress
from bgdeploy.control.router_api import running_router
from bgdeploy.errors import BgdeployError, OperationFailed
from bgdeploy.installed import installed_version
from bgdeploy.registry.intent import INSTALLED
from bgdeploy.states import DeploymentState as St


def installed_or_none(app: App) -> str | None:
    try:
        return installed_version(app.config)
    except BgdeployError:
        return None


def deploy(
    d: Deployer,
    version: str | None,
    *,
    force: bool = False,
    hold: bool | None = None,
    progress: Progress = no_progress,
    canary: tuple[int, ...] | None = None,
    canary_step: float | None = None,
) -> DeployResult:
    """`bgdeploy deploy [--version V]`: the deploy, then the intent it expresses."""
    app = d.app
    installed = installed_or_none(app)
    command = "bgdeploy deploy" + (f" --version {version}" if version else "")
    result = d.deploy(
        version,
        force=force,
        hold=hold,
        progress=progress,
        reason=f"{command}: {'pins ' + version if version else 'the installed version'}",
        canary=canary,
        canary_step=canary_step,
    )
    record_deploy(app, version, installed)
    return result


def record_deploy(app: App, version: str | None, installed: str | None) -> None:
    """The intent a successful `deploy [--version V]` expresses: run, and V (pinned) or
    the installed version."""
    intents = app.registry.intents
    command = "bgdeploy deploy" + (f" --version {version}" if version else "")
    if version is not None:
        intents.pin(app.service, version, installed, command)
    else:
        intents.follow_installed(
            app.service,
            "unpin",
            f"{command} (without --version): follow the installed version",
            run=True,
        )


@dataclass
class RollbackResult:
    message: str
    instant: bool  # the warm old boot took the route (else a deploy of the previous version)


def rollback(d: Deployer, reason: str, progress: Progress = no_progress) -> RollbackResult:
    """`bgdeploy rollback`: back to the old boot while switched, else a blue/green deploy
    of the previous version; either way the version rolled back from is quarantined and
    the one rolled back to stays until a new installed version or `unpin`."""
    app, reg = d.app, d.reg
    installed = installed_or_none(app)
    row = reg.deployment(app.service)
    current = reg.boot(row.active_boot_id)
    from_version = current.version if current is not None else None
    if row.state == St.SWITCHED:
        after = d.rollback(row, f"manual: {reason}")
        to = reg.boot(after.active_boot_id)
        to_version = to.version if to is not None else "?"
        message = f"Rolled back generation {row.generation}: {after.active_boot_id} is active."
        instant = True
    else:
        to_version = previous_version(app)
        result = d.deploy(to_version, progress=progress, reason=f"rollback by operator: {reason}")
        message, instant = result.message, False
    record_rollback(app, to_version, from_version, reason, installed)
    return RollbackResult(message, instant)


def record_rollback(
    app: App, to_version: str, from_version: str | None, reason: str, installed: str | None
) -> None:
    """The intent a successful `rollback` expresses: run ``to_version``, quarantine
    ``from_version`` with the operator's reason."""
    reg = app.registry
    reg.intents.rolled_back(
        app.service,
        to_version=to_version,
        from_version=from_version,
        reason=reason,
        installed=installed,
        generation=reg.deployment(app.service).generation,
    )


def unpin(app: App) -> str:
    """`bgdeploy unpin`: follow the installed version again."""
    reg = app.registry
    intent = reg.intents.read(app.service)
    installed = installed_or_none(app)
    if intent.mode == INSTALLED:
        return f"Nothing to unpin: bgdeploy already follows the installed version ({installed})."
    reg.intents.follow_installed(
        app.service, "unpin", f"bgdeploy unpin ended the intent that {intent.describe()}"
    )
    msg = f"Unpinned: {intent.describe()} no more; bgdeploy follows the installed version"
    msg += f" ({installed})." if installed else "."
    if installed is not None and installed in reg.quarantined_versions(app.service):
        msg += (
            f" {installed} is quarantined, so it is not started: "
            f"`bgdeploy deploy --version {installed} --force` tries it again."
        )
    elif installed is not None:
        msg += " The router's control loop deploys it on its next pass."
    return msg


def no_router_notice(app: App) -> str | None:
    """One line when nothing serves the fixed address: the registry changed, no traffic."""
    if running_router(app) is not None:
        return None
    r = app.config.router
    return (
        f"Nothing serves {r.host}:{r.port}: no router runs, so no request reaches this "
        "deploy. Start it with `bgdeploy up`."
    )


def previous_version(app: App) -> str:
    """The version that was active before the current one and is not quarantined (for
    `rollback` when idle)."""
    reg = app.registry
    row = reg.deployment(app.service)
    current = reg.boot(row.active_boot_id)
    quarantined = set(reg.quarantined_versions(app.service))
    for ev in reg.events(app.service):
        if ev.event != "switch" or not ev.old_boot_id:
            continue
        old = reg.boot(ev.old_boot_id)
        if (
            old is not None
            and (current is None or old.version != current.version)
            and old.version not in quarantined
        ):
            return old.version
    raise OperationFailed(
        "There is no previous version to roll back to.",
        hint="Deploy a version explicitly: bgdeploy deploy --version V.",
    )
