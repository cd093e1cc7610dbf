"""Marks on the deployment row that are not deploy transitions: the operator controls
the router follows (pause, maintenance) and crash recovery (healing, the crash series).

Each change commits with its history event and, where the router follows it, with
the route notification, in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bgdeploy.registry.models import Deployment, utcnow

if TYPE_CHECKING:
    from bgdeploy.registry.store import Registry

CONTROL_FIELDS = frozenset(
    {
        "paused_ts",
        "pause_max_s",
        "maintenance_ts",
        "maintenance_message",
        "maintenance_retry_after",
    }
)
CRASH_FIELDS = ("crash_exits", "crash_since_ts", "crash_next_ts", "crash_log_tail")


class RowMarks:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def snapshot(self, service: str) -> Deployment:
        """The row as it stands (detached), created on first use."""
        self.registry.deployment(service)
        with self.registry.reading() as s:
            row = s.get(Deployment, service)
            assert row is not None
            return row

    def set_controls(self, service: str, event: str, reason: str, **values: object) -> None:
        """Pause/resume or maintenance on/off, with its event; routers follow it."""
        unknown = set(values) - CONTROL_FIELDS
        if unknown:
            raise ValueError(f"not operator controls: {sorted(unknown)}")
        reg = self.registry
        with reg.writing() as s:
            row = reg._row(s, service)
            for name, value in values.items():
                setattr(row, name, value)
            reg.note_in(s, service, event, reason, row)
            reg.route_changed(s, service)

    def next_canary_step(self, service: str, generation: int, step: int, reason: str) -> bool:
        """Fenced like a transition (this generation, at ready, with a canary): the
        candidate's share becomes the weight of ``step``; with its event. False: stale."""
        reg = self.registry
        with reg.writing() as s:
            row = reg._row(s, service)
            if (
                row.generation != generation
                or row.state != "ready"
                or not row.canary_steps
                or row.canary_step != step - 1
            ):
                return False
            steps = [int(w) for w in row.canary_steps.split(",")]
            row.canary_step, row.canary_weight = step, steps[step]
            row.canary_step_ts = utcnow()
            reg.note_in(s, service, "canary_step", reason, row)
            reg.route_changed(s, service)
            return True

    def withdraw_canary_share(self, service: str, generation: int) -> bool:
        """A failed canary's candidate gets no new request from now (before it is
        stopped); fenced like next_canary_step. False: stale."""
        reg = self.registry
        with reg.writing() as s:
            row = reg._row(s, service)
            if row.generation != generation or row.state != "ready" or not row.canary_weight:
                return False
            row.canary_weight = 0
            reg.route_changed(s, service)
            return True

    def end_healing(self, service: str) -> bool:
        """The route works again (or nothing will take its place): release held requests."""
        reg = self.registry
        with reg.writing() as s:
            row = s.get(Deployment, service)
            if row is None or row.healing_ts is None:
                return False
            row.healing_ts = None
            row.healing_hold_s = None
            reg.route_changed(s, service)
            return True

    def end_crash_loop(self, service: str) -> bool:
        """A boot lived past the crash window, or a person deployed: the series starts over."""
        with self.registry.writing() as s:
            row = s.get(Deployment, service)
            if row is None or not row.crash_exits:
                return False
            for name in CRASH_FIELDS:
                setattr(row, name, None)
            return True

    def record_crash(
        self,
        service: str,
        *,
        started_ts: datetime,
        crash_window: float,
        hold_timeout: float,
        log_tail: str,
        backoff: Callable[[int], float],
        describe: Callable[[float], str],
    ) -> float:
        """One exit of the active boot: the crash series (exits within ``crash_window`` of
        their start, in a row), the router's hold, and the ``exit`` event, together.
        Returns the wait before the next start."""
        reg = self.registry
        now = utcnow()
        with reg.writing() as s:
            row = reg._row(s, service)
            quick = (now - started_ts).total_seconds() < crash_window
            exits = (row.crash_exits or 0) + 1 if quick else 1
            delay = backoff(exits) if quick else 0.0
            row.crash_exits = exits
            if exits == 1 or row.crash_since_ts is None:
                row.crash_since_ts = started_ts
            row.crash_next_ts = now + timedelta(seconds=delay)
            row.crash_log_tail = log_tail
            if row.healing_ts is None:
                row.healing_ts = now
            # Held requests wait only for a start that comes within router.hold_timeout.
            row.healing_hold_s = hold_timeout if delay <= hold_timeout else 0
            reg.note_in(s, service, "exit", describe(delay), row)
            reg.route_changed(s, service)
        return delay
