"""`bgdeploy up` and `bgdeploy down`: the router process and the boots behind it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace

from bgdeploy.boots import BootProcesses, log_tail
from bgdeploy.config import Config
from bgdeploy.control.app import App
from bgdeploy.control.decide import Act, World, decide, target
from bgdeploy.control.deploy import DeployResult, Progress, no_progress
from bgdeploy.control.lifecycle import Notice, lifecycle, no_notice, take_lock
from bgdeploy.control.router_api import running_router
from bgdeploy.control.world import gather
from bgdeploy.errors import EXIT_LOCK_BUSY, OperationFailed
from bgdeploy.processes import process_matches
from bgdeploy.registry.intent import DOWN, UP
from bgdeploy.states import BootState

log = logging.getLogger("bgdeploy.up")

ROUTER_START_TIMEOUT_S = 20.0


@dataclass
class UpResult:
    router_pid: int
    started: bool
    deploy: DeployResult | None


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def router_log_path(app: App):  # noqa: ANN201
    return app.config.state_dir / "router.log"


def supervisor_argv(
    config: Config, *, deploy_if_none: bool, control_loop: bool = True
) -> list[str]:
    """How a router supervisor is started: by `bgdeploy up`, and by a supervisor that
    hands over to the installed code (it keeps its own ``deploy_if_none`` and
    ``control_loop``)."""
    argv = [sys.executable, "-m", "bgdeploy", "--config", str(config.path), "up", "--foreground"]
    if not deploy_if_none:
        argv.append("--no-deploy")
    if not control_loop:
        argv.append("--no-control")
    return argv


def start_router_background(app: App) -> tuple[int, bool]:
    """Start `bgdeploy up --foreground` detached; return its pid once the port answers, and
    whether it was this call that started it (two `up` at once: one starts it, the other
    waits for it)."""
    cfg = app.config
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = router_log_path(app)
    fd = os.open(log_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            supervisor_argv(cfg, deploy_if_none=False),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cfg.base_dir,
        )
    finally:
        os.close(fd)
    deadline = time.monotonic() + ROUTER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() == EXIT_LOCK_BUSY:
            # Another `up` started a supervisor a moment before ours: wait for that one.
            row = running_router(app)
            if row is not None and _answers(cfg.router.host, cfg.router.port):
                return row.pid, False
        elif proc.poll() is not None:
            lines = log_tail(log_path, 10).splitlines()
            errors = [ln.removeprefix("Error: ") for ln in lines if ln.startswith("Error: ")]
            why = errors[-1] if errors else (lines[-1] if lines else "no output")
            raise OperationFailed(f"The router exited at start: {why}", hint=f"See {log_path}.")
        row = running_router(app)
        if row is not None and row.pid == proc.pid and _answers(cfg.router.host, cfg.router.port):
            return proc.pid, True
        time.sleep(0.05)
    proc.terminate()
    raise OperationFailed(
        f"The router did not start within {ROUTER_START_TIMEOUT_S:g}s.", hint=f"See {log_path}."
    )


def up(
    app: App,
    *,
    wait: float | None = None,
    no_wait: bool = False,
    notice: Notice = no_notice,
    progress: Progress = no_progress,
) -> UpResult:
    row = running_router(app)
    pid, started = (row.pid, False) if row is not None else start_router_background(app)
    progress(
        "router",
        f"pid {pid} on {app.config.router.host}:{app.config.router.port}"
        + ("" if started else " (already running)"),
    )
    app.registry.intents.set_run(app.service, UP, "bgdeploy up")
    sup = BootProcesses(app.config, app.registry)
    result = None
    if not _active_runs(app, sup):
        with lifecycle(
            app, "bgdeploy up", wait=wait, no_wait=no_wait, notice=notice, progress=progress
        ) as deployer:
            # Another `up` may have deployed while this one waited for the lock.
            if not _active_runs(app, sup):
                version, reason = start_version(gather(app, sup, deploy_if_none=True))
                result = deployer.deploy(version, force=True, progress=progress, reason=reason)
    return UpResult(pid, started, result)


def _active_runs(app: App, sup: BootProcesses) -> bool:
    active = app.registry.boot(app.registry.deployment(app.service).active_boot_id)
    return active is not None and sup.is_running(active)


def start_version(world: World) -> tuple[str, str]:
    """What `up` starts when nothing runs: the version that should run (the installed
    one, a pin, an operator rollback), unless it is quarantined; then what the decision
    function would start (the version that was running)."""
    version, why, _ = target(world)
    if version is not None and version not in world.quarantined:
        return version, f"bgdeploy up: {why}"
    decision = decide(replace(world, intent=replace(world.intent, run=UP)))
    if decision.action is Act.DEPLOY and decision.version is not None:
        return decision.version, f"bgdeploy up: {decision.reason}"
    raise OperationFailed(
        f"Nothing to start: {decision.sentence}.",
        hint="Deploy a version explicitly: bgdeploy deploy --version V.",
    )


def down(
    app: App,
    *,
    wait: float | None = None,
    no_wait: bool = False,
    notice: Notice = no_notice,
    progress: Progress = no_progress,
) -> int:
    """Drain and stop the router, then every boot. Returns how many boots were stopped."""
    cfg = app.config
    lock = take_lock(app, "bgdeploy down", wait=wait, no_wait=no_wait, notice=notice)
    try:
        # First the intent: no automatic actor (cron's reconcile, a heal) starts it again.
        app.registry.intents.set_run(app.service, DOWN, "bgdeploy down")
        row = running_router(app)
        if row is not None:
            os.kill(row.pid, signal.SIGTERM)
            # Polled by pid and start time: an exited router that its parent has not
            # reaped yet (a zombie) has stopped, though psutil's wait would not say so.
            deadline = time.monotonic() + cfg.daemon.drain_timeout + cfg.daemon.stop_timeout
            while process_matches(row.pid, row.pid_create_time):
                if time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(row.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
            progress("router", f"pid {row.pid} stopped")
        sup = BootProcesses(cfg, app.registry)
        stopped = 0
        for boot in app.registry.boots(app.service, live_only=True):
            if sup.is_running(boot):
                sup.stop(boot)
                stopped += 1
                progress("stopped", f"{boot.boot_id} ({boot.version})")
            else:
                app.registry.boot_records.mark_exited(boot.boot_id, BootState.STOPPED, None)
        return stopped
    finally:
        lock.release()
