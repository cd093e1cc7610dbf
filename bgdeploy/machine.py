"""The deployment state machine (DESIGN section 2), bound to a deployment row.

The machine decides which events are legal and what each does to the row's
fields. It never touches the database: ``registry.store`` binds it to a copy of
the row inside one write transaction and then applies the result as a
compare-and-set on ``(service, generation, state)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from statemachine import State, StateMachine

from bgdeploy.errors import IllegalTransition
from bgdeploy.states import DeploymentState as S


@dataclass
class DeploymentFields:
    """The mutable fields of one deployment row (the machine's model)."""

    service: str
    generation: int = 0
    state: str = S.IDLE.value
    active_boot_id: str | None = None
    candidate_boot_id: str | None = None
    old_boot_id: str | None = None
    switch_ts: datetime | None = None
    health_fail_streak: int = 0
    health_ok_streak: int = 0
    rollback_reason: str | None = None
    rollback_ts: datetime | None = None
    last_error: str | None = None
    updated_ts: datetime | None = None
    held_ts: datetime | None = None
    canary_weight: int | None = None
    canary_steps: str | None = None
    canary_step: int | None = None
    canary_step_s: float | None = None
    canary_step_ts: datetime | None = None

    @classmethod
    def from_row(cls, row: object) -> DeploymentFields:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DeploymentMachine(StateMachine):
    """idle -> starting -> ready -> switched -> (idle | rolling_back -> idle)."""

    idle = State(initial=True, value=S.IDLE.value)
    starting = State(value=S.STARTING.value)
    ready = State(value=S.READY.value)
    switched = State(value=S.SWITCHED.value)
    rolling_back = State(value=S.ROLLING_BACK.value)

    begin = idle.to(starting)
    candidate_ready = starting.to(ready)
    abort = starting.to(idle) | ready.to(idle)
    switch = ready.to(switched)
    finalize = switched.to(idle)
    rollback = switched.to(rolling_back, validators="has_rollback_target")
    rollback_done = rolling_back.to(idle)

    def has_rollback_target(self, restore_boot_id: str | None = None) -> None:
        if not (restore_boot_id or self.model.old_boot_id):
            raise IllegalTransition(
                f"Generation {self.model.generation} has no old boot to roll back to.",
                hint="Deploy the previous version instead: bgdeploy deploy --version V.",
            )

    def on_begin(self, candidate_boot_id: str) -> None:
        m = self.model
        m.generation += 1
        m.candidate_boot_id = candidate_boot_id
        m.health_fail_streak = m.health_ok_streak = 0
        # The previous generation's outcome stays in the events, not on the row.
        m.rollback_reason = m.rollback_ts = m.last_error = None

    def on_candidate_ready(
        self,
        now: datetime,
        hold: bool = False,
        canary: tuple[tuple[int, ...], float] | None = None,
    ) -> None:
        # A held candidate waits at ready for `promote`; held_ts says since when. A
        # canary is a held candidate with a share of new requests, step by step.
        m = self.model
        m.held_ts = now if hold or canary else None
        _clear_canary(m)
        if canary:
            steps, step_s = canary
            m.canary_steps = ",".join(str(w) for w in steps)
            m.canary_step, m.canary_weight = 0, steps[0]
            m.canary_step_s, m.canary_step_ts = step_s, now

    def on_abort(self, reason: str) -> None:
        self.model.candidate_boot_id = None
        self.model.last_error = reason
        self.model.held_ts = None
        _clear_canary(self.model)

    def on_switch(self, now: datetime) -> None:
        m = self.model
        m.old_boot_id, m.active_boot_id, m.candidate_boot_id = (
            m.active_boot_id,
            m.candidate_boot_id,
            None,
        )
        m.switch_ts = now
        m.held_ts = None
        _clear_canary(m)
        m.health_fail_streak = m.health_ok_streak = 0

    def on_finalize(self) -> None:
        self.model.old_boot_id = None

    def on_rollback(self, reason: str, now: datetime, restore_boot_id: str | None = None) -> None:
        """active = the old boot (or a fresh boot of its version); old = the failed boot."""
        m = self.model
        failed = m.active_boot_id
        m.active_boot_id = restore_boot_id or m.old_boot_id
        m.old_boot_id = failed
        m.rollback_reason = reason
        m.rollback_ts = now

    def on_rollback_done(self) -> None:
        self.model.old_boot_id = None


def _clear_canary(m: DeploymentFields) -> None:
    m.canary_weight = m.canary_steps = m.canary_step = None
    m.canary_step_s = m.canary_step_ts = None
