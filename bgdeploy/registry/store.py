"""Registry access: engine set-up, fenced transitions, boots, workspaces, events.

Every unit of work is one transaction. On SQLite, writes open with ``BEGIN
IMMEDIATE`` so that two processes never both read a row and then race to upgrade
to a write lock (SQLite would answer the loser with "database is locked" at once,
without waiting); with the busy timeout, writers simply queue.

On PostgreSQL, a transition locks its service's deployment row (``SELECT ... FOR
UPDATE``) before reading it: writers of one service queue on that row exactly as
SQLite writers queue on the file, and other services' writers do not wait at all.
Serializable isolation would give the same answers but turn every collision into a
retry; under the racing test's 8 writers on one row that is most of them, while a
row lock just waits its turn. A switch's commit also sends ``NOTIFY bgdeploy_route``
so routers that ``LISTEN`` see it at once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from statemachine.exceptions import TransitionNotAllowed

from bgdeploy.errors import IllegalTransition, RegistryError
from bgdeploy.faults import registry_fault
from bgdeploy.machine import DeploymentFields, DeploymentMachine
from bgdeploy.registry import engine as sqlite_files
from bgdeploy.registry import migrate
from bgdeploy.registry.boots import BootRecords, apply_boot_effects
from bgdeploy.registry.engine import WRITE, make_engine, prepare_sqlite_file, safe_url
from bgdeploy.registry.intent import IntentRecords
from bgdeploy.registry.marks import RowMarks
from bgdeploy.registry.models import Boot, Deployment, Event, utcnow
from bgdeploy.registry.replicas import ReplicaRecords
from bgdeploy.registry.routers import RouterRecords
from bgdeploy.registry.urls import sqlite_path
from bgdeploy.registry.workspaces import WorkspaceRecords, unattached
from bgdeploy.states import (
    LIVE_BOOT_STATES,
    BootState,
    DeploymentEvent,
    DeploymentState,
)

log = logging.getLogger("bgdeploy.registry")

# The channel a PostgreSQL registry notifies on when a service's route changes;
# the payload is the service name.
ROUTE_CHANNEL = "bgdeploy_route"


@dataclass(frozen=True)
class TransitionResult:
    applied: bool
    row: DeploymentFields
    message: str
    # A switch or rollback refused because its target boot has not attached these.
    unattached: tuple[str, ...] = ()


def boot_colour(generation: int) -> str:
    return "blue" if generation % 2 == 1 else "green"


class Registry:
    """The registry of one config. Cheap to create; holds a small connection pool."""

    def __init__(self, url: str, *, auto_migrate: bool = True) -> None:
        self.url = url
        path = self._sqlite = sqlite_path(url)
        if path is not None:
            prepare_sqlite_file(path)
        self.engine = make_engine(url)
        self.postgres = self.engine.dialect.name == "postgresql"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(**{WRITE: True}), expire_on_commit=False
        )
        self.actor_pid = os.getpid()
        program = Path(sys.argv[0]).name
        program = "bgdeploy" if program == "__main__.py" else program  # python -m bgdeploy
        self.actor_command = " ".join([program, *sys.argv[1:]])[:500]
        try:
            if auto_migrate:
                migrate.ensure_head(self.engine, path)
            else:
                migrate.check_head(self.engine)
        except OperationalError as e:
            if not self.postgres:
                raise self._not_sqlite(e) from None
            self.engine.dispose()
            raise RegistryError(
                f"Cannot reach the registry at {safe_url(url)} ({_first_line(e.orig)}).",
                hint="Check the host, port, user and password in registry.url, and that "
                "the PostgreSQL server is running.",
            ) from None
        except DatabaseError as e:
            if self.postgres:
                raise self._unusable("read", e) from None
            raise self._not_sqlite(e) from None

    def _not_sqlite(self, e: DatabaseError) -> RegistryError:
        return registry_fault(str(e.orig), self.url) or RegistryError(
            f"The registry at {self.url} is not a usable SQLite database ({e.orig}).",
            hint="Move the file aside and run `bgdeploy init` to create a new registry.",
        )

    def close(self) -> None:
        self.engine.dispose()

    def change_hint(self) -> tuple[int, ...] | None:
        """See ``engine.sqlite_change_hint``; None on PostgreSQL: read the rows there."""
        return None if self._sqlite is None else sqlite_files.sqlite_change_hint(self._sqlite)

    @property
    def boot_records(self) -> BootRecords:
        return BootRecords(self)

    @property
    def replicas(self) -> ReplicaRecords:
        return ReplicaRecords(self)

    @property
    def workspaces(self) -> WorkspaceRecords:
        return WorkspaceRecords(self)

    @property
    def intents(self) -> IntentRecords:
        return IntentRecords(self)

    @property
    def marks(self) -> RowMarks:
        return RowMarks(self)

    @property
    def routers(self) -> RouterRecords:
        return RouterRecords(self)

    # -- units of work -------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Session]:
        try:
            with self._read.begin() as session:
                yield session
        except DatabaseError as e:
            raise self._unusable("read", e) from None

    @contextmanager
    def writing(self) -> Iterator[Session]:
        try:
            with self._write.begin() as session:
                yield session
        except OperationalError as e:
            if self.postgres:
                raise self._unreachable(e) from None
            raise registry_fault(str(e.orig), self.url) or RegistryError(
                f"The registry could not be written ({e.orig}).",
                hint="Another process may hold it for longer than the busy timeout; retry.",
            ) from None
        except IntegrityError:
            raise  # a fenced transition turns this into a no-op
        except DatabaseError as e:
            raise self._unusable("written", e) from None

    def route_changed(self, s: Session, service: str) -> None:
        """Tell PostgreSQL routers to read the route again (the active boot, a held
        candidate, pause, maintenance, healing): delivered when, and only if, the
        transaction of ``s`` commits. SQLite routers see the commit itself."""
        if self.postgres:
            s.execute(select(func.pg_notify(ROUTE_CHANNEL, service)))

    def _unreachable(self, e: DatabaseError) -> RegistryError:
        return RegistryError(
            f"Lost the registry at {safe_url(self.url)} ({_first_line(e.orig)}).",
            hint="Nothing half-done is kept: once the server is back, `bgdeploy reconcile` "
            "finishes or undoes an interrupted deploy.",
        )

    def _unusable(self, verb: str, e: DatabaseError) -> RegistryError:
        if self.postgres and isinstance(e, OperationalError):
            return self._unreachable(e)
        fault = None if self.postgres else registry_fault(_first_line(e.orig), self.url)
        return fault or RegistryError(
            f"The registry at {safe_url(self.url)} could not be {verb} ({_first_line(e.orig)}).",
            hint="Run `bgdeploy doctor`; a damaged file can be moved aside and "
            "recreated with `bgdeploy init`.",
        )

    # -- deployments ---------------------------------------------------------------

    def deployment(self, service: str) -> DeploymentFields:
        with self.reading() as s:
            row = s.get(Deployment, service)
            if row is not None:
                return DeploymentFields.from_row(row)
        with self.writing() as s:
            return DeploymentFields.from_row(self._row(s, service))

    def locked_deployment(self, s: Session, service: str) -> DeploymentFields:
        """Inside ``writing()``: the row as it stands, held against transitions until the
        unit of work ends."""
        return DeploymentFields.from_row(self._row(s, service))

    def _row(self, s: Session, service: str) -> Deployment:
        """The service's deployment row, created if missing; on PostgreSQL locked for
        the rest of the transaction (on SQLite, BEGIN IMMEDIATE already holds the file)."""
        if self.postgres:
            s.execute(
                pg_insert(Deployment)
                .values(service=service, state=DeploymentState.IDLE.value, updated_ts=utcnow())
                .on_conflict_do_nothing(index_elements=["service"])
            )
            return s.get(Deployment, service, with_for_update=True, populate_existing=True)
        row = s.get(Deployment, service)
        if row is None:
            row = Deployment(
                service=service, generation=0, state=DeploymentState.IDLE.value, updated_ts=utcnow()
            )
            s.add(row)
            s.flush()
        return row

    def transition(
        self,
        service: str,
        event_name: DeploymentEvent | str,
        *,
        generation: int,
        state: DeploymentState | str | None = None,
        reason: str | None = None,
        version: str | None = None,
        restore_boot_id: str | None = None,
        hold: bool = False,
        canary: tuple[tuple[int, ...], float] | None = None,
    ) -> TransitionResult:
        """Apply one event as a compare-and-set on (service, generation, state).

        A stale generation or state is a no-op that returns the current row. An
        event the machine does not allow from the current state raises
        ``IllegalTransition`` and writes nothing.
        """
        ev = DeploymentEvent(event_name)
        try:
            with self.writing() as s:
                row = self._row(s, service)
                before = DeploymentFields.from_row(row)
                if before.generation != generation or (state is not None and before.state != state):
                    return TransitionResult(False, before, _stale(ev, generation, state, before))
                after = DeploymentFields.from_row(row)
                now = utcnow()
                params: dict[str, Any] = {
                    "now": now,
                    "reason": reason,
                    "restore_boot_id": restore_boot_id,
                    "hold": hold,
                    "canary": canary,
                }
                if ev is DeploymentEvent.BEGIN:
                    if version is None:
                        raise ValueError("begin needs the candidate's version")
                    params["candidate_boot_id"] = self._new_boot(
                        s, service, before.generation + 1, version
                    )
                machine = DeploymentMachine(model=after, state_field="state")
                try:
                    machine.send(ev.value, **params)
                except TransitionNotAllowed:
                    raise IllegalTransition(
                        f"Cannot {ev.value.replace('_', ' ')} while the deployment is "
                        f"{before.state} (generation {before.generation})."
                    ) from None
                after.updated_ts = now
                missing = self._unattached_target(s, ev, after)
                if missing:
                    return TransitionResult(
                        False,
                        before,
                        f"{ev.value} refused: {after.active_boot_id} has not attached "
                        f"{', '.join(missing)}",
                        unattached=tuple(missing),
                    )
                apply_boot_effects(s, ev, before, after)
                changes = {k: v for k, v in after.as_dict().items() if k != "service"}
                res = s.execute(
                    update(Deployment)
                    .where(
                        Deployment.service == service,
                        Deployment.generation == before.generation,
                        Deployment.state == before.state,
                    )
                    .values(**changes)
                    .execution_options(synchronize_session=False)
                )
                if (
                    res.rowcount != 1
                ):  # pragma: no cover - unreachable under the row lock / BEGIN IMMEDIATE
                    s.rollback()
                    return TransitionResult(False, before, "the row changed under us")
                s.add(self._event(ev.value, before, after, reason, now))
                self.route_changed(s, service)
        except IntegrityError:
            current = self.deployment(service)
            return TransitionResult(
                False,
                current,
                f"{ev.value} was already recorded for generation {generation}; nothing changed.",
            )
        log.info(
            "generation %d: %s -> %s (%s)",
            after.generation,
            before.state,
            after.state,
            _describe(after),
        )
        return TransitionResult(True, after, f"{before.state} -> {after.state}")

    def record_health(self, service: str, generation: int, ok: bool) -> TransitionResult:
        """While switched: one health check of the active boot updates the streaks."""
        with self.writing() as s:
            row = self._row(s, service)
            before = DeploymentFields.from_row(row)
            if before.generation != generation or before.state != DeploymentState.SWITCHED:
                return TransitionResult(
                    False, before, _stale("health", generation, DeploymentState.SWITCHED, before)
                )
            fail = 0 if ok else before.health_fail_streak + 1
            good = before.health_ok_streak + 1 if ok else 0
            s.execute(
                update(Deployment)
                .where(
                    Deployment.service == service,
                    Deployment.generation == generation,
                    Deployment.state == DeploymentState.SWITCHED.value,
                )
                .values(health_fail_streak=fail, health_ok_streak=good, updated_ts=utcnow())
                .execution_options(synchronize_session=False)
            )
            before.health_fail_streak, before.health_ok_streak = fail, good
            return TransitionResult(True, before, "ok" if ok else f"fail streak {fail}")

    def create_boot(self, service: str, generation: int, version: str) -> str:
        """A new boot row (state starting) outside a transition: e.g. a fresh boot of
        the old version before a rollback whose old boot died."""
        with self.writing() as s:
            self._row(s, service)  # boot ids of one service are chosen one at a time
            return self._new_boot(s, service, generation, version)

    def _new_boot(self, s: Session, service: str, generation: int, version: str) -> str:
        prefix = "" if service == "default" else f"{service}-"
        base = f"{prefix}{boot_colour(generation)}-{generation}"
        boot_id, n = base, 1
        while s.get(Boot, boot_id) is not None:
            n += 1
            boot_id = f"{base}.{n}"
        s.add(
            Boot(
                boot_id=boot_id,
                service=service,
                generation=generation,
                version=version,
                state=BootState.STARTING.value,
                started_ts=utcnow(),
            )
        )
        s.flush()
        return boot_id

    def _unattached_target(
        self, s: Session, ev: DeploymentEvent, after: DeploymentFields
    ) -> list[str]:
        """Invariant 4: a switch or rollback moves every binding to the new active boot,
        so that boot must have attached every workspace first."""
        if ev not in (DeploymentEvent.SWITCH, DeploymentEvent.ROLLBACK) or not after.active_boot_id:
            return []
        return unattached(s, after.service, after.active_boot_id)

    def _event(
        self,
        name: str,
        before: DeploymentFields,
        after: DeploymentFields,
        reason: str | None,
        now: datetime,
    ) -> Event:
        return Event(
            service=after.service,
            generation=after.generation,
            event=name,
            from_state=before.state,
            to_state=after.state,
            active_boot_id=after.active_boot_id,
            candidate_boot_id=after.candidate_boot_id or before.candidate_boot_id,
            old_boot_id=after.old_boot_id,
            reason=reason,
            actor_pid=self.actor_pid,
            actor_command=self.actor_command,
            ts=now,
        )

    def note(
        self,
        service: str,
        event_name: str,
        reason: str,
        *,
        fence: tuple[int, str] | None = None,
        last_error: bool = False,
    ) -> bool:
        """Append an event that is not a transition (a hook ran, a pause began, a step that
        did not commit) to history, under the current generation and state. With ``fence``
        (generation, state) only while the row is still there (False otherwise); with
        ``last_error`` the reason is also the row's ``last_error``."""
        with self.writing() as s:
            row = self._row(s, service)
            if fence is not None and (row.generation, row.state) != fence:
                return False
            if last_error:
                row.last_error, row.updated_ts = reason, utcnow()
            self.note_in(s, service, event_name, reason, row)
        if last_error:
            log.warning("generation %d: %s: %s", row.generation, event_name, reason)
        return True

    def note_in(
        self,
        s: Session,
        service: str,
        event_name: str,
        reason: str,
        row: Deployment | None = None,
    ) -> None:
        """``note`` inside the caller's transaction: a change and its event commit together."""
        fields = DeploymentFields.from_row(row if row is not None else self._row(s, service))
        s.add(self._event(event_name, fields, fields, reason, utcnow()))

    def services(self) -> list[str]:
        """Every service the registry holds a deployment for, by name."""
        with self.reading() as s:
            return list(s.scalars(select(Deployment.service).order_by(Deployment.service)))

    # -- events and quarantine -----------------------------------------------------------

    def events(self, service: str, limit: int | None = None) -> list[Event]:
        """Newest first."""
        with self.reading() as s:
            q = select(Event).where(Event.service == service).order_by(Event.id.desc())
            if limit is not None:
                q = q.limit(limit)
            return list(s.scalars(q))

    def quarantined_versions(self, service: str) -> list[str]:
        return [q.version for q in self.intents.quarantine(service)]

    # -- boots ---------------------------------------------------------------------------

    def boot(self, boot_id: str | None) -> Boot | None:
        if boot_id is None:
            return None
        with self.reading() as s:
            return s.get(Boot, boot_id)

    def boots(self, service: str, *, live_only: bool = False) -> list[Boot]:
        with self.reading() as s:
            q = select(Boot).where(Boot.service == service).order_by(Boot.started_ts)
            if live_only:
                q = q.where(Boot.state.in_([st.value for st in LIVE_BOOT_STATES]))
            return list(s.scalars(q))


def _first_line(e: object) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _stale(ev: object, generation: int, state: object, current: DeploymentFields) -> str:
    want = f"generation {generation}" + (f" in state {state}" if state is not None else "")
    return (
        f"{ev} is a no-op: it was for {want}, but the registry holds generation "
        f"{current.generation} in state {current.state}."
    )


def _describe(row: DeploymentFields) -> str:
    parts = [f"{row.active_boot_id} active" if row.active_boot_id else "no active boot"]
    if row.candidate_boot_id:
        parts.append(f"{row.candidate_boot_id} candidate")
    if row.old_boot_id:
        parts.append(f"{row.old_boot_id} old")
    return ", ".join(parts)
