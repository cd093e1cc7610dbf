"""The desired state of a service: operator intent and quarantine, with their history.

Operator commands write it (``deploy --version`` pins, ``rollback`` records the
version rolled back to and quarantines the one rolled back from, ``down``/``up``
say whether the service should run, ``unpin`` follows the installed version again);
every automatic actor reads it through ``control.decide``. Each change and its
history event share one transaction. Quarantine is written and lifted here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from bgdeploy.registry.models import Intent, Quarantine, utcnow

if TYPE_CHECKING:
    from bgdeploy.registry.store import Registry

INSTALLED = "installed"
PINNED = "pinned"
ROLLED_BACK = "rolled_back"
UP = "up"
DOWN = "down"


@dataclass(frozen=True)
class IntentView:
    """What should run: a plain copy of the intent row (defaults when none was written)."""

    run: str = UP
    run_ts: datetime | None = None
    run_by: str | None = None
    mode: str = INSTALLED
    version: str | None = None
    reason: str | None = None
    mode_ts: datetime | None = None
    mode_by: str | None = None
    installed_seen: str | None = None
    replicas: int | None = None  # `bgdeploy scale N`; None: daemon.replicas

    @classmethod
    def of(cls, row: Intent | None) -> IntentView:
        if row is None:
            return cls()
        return cls(
            row.run,
            row.run_ts,
            row.run_by,
            row.mode,
            row.version,
            row.reason,
            row.mode_ts,
            row.mode_by,
            row.installed_seen,
            row.replicas,
        )

    @property
    def down(self) -> bool:
        return self.run == DOWN

    def describe(self) -> str:
        """The version intent in a few words, for status and the decision's sentence."""
        if self.mode == PINNED:
            return f"{self.version} is pinned by {self.reason or 'deploy --version'}"
        if self.mode == ROLLED_BACK:
            return f"{self.version} is rolled back by operator ({self.reason or 'no reason given'})"
        return "following the installed version"


@dataclass(frozen=True)
class QuarantineEntry:
    version: str
    reason: str | None
    generation: int
    ts: datetime


class IntentRecords:
    """Reads and writes the intent row and the quarantine of one registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # -- reading ---------------------------------------------------------------------------

    def read(self, service: str) -> IntentView:
        with self.registry.reading() as s:
            return IntentView.of(s.get(Intent, service))

    def quarantine(self, service: str) -> list[QuarantineEntry]:
        with self.registry.reading() as s:
            rows = s.scalars(
                select(Quarantine).where(Quarantine.service == service).order_by(Quarantine.ts)
            )
            return [QuarantineEntry(q.version, q.reason, q.generation, q.ts) for q in rows]

    # -- writing ---------------------------------------------------------------------------

    def pin(self, service: str, version: str, installed: str | None, by: str) -> None:
        """``deploy --version V`` switched to V: V stays until a new installed version,
        ``deploy`` without --version, or ``unpin``."""
        with self.registry.writing() as s:
            self._set_mode(s, service, PINNED, version, by, installed, by)
            self._run_up(s, service, by)
            self.registry.note_in(s, service, "pin", f"{version} pinned by {by}")

    def rolled_back(
        self,
        service: str,
        *,
        to_version: str,
        from_version: str | None,
        reason: str,
        installed: str | None,
        generation: int,
    ) -> None:
        """An operator rolled back to ``to_version``: it stays, and the version rolled back
        from is quarantined with the operator's reason, until a new installed version."""
        by = self.registry.actor_command
        with self.registry.writing() as s:
            self._set_mode(s, service, ROLLED_BACK, to_version, reason, installed, by)
            self._run_up(s, service, by)
            if from_version is not None and from_version != to_version:
                quarantine_in(s, service, from_version, generation, f"operator: {reason}")
            self.registry.note_in(
                s,
                service,
                "operator_rollback",
                f"rolled back to {to_version}"
                + (f" from {from_version}" if from_version else "")
                + f" by operator: {reason}",
            )

    def follow_installed(self, service: str, event: str, why: str, *, run: bool = False) -> bool:
        """Back to following the installed version (``unpin``, a plain ``deploy``, or a new
        installed version ended a pin); with ``run``, an operator also started the service.
        False when nothing changed."""
        by = self.registry.actor_command
        with self.registry.writing() as s:
            row = _intent_row(s, service)
            started = self._run_up(s, service, by) if run else False
            if row.mode == INSTALLED:
                return started
            self._set_mode(s, service, INSTALLED, None, None, None, self.registry.actor_command)
            self.registry.note_in(s, service, event, why)
            return True

    def _run_up(self, s: Session, service: str, by: str) -> bool:
        """An operator deploy or rollback also means "run": it ends a `down`."""
        row = _intent_row(s, service)
        if row.run == UP:
            return False
        row.run, row.run_ts, row.run_by = UP, utcnow(), by
        self.registry.note_in(s, service, UP, f"{by} started the service")
        return True

    def set_run(self, service: str, run: str, why: str) -> bool:
        """``down`` or ``up``; False when it already was."""
        with self.registry.writing() as s:
            row = _intent_row(s, service)
            if row.run == run:
                return False
            row.run, row.run_ts, row.run_by = run, utcnow(), self.registry.actor_command
            self.registry.note_in(s, service, run, why)
            return True

    def set_replicas(self, service: str, count: int, why: str) -> None:
        """``bgdeploy scale N``: every boot from now on is a set of ``count``."""
        with self.registry.writing() as s:
            row = _intent_row(s, service)
            row.replicas = count
            self.registry.note_in(s, service, "scale", why)

    def add_quarantine(self, service: str, version: str, generation: int, reason: str) -> None:
        with self.registry.writing() as s:
            quarantine_in(s, service, version, generation, reason)
            self.registry.note_in(s, service, "quarantine", f"{version}: {reason}")

    def lift_quarantine(self, service: str, version: str, why: str) -> bool:
        with self.registry.writing() as s:
            q = s.get(Quarantine, (service, version))
            if q is None:
                return False
            s.delete(q)
            self.registry.note_in(s, service, "unquarantine", f"{version}: {why}")
            return True

    def _set_mode(
        self,
        s: Session,
        service: str,
        mode: str,
        version: str | None,
        reason: str | None,
        installed: str | None,
        by: str,
    ) -> None:
        row = _intent_row(s, service)
        row.mode, row.version, row.reason = mode, version, reason
        row.installed_seen, row.mode_ts, row.mode_by = installed, utcnow(), by


def _intent_row(s: Session, service: str) -> Intent:
    row = s.get(Intent, service)
    if row is None:
        row = Intent(service=service, run=UP, mode=INSTALLED)
        s.add(row)
        s.flush()
    return row


def quarantine_in(
    s: Session, service: str, version: str, generation: int, reason: str | None
) -> None:
    """Quarantine ``version`` inside the caller's transaction (a rollback_done, an operator
    rollback, a crash-looping auto-deploy); the first reason is kept."""
    if s.get(Quarantine, (service, version)) is None:
        s.add(
            Quarantine(
                service=service, version=version, generation=generation, reason=reason, ts=utcnow()
            )
        )
