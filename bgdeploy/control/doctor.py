"""`bgdeploy doctor`: pass/warn/fail checks, each with a one-line fix."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import psutil

from bgdeploy import __version__
from bgdeploy.boots import BootProcesses
from bgdeploy.config import Config, find_config_path, load_config
from bgdeploy.control import doctor_warnings as warnings
from bgdeploy.control.app import App
from bgdeploy.control.checks import FAIL, PASS, WARN, Check
from bgdeploy.control.crashes import read_crash_loop
from bgdeploy.control.decide import decide
from bgdeploy.control.lock import LifecycleLock
from bgdeploy.control.router_api import build_of_workers, running_router
from bgdeploy.control.status import config_current
from bgdeploy.control.world import gather
from bgdeploy.errors import BgdeployError
from bgdeploy.health import check as health_check
from bgdeploy.installed import installed_version
from bgdeploy.processes import port_holder, processes_of_state_dir
from bgdeploy.registry import migrate
from bgdeploy.registry.engine import make_engine, safe_url
from bgdeploy.registry.intent import INSTALLED, IntentView
from bgdeploy.registry.models import Boot, utcnow
from bgdeploy.registry.urls import is_postgres, sqlite_path
from bgdeploy.states import LIVE_BOOT_STATES, BootState, DeploymentState
from bgdeploy.timefmt import iso

MIN_FREE_BYTES = 100 * 1024 * 1024


def doctor(config_path: str | Path | None = None) -> list[Check]:
    checks: list[Check] = []
    try:
        config = load_config(find_config_path(config_path))
    except BgdeployError as e:
        return [Check("config", FAIL, e.message, e.hint or "")]
    checks.append(Check("config", PASS, f"{config.path} is valid"))
    checks += _security(config)
    schema = _schema(config)
    checks.append(schema)
    if schema.status == FAIL:
        return checks
    checks += [c for c in (warnings.port_range(config),) if c is not None]
    app = App(config)
    try:
        intent = app.registry.intents.read(app.service)
        if intent.down:
            checks.append(_down(app, intent))
        else:
            checks.append(_router(app))
            checks += _active(app)
            checks += [
                c
                for c in (
                    warnings.failed_deploy(app),
                    warnings.last_rollback(app),
                    warnings.recent_crash(app),
                )
                if c is not None
            ]
        checks.append(_decision(app))
        checks.append(_orphans(app))
        checks += _impossible(app)
        checks.append(_lock(app))
        checks.append(_logs(config))
        checks.append(_disk(config))
    finally:
        app.close()
    return checks


def _security(config: Config) -> list[Check]:
    out = []
    for what, host in (("router", config.router.host),):
        try:
            loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            loopback = False
        if not loopback:
            out.append(
                Check(
                    f"{what} address",
                    WARN,
                    f"router.host = {host!r} is reachable from other machines "
                    "(router and admin listener)",
                    'Set router.host = "127.0.0.1" unless you mean to expose it.',
                )
            )
    return out


def _schema(config: Config) -> Check:
    path = sqlite_path(config.registry_url)
    if path is not None and not path.exists():
        return Check(
            "registry",
            WARN,
            f"no registry yet at {path}",
            "Run `bgdeploy init` (or any command) to create it.",
        )
    engine = make_engine(config.registry_url)
    try:
        current, head = migrate.check_head(engine)
    except BgdeployError as e:
        return Check("registry", FAIL, e.message, e.hint or "")
    except Exception as e:  # noqa: BLE001 - a corrupt file, a permission problem
        if is_postgres(config.registry_url):
            why = str(getattr(e, "orig", e)).strip().splitlines()[:1] or [type(e).__name__]
            return Check(
                "registry",
                FAIL,
                f"cannot reach the registry at {safe_url(config.registry_url)}: {why[0]}",
                "Check registry.url and that the PostgreSQL server is running.",
            )
        return Check(
            "registry",
            FAIL,
            f"the registry cannot be read: {e}",
            "Move the file aside and run `bgdeploy init`.",
        )
    finally:
        engine.dispose()
    if current != head:
        return Check(
            "registry",
            FAIL,
            f"schema at revision {current}, migration head is {head}",
            "Run `bgdeploy init` to migrate it.",
        )
    return Check("registry", PASS, f"at migration head {head}")


def _router(app: App) -> Check:
    cfg = app.config.router
    row = running_router(app)
    if row is not None:
        info = app.router.info()
        if info is None:
            return Check(
                "router",
                FAIL,
                f"router pid {row.pid} does not answer on its admin listener {row.admin_url}",
                "Restart it: bgdeploy down && bgdeploy up.",
            )
        workers = [w for w in info["workers"] if not w["draining"]]
        running = sorted({info["version"], *(w["version"] for w in workers)})
        shape = (
            f"supervisor pid {row.pid} with {len(workers)} worker"
            f"{'s' if len(workers) != 1 else ''} "
            f"({', '.join(str(w['pid']) for w in workers)}) serves {row.url}"
        )
        if running != [__version__]:
            return Check(
                "router",
                WARN,
                f"{shape} on bgdeploy {', '.join(running)}, but {__version__} is installed",
                "Run `bgdeploy up` (or `bgdeploy router reload`): the socket stays open.",
            )
        if not config_current(row, app.config):
            return Check(
                "router",
                WARN,
                f"{shape} with an older configuration than {app.config.path}",
                "Run `bgdeploy up` (or `bgdeploy router reload`) to apply it.",
            )
        build = build_of_workers(info) or "unknown"
        return Check("router", PASS, f"{shape} on bgdeploy {__version__}; router build: {build}")
    holder = port_holder(cfg.host, cfg.port)
    if holder:
        return Check(
            "router",
            FAIL,
            f"the router is not running and {cfg.host}:{cfg.port} is taken by {holder}",
            "Stop that process or change router.port, then `bgdeploy up`.",
        )
    return Check("router", FAIL, "the router is not running", "Run `bgdeploy up`.")


def _down(app: App, intent: IntentView) -> Check:
    """After `bgdeploy down` nothing should serve: the router and boots being gone pass."""
    cfg = app.config.router
    row = running_router(app)
    since = f" since {iso(intent.run_ts)}" if intent.run_ts else ""
    if row is not None:
        return Check(
            "router",
            WARN,
            f"the service is down by operator{since}, but router pid {row.pid} runs",
            "Run `bgdeploy down` again, or `bgdeploy up` to serve.",
        )
    holder = port_holder(cfg.host, cfg.port)
    extra = f"; {cfg.host}:{cfg.port} is taken by {holder}" if holder else ""
    return Check(
        "router",
        WARN if holder else PASS,
        f"the service is down by operator{since} (`{intent.run_by or 'bgdeploy down'}`); "
        f"nothing serves {cfg.host}:{cfg.port}{extra}",
        "Run `bgdeploy up` to serve it again." if not holder else "Stop that process first.",
    )


def _decision(app: App) -> Check:
    """The decision function's sentence: what the control loop and reconcile would do."""
    world = gather(app, BootProcesses(app.config, app.registry))
    decision = decide(world)
    intent = world.intent
    what = decision.sentence
    if intent.mode != INSTALLED and not intent.down:
        what = f"{what} ({intent.describe()}; `bgdeploy unpin` ends it)"
    return Check("decision", PASS, what)


