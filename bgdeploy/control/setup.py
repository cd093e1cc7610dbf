"""`bgdeploy init`: a starter config and a registry at migration head."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgdeploy.config import find_config_path, load_config, starter_config
from bgdeploy.errors import ConfigError
from bgdeploy.registry import migrate
from bgdeploy.registry.store import Registry


def demo_command() -> list[str]:
    """The packaged demo daemon, run by this interpreter (no PATH lookup, no checkout)."""
    return [sys.executable, "-m", "bgdeploy.demo", "--port", "{port}", "--version", "{version}"]


@dataclass(frozen=True)
class InitChoices:
    """What `init` writes instead of the starter's values (None: the starter's)."""

    demo: bool = False
    port: int | None = None
    admin_port: int | None = None
    command: str | None = None  # a command line, split like a shell would (never run by one)

    def values(self) -> dict[str, Any]:
        if self.demo and self.command is not None:
            raise ConfigError(
                "--demo and --command both choose the daemon.",
                hint="Pass one of them: --demo runs the packaged demo daemon.",
            )
        values: dict[str, Any] = {}
        if self.demo:
            values["daemon.command"] = demo_command()
        if self.command is not None:
            try:
                argv = shlex.split(self.command)
            except ValueError as e:
                raise ConfigError(f"--command cannot be split into words: {e}.") from None
            if not argv:
                raise ConfigError(
                    "--command is empty.", hint='e.g. --command "./mydaemon --port {port}"'
                )
            values["daemon.command"] = argv
        if self.port is not None:
            values["router.port"] = self.port
        if self.admin_port is not None:
            values["router.admin_port"] = self.admin_port
        if self.port is not None and self.port == self.admin_port:
            raise ConfigError("--port and --admin-port must differ.")
        return values


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    wrote_config: bool
    registry_url: str
    revision: str | None
    command: list[str]


def init(config_path: str | Path | None = None, choices: InitChoices | None = None) -> InitResult:
    path = find_config_path(config_path)
    values = (choices or InitChoices()).values()
    wrote = False
    if path.exists() and values:
        raise ConfigError(
            f"{path} exists already: init's options only shape a new file.",
            hint="Edit the keys in it, or move it away and run `bgdeploy init` again.",
        )
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(starter_config(values))
        except OSError as e:
            raise ConfigError(
                f"Cannot write {path}: {e.strerror}.",
                hint="Choose a writable folder, or pass --config PATH.",
            ) from None
        wrote = True
    config = load_config(path)
    registry = Registry(config.registry_url)
    try:
        revision = migrate.current_revision(registry.engine)
    finally:
        registry.close()
    return InitResult(path, wrote, config.registry_url, revision, config.daemon.command)
