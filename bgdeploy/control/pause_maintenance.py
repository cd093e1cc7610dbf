"""Pause and maintenance: operator switches the router follows from the registry.

They live on the deployment row (so every router worker, and a router that
reloads, reads them with the route) but they are not deploy transitions: a deploy
may run while paused, and maintenance stays on across deploys. Each change is
recorded in history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bgdeploy.control.app import App
from bgdeploy.registry.models import utcnow
from bgdeploy.timefmt import iso

DEFAULT_PAUSE_MAX_S = 30.0
DEFAULT_RETRY_AFTER_S = 60
DEFAULT_MAINTENANCE_MESSAGE = "This service is down for maintenance. Please try again shortly."


@dataclass(frozen=True)
class Controls:
    paused_ts: datetime | None
    pause_max_s: float | None
    maintenance_ts: datetime | None
    maintenance_message: str | None
    maintenance_retry_after: int | None

    def as_dict(self) -> dict[str, object]:
        return {
            "pause": None
            if self.paused_ts is None
            else {"since": iso(self.paused_ts), "max_seconds": self.pause_max_s},
            "maintenance": None
            if self.maintenance_ts is None
            else {
                "since": iso(self.maintenance_ts),
                "message": self.maintenance_message,
                "retry_after": self.maintenance_retry_after,
            },
        }


def read_controls(app: App) -> Controls:
    row = app.registry.marks.snapshot(app.service)
    return Controls(
        row.paused_ts,
        row.pause_max_s,
        row.maintenance_ts,
        row.maintenance_message,
        row.maintenance_retry_after,
    )


def pause(app: App, max_s: float = DEFAULT_PAUSE_MAX_S) -> str:
    """Hold new requests in the router for up to ``max_s``; then they get 503."""
    before = read_controls(app)
    app.registry.marks.set_controls(
        app.service,
        "pause",
        f"new requests held, for at most {max_s:g}s",
        paused_ts=before.paused_ts or utcnow(),
        pause_max_s=max_s,
    )
    verb = "still paused" if before.paused_ts else "paused"
    return (
        f"Router {verb}: new requests are held, not forwarded, for at most {max_s:g}s "
        "(then 503). `bgdeploy resume` releases them in order."
    )


def resume(app: App) -> str:
    before = read_controls(app)
    if before.paused_ts is None:
        return "Not paused: nothing to resume."
    held_for = (utcnow() - before.paused_ts).total_seconds()
    app.registry.marks.set_controls(
        app.service,
        "resume",
        f"held requests released after {held_for:.1f}s",
        paused_ts=None,
        pause_max_s=None,
    )
    return f"Resumed after {held_for:.1f}s: held requests go to the active boot in order."


def maintenance_on(
    app: App,
    message: str | None = None,
    retry_after: int = DEFAULT_RETRY_AFTER_S,
) -> str:
    before = read_controls(app)
    text = message or DEFAULT_MAINTENANCE_MESSAGE
    app.registry.marks.set_controls(
        app.service,
        "maintenance_on",
        f"{text} (Retry-After: {retry_after})",
        maintenance_ts=before.maintenance_ts or utcnow(),
        maintenance_message=text,
        maintenance_retry_after=retry_after,
    )
    return f"Maintenance on: every new request gets 503 with Retry-After: {retry_after}."


def maintenance_off(app: App) -> str:
    before = read_controls(app)
    if before.maintenance_ts is None:
        return "Maintenance was not on: nothing to do."
    app.registry.marks.set_controls(
        app.service,
        "maintenance_off",
        "requests are forwarded again",
        maintenance_ts=None,
        maintenance_message=None,
        maintenance_retry_after=None,
    )
    return "Maintenance off: requests are forwarded again."
