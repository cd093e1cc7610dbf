"""bgdeploy.toml: read with tomllib, every key checked, paths resolved.

Lookup order: ``--config PATH``, else ``$BGDEPLOY_CONFIG``, else
``./bgdeploy.toml``. Relative paths resolve against the config file's folder.
Unknown keys and wrong types are ``ConfigError`` naming the key (exit 2).

Every key is written once, in ``SCHEMA`` (``config_schema.py``, in the kinds of
``config_kinds.py``): its kind, default and one line of help.
The section dataclasses take their defaults from it, ``bgdeploy init`` writes
``starter_config()`` from it, the router's limits use those defaults, and the
README's configuration table is ``readme_table()`` (a unit test compares them).

To add a key: add a ``Key`` to its section in ``SCHEMA`` and a field of the same
name to the section's dataclass, then run ``python tools/config_table.py --write``.
To add a section: a ``SCHEMA`` entry, a dataclass decorated ``@_section("name")``,
and a field on ``Config``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import textwrap
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgdeploy.config_kinds import (  # noqa: F401 - part of bgdeploy.config's interface
    BODY_REGEX_PREFIX,
    MAX_CANARY_STEPS,
    Kind,
    canary_steps_ok,
)
from bgdeploy.config_schema import SCHEMA, Key, default  # noqa: F401 - likewise
from bgdeploy.errors import ConfigError

CONFIG_ENV = "BGDEPLOY_CONFIG"
CONFIG_NAME = "bgdeploy.toml"


def _section(name: str) -> Callable[[type], type]:
    """Give a section dataclass its defaults from SCHEMA; its fields must be the section's keys."""

    def apply(cls: type) -> type:
        keys = SCHEMA[name]
        if list(cls.__annotations__) != list(keys):
            raise TypeError(f"{cls.__name__} fields must be the keys of [{name}], in order")
        for key, spec in keys.items():
            if spec.required:
                continue
            value = default(name, key)
            if isinstance(value, list | dict):
                setattr(cls, key, field(default_factory=lambda v=value: copy.deepcopy(v)))
            else:
                setattr(cls, key, value)
        return cls

    return apply


@dataclass(frozen=True)
@_section("router")
class RouterConfig:
    host: str
    port: int
    admin_port: int
    header_timeout: float
    idle_timeout: float
    max_connections: int
    preview_port: int | None
    upstream_timeout: float
    stream_idle_timeout: float
    max_body: int
    workers: int | str
    hold_timeout: float | None


@dataclass(frozen=True)
@_section("daemon")
class DaemonConfig:
    command: list[str]
    env: dict[str, str]
    cwd: Path | None
    health_path: str
    attach_path: str | None
    version_command: list[str] | None
    version_file: Path | None
    port_range: tuple[int, int]
    startup_timeout: float
    stop_timeout: float
    drain_timeout: float
    crash_window: float
    replicas: int | str  # a count, or "auto": one per CPU
    min_ready: int | None  # None: every replica


@dataclass(frozen=True)
@_section("health")
class HealthConfig:
    interval: float
    timeout: float
    failure_threshold: int
    stable_checks: int
    startup_interval: float
    method: str
    headers: dict[str, str]
    host: str | None
    expect_status: tuple[tuple[int, int], ...]  # inclusive ranges: "200-299" -> ((200, 299),)
    expect_body: str | None


@dataclass(frozen=True)
@_section("deploy")
class DeployConfig:
    auto_promote: bool
    canary: tuple[int, ...]
    canary_step: float


@dataclass(frozen=True)
@_section("analysis")
class AnalysisConfig:
    max_error_ratio: float
    min_requests: int
    max_p99_ratio: float | None
    window: float
    max_wait: float


@dataclass(frozen=True)
@_section("hooks")
class HooksConfig:
    pre_switch: list[str] | None
    post_switch: list[str] | None
    post_rollback: list[str] | None
    post_finalize: list[str] | None
    timeout: float


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    registry_url: str
    daemon: DaemonConfig
    router: RouterConfig = field(default_factory=RouterConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    service: str = "default"

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative paths and the daemon's cwd start here."""
        return self.path.parent

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def hold_timeout(self) -> float:
        """router.hold_timeout, which defaults to daemon.startup_timeout."""
        held = self.router.hold_timeout
        return self.daemon.startup_timeout if held is None else held


def config_digest(config: Config) -> str:
    """sha256 of the parsed configuration (comments and key order do not count): the
    router records the one it runs with, so `up`, `status` and `doctor` see a change."""
    data = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()


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
    top = SCHEMA[""]
    sections = [s for s in SCHEMA if s]
    for key in raw:
        if key not in top and key not in sections:
            known = ", ".join([*top, *(f"[{s}]" for s in sections)])
            raise ConfigError(
                f"Unknown key `{key}` in {path}.", hint=f"Known top-level keys: {known}."
            )
    values = {"": _parse_table("", {k: v for k, v in raw.items() if k in top}, path)}
    for section in sections:
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"`{section}` in {path} must be a table ([{section}]).")
        values[section] = _parse_table(section, table, path)

    state_dir = values[""]["state_dir"]
    url = values["registry"]["url"] or f"sqlite:///{state_dir / 'registry.db'}"
    return Config(
        path=path,
        state_dir=state_dir,
        service=values[""]["service"] or default_service(url, path.parent),
        registry_url=_resolve_sqlite_url(url, path.parent),
        router=RouterConfig(**values["router"]),
        daemon=DaemonConfig(**values["daemon"]),
        health=HealthConfig(**values["health"]),
        deploy=DeployConfig(**values["deploy"]),
        analysis=AnalysisConfig(**values["analysis"]),
        hooks=HooksConfig(**values["hooks"]),
    )