def _active(app: App) -> list[Check]:
    reg, cfg = app.registry, app.config
    row = reg.deployment(app.service)
    active = reg.boot(row.active_boot_id)
    if active is None:
        fix = "Run `bgdeploy up`." if row.generation == 0 else "Run `bgdeploy deploy`."
        return [Check("active boot", WARN, "nothing is deployed yet", fix)]
    sup = BootProcesses(cfg, reg)
    loop = read_crash_loop(app)
    if loop is not None and not sup.is_running(active):
        return [
            Check(
                "active boot",
                FAIL,
                f"{active.boot_id} ({active.version}) is {loop.line()}; its log ends:\n"
                + loop.log_tail,
                f"Fix the cause (the next try then succeeds), or `bgdeploy deploy` another "
                f"version; `bgdeploy logs {active.boot_id}` has the whole log.",
            )
        ]
    if not sup.is_running(active):
        return [
            Check(
                "active boot",
                FAIL,
                f"{active.boot_id} (pid {active.pid}) is not running",
                "Run `bgdeploy reconcile` (it starts a fresh boot).",
            )
        ]
    with httpx.Client() as client:
        result = health_check(client, cfg, active)
    checks = [
        Check(
            "active boot",
            PASS if result.ok else FAIL,
            f"{active.boot_id} ({active.version}): {result.detail}",
            "" if result.ok else f"See `bgdeploy logs {active.boot_id}`.",
        )
    ]
    try:
        installed = installed_version(cfg)
    except BgdeployError as e:
        checks.append(Check("installed version", WARN, e.message, e.hint or ""))
        return checks
    intent = reg.intents.read(app.service)
    if installed == active.version:
        checks.append(Check("installed version", PASS, f"{installed} is active"))
    elif intent.mode != INSTALLED and intent.version == active.version:
        checks.append(
            Check(
                "installed version",
                PASS,
                f"{intent.describe()}; installed {installed} waits",
                "`bgdeploy unpin` follows the installed version again.",
            )
        )
    elif installed in reg.quarantined_versions(app.service):
        checks.append(
            Check(
                "installed version",
                WARN,
                f"installed {installed} is quarantined; {active.version} stays active",
                f"Install a fixed version, or `bgdeploy deploy --force` to retry {installed}.",
            )
        )
    else:
        checks.append(
            Check(
                "installed version",
                WARN,
                f"installed {installed} differs from active {active.version}",
                "Run `bgdeploy deploy` (or wait for the control loop).",
            )
        )
    return checks


