"""Fixtures with real demo daemon processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from bench_common import free_port_block  # tools/: on the path tests/conftest.py sets

from bgdeploy.boots import BootProcesses
from bgdeploy.config import load_config
from bgdeploy.control.app import App
from bgdeploy.registry.models import Boot
from tests.conftest import REPO, demo_command, poll_until, write_config

FAST = """
[daemon]
health_path = "{health_path}"
attach_path = "/workspaces"
port_range = [{low}, {high}]
startup_timeout = {startup}
stop_timeout = {stop}
drain_timeout = {drain}
{daemon_extra}
[health]
interval = {interval}
timeout = 1.0
stable_checks = {stable}
failure_threshold = {threshold}
{health_extra}
"""


def make_app(
    tmp_path,
    *,
    flags: list[str] = (),
    startup: float = 20.0,
    stop: float = 5.0,
    drain: float = 5.0,
    extra: str = "",
    command: list[str] | None = None,
    interval: float = 0.2,
    stable: int = 1000,
    threshold: int = 3,
    daemon_extra: str = "",
    health_extra: str = "",
    health_path: str = "/healthz",
) -> App:
    low, high = free_port_block()
    cmd = command or demo_command("--boot-id", "{boot_id}", *flags)
    body = (
        FAST.format(
            low=low,
            high=high,
            startup=startup,
            stop=stop,
            drain=drain,
            interval=interval,
            stable=stable,
            threshold=threshold,
            daemon_extra=daemon_extra,
            health_extra=health_extra,
            health_path=health_path,
        )
        + extra
    )
    # write_config writes [daemon] with the command first: the body goes on from there
    path = write_config(tmp_path, body.replace("[daemon]\n", "", 1), command=cmd)
    return App(load_config(path))


class Boots:
    """Start boots for tests and stop every one of them afterwards."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.supervisor = BootProcesses(app.config, app.registry)

    def start(self, version: str = "1.0") -> Boot:
        boot_id = self.app.registry.create_boot(self.app.service, 1, version)
        return self.supervisor.spawn(boot_id)

    def stop_all(self) -> None:
        """Every boot of this registry with a live process, however it was started."""
        for boot in self.app.registry.boots(self.app.service, live_only=True):
            if self.supervisor.is_running(boot):
                self.supervisor.stop(boot, timeout=2)


@pytest.fixture
def boots_for(tmp_path) -> Iterator[Callable[..., Boots]]:
    made: list[Boots] = []

    def factory(**kw: object) -> Boots:
        b = Boots(make_app(tmp_path, **kw))
        made.append(b)
        return b

    yield factory
    for b in made:
        b.stop_all()
        b.app.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RouterRun:
    """A real router process (`bgdeploy up --foreground`) on free loopback ports."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.config.router.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.app.config.router.admin_port}"

    def start(self, env: dict[str, str] | None = None) -> RouterRun:
        from bgdeploy.control.router_api import running_router

        log = open(self.app.config.path.parent / "router.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bgdeploy",
                "--config",
                str(self.app.config.path),
                "up",
                "--foreground",
                "--no-deploy",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        log.close()
        poll_until(
            lambda: (r := running_router(self.app)) is not None and r.pid == self.proc.pid,
            60,  # a loaded machine starts a Python process slowly
            what="the router to start",
        )
        return self

    def route(self) -> str | None:
        import httpx

        return httpx.get(f"{self.admin_url}/api/route", timeout=2).json()["boot_id"]

    def worker(self):  # noqa: ANN201 - psutil.Process
        """The router's one serving worker process: the one that forwards (and holds the
        client connections); self.proc is its supervisor."""
        import httpx
        import psutil

        info = httpx.get(f"{self.admin_url}/api/router", timeout=5).json()
        (worker,) = [w for w in info["workers"] if not w["draining"]]
        return psutil.Process(worker["pid"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def stack(tmp_path) -> Iterator[Callable[..., tuple[App, RouterRun]]]:
    """An app whose router runs for real; everything is stopped afterwards.
    ``registry_url=`` puts its registry elsewhere (the PostgreSQL server)."""
    made: list[tuple[App, RouterRun]] = []

    def factory(**kw: object) -> tuple[App, RouterRun]:
        extra = str(kw.pop("extra", ""))
        router = (
            f"\n[router]\nport = {free_port()}\nadmin_port = {free_port()}\n"
            f"header_timeout = {kw.pop('header_timeout', 10.0)}\n"
            f"workers = {kw.pop('workers', 1)}\n{kw.pop('router_extra', '')}\n"
        )
        router_env = kw.pop("router_env", None)
        url = kw.pop("registry_url", None)
        if url is not None:
            extra += f'\n[registry]\nurl = "{url}"\n'
        app = make_app(tmp_path, extra=extra + router, **kw)
        run = RouterRun(app)
        made.append((app, run))  # stopped at teardown even if it is slow to start
        return app, run.start(router_env)

    yield factory
    from bgdeploy.boots import BootProcesses

    for app, run in made:
        run.stop()
        stop_orphaned_workers(app)
        sup = BootProcesses(app.config, app.registry)
        for boot in app.registry.boots(app.service, live_only=True):
            if sup.is_running(boot):
                sup.stop(boot, timeout=2)
        app.close()


def stop_orphaned_workers(app: App) -> None:
    """Router workers a test left without their supervisor (it killed it) are ours to end."""
    from bgdeploy.router import ipc

    for pid in ipc.live_workers(ipc.namespace(app.config.state_dir)):
        os.kill(pid, signal.SIGKILL)


def locked(app: App, fn: Callable[..., object]) -> object:
    """Run fn(deployer) holding the lifecycle lock, then drain what it demoted, as a CLI
    command does."""
    from bgdeploy.control.lifecycle import lifecycle

    with lifecycle(app, "test", wait=60) as deployer:
        return fn(deployer)


def deploy(app: App, version: str, **kw: object):  # noqa: ANN201 - DeployResult
    return locked(app, lambda d: d.deploy(version, **kw))


def settle(app: App):  # noqa: ANN201 - DeploymentFields
    return locked(app, lambda d: d.settle())


def serve(stack: Callable[..., tuple[App, RouterRun]], **kw: object) -> tuple[App, RouterRun, str]:
    """A router in front of an active boot of version 1.0: (app, router, boot id)."""
    app, router = stack(**kw)
    return app, router, deploy(app, "1.0").boot_id


@pytest.fixture
def served(stack) -> tuple[App, RouterRun, str]:
    """serve() with a 1 s header timeout, so that a test of slow clients is quick."""
    return serve(stack, header_timeout=1.0)
