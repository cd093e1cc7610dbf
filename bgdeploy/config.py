"""bgdeploy.toml: read with tomllib, every key checked, paths resolved.

Lookup order: ``--config PATH``, else ``$BGDEPLOY_CONFIG``, else
``./bgdeploy.toml``. Relative paths resolve against the config file's folder.
Unknown keys and wrong types are ``ConfigError`` naming the key (exit 2).

Every key is written once, in ``SCHEMA``: its kind, default and one line of help.
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

from bgdeploy.errors import ConfigError

CONFIG_ENV = "BGDEPLOY_CONFIG"
CONFIG_NAME = "bgdeploy.toml"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(value: Any, base: Path) -> Any:
    return value


@dataclass(frozen=True)
class Kind:
    """What a key accepts (``what`` finishes "must be ...") and how its value is stored."""

    what: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any, Path], Any] = _same


def one_of(*kinds: Kind) -> Kind:
    """Any of kinds, converted by the first that accepts the value (e.g. "auto" or a count)."""

    def convert(value: Any, base: Path) -> Any:
        kind = next(k for k in kinds if k.accepts(value))
        return kind.convert(value, base)

    return Kind(
        " or ".join(k.what for k in kinds), lambda v: any(k.accepts(v) for k in kinds), convert
    )


def literal(word: str) -> Kind:
    return Kind(json.dumps(word), lambda v: v == word)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


STR = Kind("a string", lambda v: isinstance(v, str) and v != "")
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
SERVICE = Kind(
    "a name of at most 40 letters, digits, '.', '_' or '-' (starting with a letter or digit)",
    lambda v: isinstance(v, str) and _SERVICE_RE.fullmatch(v) is not None,
)
FILE = Kind("a string (a file path)", STR.accepts, lambda v, base: _resolve(base, v))
URL_PATH = Kind("a string starting with '/'", lambda v: isinstance(v, str) and v.startswith("/"))
PORT = Kind("a port number (1-65535)", lambda v: _is_int(v) and 1 <= v <= 65535)
NUMBER = Kind(
    "a positive number",
    lambda v: (_is_int(v) or isinstance(v, float)) and v > 0,
    lambda v, base: float(v),
)
SECONDS_OR_0 = Kind(
    "a number of seconds (0 or more)",
    lambda v: (_is_int(v) or isinstance(v, float)) and v >= 0,
    lambda v, base: float(v),
)
COUNT = Kind("a whole number of at least 1", lambda v: _is_int(v) and v >= 1)
ARGV = Kind(
    "a non-empty list of strings",
    lambda v: isinstance(v, list) and v != [] and all(isinstance(s, str) for s in v),
)
STR_LIST = Kind(
    "a list of strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)
)
STR_TABLE = Kind(
    "a table of strings",
    lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()),
)
ENV_TABLE = Kind(
    "a table of environment variable names to string values",
    lambda v: (
        isinstance(v, dict)
        and all(
            isinstance(k, str)
            and k
            and "=" not in k
            and "\0" not in k
            and isinstance(s, str)
            and "\0" not in s
            for k, s in v.items()
        )
    ),
)
PORT_RANGE = Kind(
    "a list of two port numbers [low, high] with low <= high",
    lambda v: (
        isinstance(v, list)
        and len(v) == 2
        and all(_is_int(p) for p in v)
        and 1 <= v[0] <= v[1] <= 65535
    ),
    lambda v, base: tuple(v),
)


BOOL = Kind("true or false", lambda v: isinstance(v, bool))
RATIO = Kind(
    "a number above 0 and at most 1 (0.05 is 5%)",
    lambda v: (_is_int(v) or isinstance(v, float)) and 0 < v <= 1,
    lambda v, base: float(v),
)
RATIO_ABOVE_1 = Kind(
    "a number above 1 (2 means twice the old boot's)",
    lambda v: (_is_int(v) or isinstance(v, float)) and v > 1,
    lambda v, base: float(v),
)


MAX_CANARY_STEPS = 10  # the registry keeps them in 64 characters


def canary_steps_ok(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) <= MAX_CANARY_STEPS
        and all(_is_int(w) and 1 <= w <= 99 for w in v)
        and all(a < b for a, b in zip(v, v[1:], strict=False))
    )


CANARY_STEPS = Kind(
    "a list of at most 10 rising percentages between 1 and 99, such as [10, 50]",
    canary_steps_ok,
    lambda v, base: tuple(v),
)
METHOD = Kind(
    "an HTTP method such as GET, HEAD or POST",
    lambda v: isinstance(v, str) and v.isalpha() and v.isupper(),
)
HEADERS = Kind(
    "a table of header names to string values",
    lambda v: (
        isinstance(v, dict)
        and all(
            isinstance(k, str)
            and k != ""
            and all(c.isalnum() or c in "-_" for c in k)
            and isinstance(s, str)
            and "\r" not in s
            and "\n" not in s
            for k, s in v.items()
        )
    ),
)


def _status_ranges(value: Any) -> tuple[tuple[int, int], ...] | None:
    """200, "200-299", or a list of either -> inclusive ranges; None if malformed."""
    items = value if isinstance(value, list) and value else [value]
    ranges = []
    for item in items:
        if _is_int(item):
            low = high = item
        elif isinstance(item, str) and item.count("-") == 1:
            a, b = (part.strip() for part in item.split("-"))
            if not (a.isdigit() and b.isdigit()):
                return None
            low, high = int(a), int(b)
        else:
            return None
        if not 100 <= low <= high <= 599:
            return None
        ranges.append((low, high))
    return tuple(ranges)


STATUS_SET = Kind(
    'a status code, a range such as "200-299", or a list of them',
    lambda v: _status_ranges(v) is not None,
    lambda v, base: _status_ranges(v),
)
BODY_REGEX_PREFIX = "re:"


def _body_match_ok(value: Any) -> bool:
    if not isinstance(value, str) or value == "":
        return False
    if not value.startswith(BODY_REGEX_PREFIX):
        return True
    try:
        re.compile(value[len(BODY_REGEX_PREFIX) :])
    except re.error:
        return False
    return True


BODY_MATCH = Kind('a substring, or "re:" and a valid regular expression', _body_match_ok)


@dataclass(frozen=True)
class Key:
    """One config key. A default of None means unset (TOML has no null): the key is optional.

    ``starter`` is what ``bgdeploy init`` writes when it differs from the default; an unset
    key with an ``example`` is written commented out. ``shown`` is the README's default cell
    when the default is worked out at load time.
    """

    kind: Kind
    default: Any
    help: str
    required: bool = False
    starter: Any = None
    example: Any = None
    shown: str | None = None


# "" holds the top-level keys (TOML wants them before the first table).
SCHEMA: dict[str, dict[str, Key]] = {
    "": {
        "state_dir": Key(FILE, ".bgdeploy", "where the registry, logs, lock and router log live"),
        "service": Key(
            SERVICE,
            None,
            'this daemon\'s name in the registry, which can hold many (default: "default" '
            "with a SQLite registry; the config folder's name with a PostgreSQL one)",
            example="web",
            shown='`"default"`, or the config folder\'s name on PostgreSQL',
        ),
    },
    "router": {
        "host": Key(STR, "127.0.0.1", "the fixed address users and tools talk to, forever"),
        "port": Key(PORT, 47777, "the router's port"),
        "admin_port": Key(
            PORT, 47778, "read-only admin listener: /api/status, /metrics, the dashboard"
        ),
        "header_timeout": Key(
            NUMBER, 10.0, "seconds a client has to send a whole request head (then 408)"
        ),
        "idle_timeout": Key(
            NUMBER, 60.0, "idle keep-alive client connections are closed after this many seconds"
        ),
        "max_connections": Key(COUNT, 10000, "open client connections at most (then 503)"),
        "preview_port": Key(
            PORT,
            None,
            "every request to this port goes to the candidate held at ready (503 if none)",
            example=47779,
        ),
        "upstream_timeout": Key(
            NUMBER,
            60.0,
            "seconds to wait for each byte of a boot's answer: 504 if no head came, "
            "else the connection is closed (upgrade tunnels are exempt)",
        ),
        "stream_idle_timeout": Key(
            NUMBER, 600.0, "the same wait for server-sent event streams (text/event-stream)"
        ),
        "max_body": Key(
            COUNT, 1024**3, "request bodies larger than this many bytes get 413, not forwarded"
        ),
        "workers": Key(
            one_of(COUNT, literal("auto")),
            1,
            'worker processes that forward (each one core at most); "auto" = one per CPU',
        ),
        "hold_timeout": Key(
            NUMBER,
            None,
            "seconds a new request waits while a dead active boot is replaced (then 503)",
            example=30.0,
            shown="`daemon.startup_timeout`",
        ),
    },
    "registry": {
        "url": Key(
            STR,
            None,
            "SQLAlchemy URL of the registry (default: sqlite:///<state_dir>/registry.db)",
            example="sqlite:///.bgdeploy/registry.db",
            shown="`sqlite:///<state_dir>/registry.db`",
        ),
    },
    "daemon": {
        "command": Key(
            ARGV,
            None,
            "argv of your daemon, never run through a shell; {port}, {boot_id} and {version} "
            "are filled in, and BGDEPLOY_PORT, BGDEPLOY_BOOT_ID, BGDEPLOY_VERSION are set",
            required=True,
            starter=["./mydaemon", "--port", "{port}"],
            example=["./mydaemon", "--port", "{port}"],
        ),
        "env": Key(
            ENV_TABLE,
            {},
            "environment variables for the daemon, over a minimal base that is the same "
            "whoever starts it (CLI, router, cron): PATH (bgdeploy's Python's bin folder, "
            "/usr/local/bin, /usr/bin, /bin), HOME, USER, LOGNAME, LANG=C.UTF-8",
            example={"APP_ENV": "production"},
        ),
        "cwd": Key(
            FILE,
            None,
            "the daemon's working folder (default: the config file's folder)",
            example="app",
            shown="the config file's folder",
        ),
        "health_path": Key(
            URL_PATH,
            "/healthz",
            "this path answers as [health] expects (by default GET, any 2xx) when healthy; "
            'a JSON "version" in the body is checked',
        ),
        "attach_path": Key(
            URL_PATH,
            None,
            'POST {"workspace": "<id>"} here attaches a workspace; unset if not used',
            example="/workspaces",
        ),
        "version_command": Key(
            ARGV,
            None,
            "the installed version is the stripped stdout of this argv (run without a shell)",
            example=["./mydaemon", "--version"],
        ),
        "version_file": Key(
            FILE,
            None,
            "else the stripped content of this file is the installed version",
            starter="VERSION",
            example="VERSION",
        ),
        "port_range": Key(
            PORT_RANGE,
            [17800, 17999],
            "internal ports for boots; keep them below the kernel's ephemeral ports "
            "(/proc/sys/net/ipv4/ip_local_port_range, often 32768-60999), or an outgoing "
            "connection can take one",
        ),
        "startup_timeout": Key(NUMBER, 30.0, "seconds for a new boot to become healthy"),
        "stop_timeout": Key(
            NUMBER, 10.0, "seconds after SIGTERM before the boot's process group gets SIGKILL"
        ),
        "drain_timeout": Key(
            NUMBER, 30.0, "seconds to wait for the in-flight requests of an old boot at most"
        ),
        "crash_window": Key(
            NUMBER,
            10.0,
            "a boot that exits within this many seconds of its start is crash-looping: "
            "restarts back off 0.5 s, 1 s, 2 s ... 30 s",
        ),
    },
    "health": {
        "interval": Key(NUMBER, 1.0, "seconds between health checks of the active boot"),
        "timeout": Key(NUMBER, 2.0, "seconds for one health check"),
        "failure_threshold": Key(
            COUNT, 3, "consecutive failed checks after a switch that roll back at once"
        ),
        "stable_checks": Key(COUNT, 5, "consecutive good checks after a switch that finalize"),
        "startup_interval": Key(NUMBER, 0.1, "seconds between health checks of a starting boot"),
        "method": Key(METHOD, "GET", "the health request's method"),
        "headers": Key(
            HEADERS, {}, "headers sent with each health request", example={"X-Token": "s3cret"}
        ),
        "host": Key(
            STR,
            None,
            "Host header of health requests, for daemons that route by Host",
            example="myapp.local",
        ),
        "expect_status": Key(
            STATUS_SET,
            "200-299",
            'healthy statuses: a code, a range or a list, e.g. [200, 204, "300-399"]',
        ),
        "expect_body": Key(
            BODY_MATCH,
            None,
            'the body must contain this, or match the regular expression after "re:"',
            example='re:"status": ?"ok"',
        ),
    },
    "deploy": {
        "auto_promote": Key(
            BOOL, True, "false: every deploy, automatic ones too, stops at ready for `promote`"
        ),
        "canary": Key(
            CANARY_STEPS,
            [],
            "canary steps before the switch: the candidate gets this share (percent) of new "
            "requests, step by step, judged against the active boot; [] is plain blue/green",
            example=[10, 50],
        ),
        "canary_step": Key(NUMBER, 30.0, "seconds each canary step lasts before its verdict"),
    },
    "analysis": {
        "max_error_ratio": Key(
            RATIO,
            0.05,
            "after a switch (and in each canary step): roll back when 5xx answers are more "
            "than this share of the boot's answers",
        ),
        "min_requests": Key(COUNT, 20, "the fewest answers in the window before a verdict"),
        "max_p99_ratio": Key(
            RATIO_ABOVE_1,
            None,
            "roll back when the new boot's p99 latency is more than this many times the old "
            "boot's (unset: latency is not judged)",
            example=2.0,
        ),
        "window": Key(NUMBER, 30.0, "seconds of traffic each verdict looks at"),
        "max_wait": Key(
            SECONDS_OR_0,
            300.0,
            "seconds after a switch to wait for min_requests answers before finalizing "
            "without a traffic verdict (the finalize event says so); 0: health checks alone "
            "finalize a quiet service",
        ),
    },
    "hooks": {
        "pre_switch": Key(
            ARGV,
            None,
            "argv run before each switch; a non-zero exit (or timeout) aborts the deploy "
            "and keeps the active boot",
            example=["./smoke-test"],
        ),
        "post_switch": Key(
            ARGV, None, "argv run after each switch", example=["./notify", "switched"]
        ),
        "post_rollback": Key(
            ARGV, None, "argv run after each rollback", example=["./notify", "rolled back"]
        ),
        "post_finalize": Key(
            ARGV, None, "argv run after each finalize", example=["./notify", "finalized"]
        ),
        "timeout": Key(NUMBER, 30.0, "seconds a hook may run before its process group is killed"),
    },
}


def default(section: str, key: str) -> Any:
    """The stored form of a key's default (e.g. a float, a tuple)."""
    k = SCHEMA[section][key]
    return None if k.default is None else k.kind.convert(copy.deepcopy(k.default), Path())


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
