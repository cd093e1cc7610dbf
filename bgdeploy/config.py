"""bgdeploy.toml: read with tomllib, every key checked, paths resolved.

Lookup order: ``--config PATH``, else ``$BGDEPLOY_CONFIG``, else
``./bgdeploy.toml``. Relative paths resolve against the config file's folder.
Unknown keys and wrong types are ``ConfigError`` naming the key (exit 2).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgdeploy.errors import ConfigError

CONFIG_ENV = "BGDEPLOY_CONFIG"
CONFIG_NAME = "bgdeploy.toml"

# key -> (kind, default). kind is one of: str, int, number, argv, opt_str, opt_argv, port_range.
_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "router": {
        "host": ("str", "127.0.0.1"),
        "port": ("port", 47777),
        "admin_port": ("port", 47778),
        "header_timeout": ("number", 10.0),
        "idle_timeout": ("number", 60.0),
        "max_connections": ("count", 10000),
    },
    "registry": {"url": ("opt_str", None)},
    "daemon": {
        "command": ("argv", None),
        "health_path": ("path", "/healthz"),
        "attach_path": ("opt_path", None),
        "version_command": ("opt_argv", None),
        "version_file": ("opt_str", None),
        "port_range": ("port_range", [47800, 47999]),
        "startup_timeout": ("number", 30.0),
        "stop_timeout": ("number", 10.0),
        "drain_timeout": ("number", 30.0),
    },
    "health": {
        "interval": ("number", 1.0),
        "timeout": ("number", 2.0),
        "failure_threshold": ("count", 3),
        "stable_checks": ("count", 5),
    },
}
_TOP_LEVEL = {"state_dir": ("opt_str", None)}
_KIND_NAMES = {
    "str": "a string",
    "opt_str": "a string",
    "path": "a string starting with '/'",
    "opt_path": "a string starting with '/'",
    "port": "a port number (1-65535)",
    "number": "a positive number",
    "count": "a whole number of at least 1",
    "argv": "a non-empty list of strings",
    "opt_argv": "a non-empty list of strings",
    "port_range": "a list of two port numbers [low, high] with low <= high",
}


@dataclass(frozen=True)
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 47777
    admin_port: int = 47778
    header_timeout: float = 10.0  # a client must send a whole request head within this
    idle_timeout: float = 60.0  # idle keep-alive client connections are closed after this
    max_connections: int = 10_000


@dataclass(frozen=True)
class DaemonConfig:
    command: list[str]
    health_path: str = "/healthz"
    attach_path: str | None = None
    version_command: list[str] | None = None
    version_file: Path | None = None
    port_range: tuple[int, int] = (47800, 47999)
    startup_timeout: float = 30.0
    stop_timeout: float = 10.0
    drain_timeout: float = 30.0


@dataclass(frozen=True)
class HealthConfig:
    interval: float = 1.0
    timeout: float = 2.0
    failure_threshold: int = 3
    stable_checks: int = 5


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    registry_url: str
    daemon: DaemonConfig
    router: RouterConfig = field(default_factory=RouterConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative paths and the daemon's cwd start here."""
        return self.path.parent

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use, by the documented lookup order (it may not exist yet)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return (Path.cwd() / CONFIG_NAME).absolute()


