"""Every bgdeploy.toml key, once: its kind, default and one line of help (``SCHEMA``).

The section dataclasses in ``config.py`` take their defaults from it, ``bgdeploy init``
writes its starter file from it, and the README's configuration table is made from it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgdeploy.config_kinds import (
    ARGV,
    BODY_MATCH,
    BOOL,
    CANARY_STEPS,
    COUNT,
    ENV_TABLE,
    FILE,
    HEADERS,
    METHOD,
    NUMBER,
    PORT,
    PORT_RANGE,
    RATIO,
    RATIO_ABOVE_1,
    SECONDS_OR_0,
    SERVICE,
    STATUS_SET,
    STR,
    URL_PATH,
    Kind,
    literal,
    one_of,
)


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
        "replicas": Key(
            one_of(COUNT, literal("auto")),
            1,
            "daemon processes per boot, each on its own port, balanced by the router; "
            '"auto" = one per CPU; `bgdeploy scale N` changes it without a deploy',
        ),
        "min_ready": Key(
            COUNT,
            None,
            "healthy replicas a boot needs to be ready, and to count as healthy after the "
            "switch; unset = every replica",
            example=1,
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