def _orphans(app: App) -> Check:
    reg = app.registry
    row = reg.deployment(app.service)
    referenced = {row.active_boot_id, row.candidate_boot_id, row.old_boot_id}
    sup = BootProcesses(app.config, reg)
    known_pids = set()
    orphans = []
    for boot in reg.boots(app.service):
        if boot.pid and sup.is_running(boot):
            known_pids.add(boot.pid)
            if boot.boot_id not in referenced and not _still_draining(app, boot):
                orphans.append(f"{boot.boot_id} (pid {boot.pid})")
    for proc in processes_of_state_dir(app.config.state_dir):
        if proc.pid not in known_pids and os.getpgid(proc.pid) == proc.pid:
            orphans.append(f"unrecorded pid {proc.pid}")
    if orphans:
        return Check(
            "orphans",
            FAIL,
            f"daemon processes nobody routes to: {', '.join(orphans)}",
            "Run `bgdeploy reconcile` (it stops them).",
        )
    return Check("orphans", PASS, "every running daemon is the active, candidate or old boot")


def _still_draining(app: App, boot: Boot) -> bool:
    """A boot that lost the route is drained and stopped within drain_timeout +
    stop_timeout (by the command that took the route, or a reconcile pass)."""
    if boot.state != BootState.DRAINING or boot.draining_ts is None:
        return False
    d = app.config.daemon
    return (utcnow() - boot.draining_ts).total_seconds() < d.drain_timeout + d.stop_timeout


def _impossible(app: App) -> list[Check]:
    reg = app.registry
    row = reg.deployment(app.service)
    sup = BootProcesses(app.config, reg)
    problems = []
    active = reg.boot(row.active_boot_id)
    down = reg.intents.read(app.service).down
    if active is not None and active.state != BootState.ACTIVE and not down:
        # (after `bgdeploy down` the row still names the boot that will be restarted)
        problems.append(f"the row names {active.boot_id} active but the boot is {active.state}")
    if row.state == DeploymentState.IDLE and (row.candidate_boot_id or row.old_boot_id):
        problems.append("idle with a candidate or old boot set")
    stale = [
        b.boot_id
        for b in reg.boots(app.service)
        if b.state in LIVE_BOOT_STATES
        and b.pid
        and not sup.is_running(b)
        and b.boot_id != row.active_boot_id
    ]
    if stale:
        problems.append(f"boots recorded live whose process is gone: {', '.join(stale)}")
    if problems:
        return [Check("boot states", FAIL, "; ".join(problems), "Run `bgdeploy reconcile`.")]
    return [Check("boot states", PASS, "registry and processes agree")]


def _lock(app: App) -> Check:
    lock = app.lock()
    holder = lock.holder()
    if holder is None:
        return Check("lifecycle lock", PASS, "free")
    # An advisory lock's holder may be on another host, where its pid means nothing here.
    if isinstance(lock, LifecycleLock) and holder.pid and not psutil.pid_exists(holder.pid):
        return Check(
            "lifecycle lock",
            FAIL,
            f"held by dead pid {holder.pid}",
            "Impossible with flock; check for a shared state_dir across hosts.",
        )
    return Check(
        "lifecycle lock",
        WARN,
        f"held by {holder.describe()}",
        "Wait for it, or pass --wait to the next command.",
    )


def _logs(config: Config) -> Check:
    logs = config.logs_dir
    target = logs if logs.exists() else config.state_dir
    if target.exists() and os.access(target, os.W_OK):
        return Check("log folder", PASS, f"{target} is writable")
    if not target.exists():
        return Check(
            "log folder", WARN, f"{target} does not exist yet", "It is created on the first deploy."
        )
    return Check(
        "log folder", FAIL, f"{target} is not writable", f"Fix its permissions: chmod u+w {target}"
    )


def _disk(config: Config) -> Check:
    where = config.state_dir if config.state_dir.exists() else config.base_dir
    free = shutil.disk_usage(where).free
    if free < MIN_FREE_BYTES:
        return Check(
            "disk space",
            FAIL,
            f"{free // (1024 * 1024)} MiB free under {where}",
            "Free some space: old boot logs are in the state folder's logs/.",
        )
    return Check("disk space", PASS, f"{free // (1024 * 1024)} MiB free")


def summary(checks: list[Check]) -> dict[str, Any]:
    return {
        "ok": not any(c.status == FAIL for c in checks),
        "checks": [c.as_dict() for c in checks],
    }
