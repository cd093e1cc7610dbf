"""Fixtures with real demo daemon processes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest

from bgdeploy.boots import Supervisor
from bgdeploy.config import load_config
from bgdeploy.control.app import App
from bgdeploy.registry.models import Boot
from tests.conftest import DEMO_DAEMON, write_config

FAST = """
[daemon]
health_path = "/healthz"
attach_path = "/workspaces"
port_range = [{low}, {high}]
startup_timeout = {startup}
stop_timeout = {stop}
drain_timeout = 5.0
[health]
interval = 0.2
timeout = 1.0
"""


def free_port_block(size: int = 40) -> tuple[int, int]:
    """A port range for daemons of one test: derived from the pid so parallel runs differ."""
    import random
    import socket

    rng = random.Random()
    for _ in range(50):
        low = rng.randrange(20000, 60000 - size)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", low))
            except OSError:
                continue
        return low, low + size - 1
    raise RuntimeError("no free port block")


def make_app(
    tmp_path,
    *,
    flags: list[str] = (),
    startup: float = 20.0,
    stop: float = 5.0,
    extra: str = "",
    command: list[str] | None = None,
) -> App:
    low, high = free_port_block()
    cmd = command or [
        sys.executable,
        str(DEMO_DAEMON),
        "--port",
        "{port}",
        "--version",
        "{version}",
        "--boot-id",
        "{boot_id}",
        *flags,
    ]
    body = FAST.format(low=low, high=high, startup=startup, stop=stop) + extra
    # write_config puts command in [daemon]; merge by writing the whole file ourselves
    path = write_config(tmp_path, command=cmd)
    text = path.read_text().replace("[daemon]\n", "", 1)
    path.write_text(body.replace("[daemon]\n", "[daemon]\n" + text, 1))
    return App(load_config(path))


class Boots:
    """Start boots for tests and stop every one of them afterwards."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.supervisor = Supervisor(app.config, app.registry)
        self.started: list[str] = []

    def start(self, version: str = "1.0") -> Boot:
        boot_id = self.app.registry.create_boot(self.app.service, 1, version)
        self.started.append(boot_id)
        return self.supervisor.spawn(boot_id)

    def stop_all(self) -> None:
        for boot_id in self.started:
            boot = self.app.registry.boot(boot_id)
            if boot is not None and self.supervisor.is_running(boot):
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