def _parse_table(section: str, table: dict[str, Any], path: Path) -> dict[str, Any]:
    keys = SCHEMA[section]
    for key in table:
        if key not in keys:
            raise ConfigError(
                f"Unknown key `{section}.{key}` in {path}.",
                hint=f"Known keys in [{section}]: {', '.join(keys)}.",
            )
    values = {}
    for key, spec in keys.items():
        name = f"{section}.{key}" if section else key
        if key in table:
            value = table[key]
            if not spec.kind.accepts(value):
                raise ConfigError(f"`{name}` in {path} must be {spec.kind.what}, not {value!r}.")
        elif spec.required:
            example = f"{key} = {toml_value(spec.example)}"
            raise ConfigError(
                f"`{name}` is missing in {path}.",
                hint=f"Set it in [{section}]: {spec.help}; e.g. {example}.",
            )
        else:
            value = copy.deepcopy(spec.default)
        values[key] = None if value is None else spec.kind.convert(value, path.parent)
    return values


def default_service(url: str, base: Path) -> str:
    """ "default" beside a SQLite registry: one file per config, and the name every
    registry written before services existed uses. A PostgreSQL registry is shared by
    design (hosts, daemons), so there each config folder is its own service."""
    if not url.startswith(("postgresql:", "postgresql+")):
        return "default"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base.name).strip("-._")[:40]
    return name or "default"


def _resolve_sqlite_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str(base / url[len(prefix) :])
    return url


def toml_value(value: Any) -> str:
    """A value as TOML text (strings as JSON strings, which TOML reads the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def starter_config(values: dict[str, Any] | None = None) -> str:
    """The commented bgdeploy.toml that `bgdeploy init` writes: every key, with its help.

    ``values`` maps "section.key" to a value written instead of the starter's
    (``init --port``, ``--command``, ``--demo``); each must be a key of SCHEMA.
    """
    values = dict(values or {})
    lines = [
        "# bgdeploy.toml - written by `bgdeploy init`. Every key is shown: set ones with",
        "# their default (or a working example), unset ones commented out.",
        "# Relative paths resolve against this file's folder.",
    ]
    for section, keys in SCHEMA.items():
        lines.append("")
        if section:
            lines.append(f"[{section}]")
        for key, spec in keys.items():
            lines += textwrap.wrap(spec.help, 88, initial_indent="# ", subsequent_indent="# ")
            name = f"{section}.{key}" if section else key
            value = spec.starter if spec.starter is not None else spec.default
            value = values.pop(name, value)
            if value is not None:
                lines.append(f"{key} = {toml_value(value)}")
            else:
                lines.append(f"# {key} = {toml_value(spec.example)}")
    if values:
        raise KeyError(f"not config keys: {', '.join(values)}")
    return "\n".join(lines) + "\n"


def readme_keys() -> str:
    """The README's short list of every key with its default, one row per section."""
    rows = ["| section | keys (default) |", "| --- | --- |"]
    for section, keys in SCHEMA.items():
        cells = []
        for key, spec in keys.items():
            if spec.required:
                cells.append(f"`{key}` (required)")
            elif spec.default is None or spec.default == {}:
                cells.append(f"`{key}`")
            else:
                cells.append(f"`{key}` {toml_value(spec.default)}")
        rows.append(f"| {f'[{section}]' if section else '(top level)'} | {' · '.join(cells)} |")
    return "\n".join(rows) + "\n"


def readme_table() -> str:
    """The configuration table of docs/configuration.md, one row per key."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            name = f"{section}.{key}" if section else key
            if spec.shown:
                shown = spec.shown
            elif spec.required:
                shown = "(required)"
            elif spec.default is None:
                shown = "unset"
            else:
                shown = f"`{toml_value(spec.default)}`"
            rows.append(f"| `{name}` | {shown} | {spec.help} |")
    return "\n".join(rows) + "\n"


STARTER_CONFIG = starter_config()
