"""The router supervisor with the control loop in it: where router and control meet.

``bgdeploy/router/`` forwards and knows nothing of deploys; ``bgdeploy/control/``
decides and knows nothing of workers. This module, above both, hands the
supervisor its control loop (a reconcile pass every ``health.interval``), the
status builder and the config loader, and carries `bgdeploy router reload`
to a running supervisor.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from bgdeploy import __version__
from bgdeploy.config import Config, config_digest, load_config
from bgdeploy.control.app import App
from bgdeploy.control.control_loop import ControlLoop
from bgdeploy.control.deploy import Progress, no_progress
from bgdeploy.control.lifecycle import Notice, no_notice, take_lock
from bgdeploy.control.reconcile import Reconciler
from bgdeploy.control.router_api import RouterApi, running_router
from bgdeploy.control.router_ctl import UpResult, supervisor_argv
from bgdeploy.control.router_ctl import up as start_up
from bgdeploy.control.status import all_statuses, history, status
from bgdeploy.errors import ConfigError, OperationFailed
from bgdeploy.router import ipc
from bgdeploy.router.supervisor import RouterSupervisor, SupervisorWiring

RELOAD_TIMEOUT_S = 120.0


def serve_router(app: App, *, deploy_if_none: bool = True, control_loop: bool = True) -> None:
    """Run the router supervisor in this process until SIGTERM (`up --foreground`).

    ``control_loop=False`` (`--no-control`): a router that only forwards, as the
    benchmarks run it in front of processes bgdeploy did not start."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: one line per health check would bury the log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    supervisor: RouterSupervisor | None = None

    def in_process(app_: App) -> App:
        # The control loop asks this supervisor itself, never its own admin listener.
        app_.router = SupervisorAnswers(app_, lambda: supervisor)
        return app_

    state: dict[str, Any] = {"app": in_process(app)}
    # Passes every health.interval (tick) and at once when the active boot exits.
    control = ControlLoop(
        lambda app_, inflight: Reconciler(
            app_,
            inflight=inflight,
            deploy_if_none=deploy_if_none,
            holder=f"bgdeploy router control loop (pid {os.getpid()})",
        ),
        state["app"],
    )

    def on_config(config: Config) -> None:
        # The next control pass (and the next deploy it starts) uses the new file.
        state["app"] = in_process(App(config, app.service))
        control.reset(state["app"])

    hooks = SupervisorWiring(
        status=lambda inflight, router: {
            **status(state["app"], inflight, router),
            "control_loop": control.as_dict() if control_loop else None,
        },
        status_all=lambda inflight, router: all_statuses(state["app"], inflight, router),
        history=lambda: history(state["app"], 20),
        load_config=lambda: load_config(app.config.path),
        control_tick=control.tick if control_loop else None,
        on_config=on_config,
        argv=supervisor_argv(app.config, deploy_if_none=deploy_if_none, control_loop=control_loop),
    )
    supervisor = RouterSupervisor(app.config, app.registry, app.service, hooks)
    if control_loop:
        control.watch(supervisor.inflight)
    supervisor.serve()


class SupervisorAnswers(RouterApi):
    """The router port answered by the supervisor this process runs (``get()``; None
    before it is made), in-process: no HTTP, and the workers asked over their IPC."""

    def __init__(self, app: App, get: Callable[[], RouterSupervisor | None]) -> None:
        super().__init__(app)
        self._get = get

    def info(self) -> dict[str, Any] | None:
        sup = self._get()
        return None if sup is None else sup.info()

    def route(self) -> dict[str, Any] | None:
        sup = self._get()
        return None if sup is None else sup.route()

    def traffic(self, window: float, end: float | None = None) -> dict[str, Any] | None:
        sup = self._get()
        return None if sup is None else sup.traffic(window, end)


def running_info(app: App) -> dict[str, Any] | None:
    """The running supervisor and its workers (pid, version, counters), or None."""
    return app.router.info() if app.router.running() is not None else None


def reload(app: App, *, wait: float | None = None, notice: Notice = no_notice) -> dict[str, Any]:
    """`bgdeploy router reload`: new workers (and supervisor, if its code changed).

    Like every lifecycle command it waits for a pass of bgdeploy's own control loop;
    another holder (a deploy) makes it exit 3."""
    lock = take_lock(app, "bgdeploy router reload", wait=wait, notice=notice)
    try:
        return _reload(app)
    finally:
        lock.release()


def _reload(app: App) -> dict[str, Any]:
    row = running_router(app)
    if row is None:
        raise OperationFailed(
            "No router runs, so there is nothing to reload.", hint="Start it with `bgdeploy up`."
        )
    address = ipc.supervisor_address(ipc.namespace(app.config.state_dir), row.pid)
    try:
        answer, _ = ipc.request(
            address, {"cmd": "reload", "version": __version__}, RELOAD_TIMEOUT_S
        )
    except (OSError, ValueError) as e:
        raise OperationFailed(
            f"The router supervisor (pid {row.pid}) did not answer: {e}.",
            hint="See .bgdeploy/router.log.",
        ) from None
    if not answer.get("ok"):
        kind = ConfigError if answer.get("exit_code") == ConfigError.exit_code else OperationFailed
        raise kind(answer["error"], hint=answer.get("hint"))
    return answer


def up(
    app: App,
    *,
    wait: float | None = None,
    no_wait: bool = False,
    notice: Notice = no_notice,
    progress: Progress = no_progress,
) -> UpResult:
    """`bgdeploy up`: start the router (or reload it onto the installed code, or onto a
    changed bgdeploy.toml), then deploy."""
    row = running_router(app)
    info = None if row is None else app.router.info()
    if info is not None and _outdated(info):
        running = sorted({info["version"], *(w["version"] for w in info["workers"])})
        answer = reload(app, wait=wait, notice=notice)
        progress(
            "router",
            f"reloaded: code {', '.join(running)} -> {__version__} "
            f"(supervisor pid {answer['supervisor']})",
        )
    elif row is not None and row.config_digest != config_digest(app.config):
        answer = reload(app, wait=wait, notice=notice)
        progress(
            "router",
            f"reloaded: {app.config.path.name} changed since the router loaded it "
            f"(supervisor pid {answer['supervisor']}, new workers)",
        )
    return start_up(app, wait=wait, no_wait=no_wait, notice=notice, progress=progress)


def _outdated(info: dict[str, Any]) -> bool:
    return info["version"] != __version__ or any(
        w["version"] != __version__ for w in info["workers"] if not w["draining"]
    )
