"""A dead active boot: its exit recorded, the router told to hold, the crash loop.

The router holds new requests while ``healing_ts`` is set on the deployment row
(up to ``healing_hold_s``, as a pause does), so a crash costs only the requests
that were in flight on the dead daemon. A boot that exits within
``daemon.crash_window`` of its start is crash-looping: each restart waits
0.5 s, 1 s, 2 s ... up to 30 s (the first exit of a series restarts at once).
Once the wait is longer than ``router.hold_timeout``, the held requests get 503
at once instead of waiting for nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bgdeploy.boots import BootProcesses, log_tail
from bgdeploy.control.app import App
from bgdeploy.registry.models import Boot, Deployment, utcnow
from bgdeploy.timefmt import iso

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
TAIL_LINES = 5


def backoff(exits: int) -> float:
    """The wait before the next start after ``exits`` quick exits in a row."""
    if exits <= 1:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (exits - 2))


@dataclass(frozen=True)
class CrashLoop:
    exits: int
    since: datetime
    next_try: datetime | None
    log_tail: str

    def line(self, now: datetime | None = None) -> str:
        now = now or utcnow()
        span = (now - self.since).total_seconds()
        wait = max(0.0, (self.next_try - now).total_seconds()) if self.next_try else 0.0
        return f"crash-looping: {self.exits} exits in {span:.0f} s, next try in {wait:.1f} s"

    def as_dict(self) -> dict[str, Any]:
        return {
            "exits": self.exits,
            "since": iso(self.since),
            "next_try": iso(self.next_try),
            "line": self.line(),
            "log_tail": self.log_tail,
        }


def crash_loop(row: Deployment) -> CrashLoop | None:
    """The crash loop the row records (two quick exits in a row or more), else None."""
    if not row.crash_exits or row.crash_exits < 2 or row.crash_since_ts is None:
        return None
    tail = row.crash_log_tail or ""
    return CrashLoop(row.crash_exits, row.crash_since_ts, row.crash_next_ts, tail)


def read_crash_loop(app: App) -> CrashLoop | None:
    return crash_loop(app.registry.marks.snapshot(app.service))


def end_healing(app: App) -> None:
    """The route works again (or nothing will take its place): release the held requests."""
    app.registry.marks.end_healing(app.service)


def end_crash_loop(app: App) -> bool:
    """A boot lived past the crash window, or a person deployed: the series starts over."""
    return app.registry.marks.end_crash_loop(app.service)


def record_exit(app: App, sup: BootProcesses, boot: Boot, *, counts: bool = True) -> float:
    """Note a boot's exit in history (status, lifetime, the log's last lines) and, with
    ``counts``, in the crash series; returns the wait before the next start."""
    lifetime = (utcnow() - boot.started_ts).total_seconds()
    tail = log_tail(boot.log_path, TAIL_LINES)

    def describe(delay: float) -> str:
        what = f"boot {boot.boot_id} ({boot.version}) {sup.describe_exit(boot, honest=True)}"
        what += f" after {lifetime:.1f} s"
        if delay:
            what += f"; crash loop: next start in {delay:g} s"
        return what + ("; last log lines:\n" + tail if tail else "")

    if not counts:
        app.registry.note(app.service, "exit", describe(0.0))
        return 0.0
    return app.registry.marks.record_crash(
        app.service,
        started_ts=boot.started_ts,
        crash_window=app.config.daemon.crash_window,
        hold_timeout=app.config.hold_timeout,
        log_tail=tail,
        backoff=backoff,
        describe=describe,
    )


AUTO_DEPLOY = re.compile(r"^auto-deploy (\S+) over (\S+)$")


def note_auto_deploy(app: App, version: str, over: str) -> None:
    """History remembers what an auto-deploy replaced, for a crash loop to go back to."""
    app.registry.note(app.service, "auto-deploy", f"auto-deploy {version} over {over}")


def auto_deployed_over(app: App, version: str) -> str | None:
    """The version that ran before the control loop auto-deployed ``version``; None when
    a person deployed it (a `begin` by another command since), or it is quarantined."""
    reg = app.registry
    for ev in reg.events(app.service):  # newest first
        if ev.event == "begin" and ev.actor_command != reg.actor_command:
            return None
        if ev.event == "auto-deploy":
            m = AUTO_DEPLOY.match(ev.reason or "")
            if m is None or m.group(1) != version or m.group(2) == version:
                return None
            previous = m.group(2)
            return None if previous in reg.quarantined_versions(app.service) else previous
    return None


def quarantine(app: App, version: str, reason: str) -> None:
    reg = app.registry
    reg.intents.add_quarantine(app.service, version, reg.deployment(app.service).generation, reason)


def next_try_in(app: App) -> float:
    """Seconds until the crash loop allows the next start (0: now)."""
    row = app.registry.marks.snapshot(app.service)
    if row.crash_next_ts is None:
        return 0.0
    return max(0.0, (row.crash_next_ts - utcnow()).total_seconds())