def load_config(path: Path) -> Config:
    if not path.is_file():
        raise ConfigError(
            f"No config file at {path}.",
            hint="Run `bgdeploy init` to write a starter bgdeploy.toml, or pass --config PATH.",
        )
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}.") from None
    except OSError as e:
        raise ConfigError(f"Cannot read {path}: {e.strerror}.") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    base = path.parent
    values: dict[str, dict[str, Any]] = {}
    for key in raw:
        if key not in _SCHEMA and key not in _TOP_LEVEL:
            known = ", ".join([*_TOP_LEVEL, *(f"[{s}]" for s in _SCHEMA)])
            raise ConfigError(
                f"Unknown key `{key}` in {path}.", hint=f"Known top-level keys: {known}."
            )
    for section, keys in _SCHEMA.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"`{section}` in {path} must be a table ([{section}]).")
        for key in table:
            if key not in keys:
                raise ConfigError(
                    f"Unknown key `{section}.{key}` in {path}.",
                    hint=f"Known keys in [{section}]: {', '.join(keys)}.",
                )
        values[section] = {
            key: _check(f"{section}.{key}", kind, table.get(key, default), path)
            for key, (kind, default) in keys.items()
        }
    state_dir_raw = _check("state_dir", "opt_str", raw.get("state_dir"), path)

    daemon = values["daemon"]
    if daemon["command"] is None:
        raise ConfigError(
            f"`daemon.command` is missing in {path}.",
            hint='Set it to the argv that starts your daemon, e.g. command = ["./mydaemon", '
            '"--port", "{port}"].',
        )
    state_dir = _resolve(base, state_dir_raw or ".bgdeploy")
    url = values["registry"]["url"] or f"sqlite:///{state_dir / 'registry.db'}"
    return Config(
        path=path,
        state_dir=state_dir,
        registry_url=_resolve_sqlite_url(url, base),
        router=RouterConfig(**values["router"]),
        daemon=DaemonConfig(
            command=daemon["command"],
            health_path=daemon["health_path"],
            attach_path=daemon["attach_path"],
            version_command=daemon["version_command"],
            version_file=_resolve(base, daemon["version_file"]) if daemon["version_file"] else None,
            port_range=tuple(daemon["port_range"]),
            startup_timeout=daemon["startup_timeout"],
            stop_timeout=daemon["stop_timeout"],
            drain_timeout=daemon["drain_timeout"],
        ),
        health=HealthConfig(**values["health"]),
    )


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _resolve_sqlite_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str(base / url[len(prefix) :])
    return url


def _check(name: str, kind: str, value: Any, path: Path) -> Any:  # noqa: C901 - one table of kinds
    if value is None and kind.startswith("opt_"):
        return None
    if value is None and kind == "argv":
        return None
    ok = False
    if kind in ("str", "opt_str"):
        ok = isinstance(value, str) and value != ""
    elif kind in ("path", "opt_path"):
        ok = isinstance(value, str) and value.startswith("/")
    elif kind == "port":
        ok = _is_int(value) and 1 <= value <= 65535
    elif kind == "number":
        ok = (_is_int(value) or isinstance(value, float)) and value > 0
        value = float(value) if ok else value
    elif kind == "count":
        ok = _is_int(value) and value >= 1
    elif kind in ("argv", "opt_argv"):
        ok = isinstance(value, list) and value != [] and all(isinstance(v, str) for v in value)
    elif kind == "port_range":
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and all(_is_int(v) for v in value)
            and 1 <= value[0] <= value[1] <= 65535
        )
    if not ok:
        raise ConfigError(
            f"`{name}` in {path} must be {_KIND_NAMES[kind]}, not {value!r}.",
        )
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


STARTER_CONFIG = """\
# bgdeploy.toml - written by `bgdeploy init`. Every key is shown with its default.
# Relative paths resolve against this file's folder.

# Where the registry, logs and lock live.
# state_dir = ".bgdeploy"

[router]
# The fixed address users and tools talk to, forever.
host = "127.0.0.1"
port = 47777
# Read-only admin listener: /api/status, /metrics and the dashboard (loopback only).
admin_port = 47778
header_timeout = 10.0    # seconds a client has to send a whole request head
idle_timeout = 60.0      # idle keep-alive client connections are closed after this
max_connections = 10000  # open client connections at most

[registry]
# SQLAlchemy URL of the registry; default sqlite:///<state_dir>/registry.db
# url = "sqlite:///.bgdeploy/registry.db"

[daemon]
# argv of your daemon (never run through a shell). {port}, {boot_id} and {version}
# are filled in; BGDEPLOY_PORT, BGDEPLOY_BOOT_ID and BGDEPLOY_VERSION are set too.
command = ["python3", "tools/demo_daemon.py", "--port", "{port}", "--version", "{version}"]
# GET this path answers 2xx when healthy (JSON body with "version" is checked).
health_path = "/healthz"
# POST {"workspace": "<id>"} here attaches a workspace; leave unset if not used.
# attach_path = "/workspaces"
# The installed version: the stripped stdout of version_command, or version_file.
# version_command = ["./mydaemon", "--version"]
version_file = "VERSION"
# Internal ports for boots.
port_range = [47800, 47999]
startup_timeout = 30.0   # seconds for a new boot to become healthy
stop_timeout = 10.0      # SIGTERM, then SIGKILL to the process group after this
drain_timeout = 30.0     # wait for in-flight requests of an old boot at most this long

[health]
interval = 1.0           # seconds between health checks of the active boot
timeout = 2.0            # seconds for one health check
failure_threshold = 3    # consecutive failures after a switch -> automatic rollback
stable_checks = 5        # consecutive successes after a switch -> finalize
"""
