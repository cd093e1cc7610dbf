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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from statemachine.exceptions import TransitionNotAllowed

from bgdeploy.errors import BootError, ConfigError, IllegalTransition, RegistryError
from bgdeploy.machine import DeploymentFields, DeploymentMachine
from bgdeploy.registry import migrate
from bgdeploy.registry.models import Boot, Deployment, Event, Quarantine, Workspace, utcnow
from bgdeploy.registry.urls import is_postgres, sqlite_path
from bgdeploy.registry.workspaces import WorkspaceRecords, unattached
from bgdeploy.states import (
    LIVE_BOOT_STATES,
    BootState,
    DeploymentEvent,
    DeploymentState,
)

log = logging.getLogger("bgdeploy.registry")

BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5
_WRITE = "bgdeploy_write"
# The channel a PostgreSQL registry notifies on when a service's route changes;
# the payload is the service name.
ROUTE_CHANNEL = "bgdeploy_route"
# pg_advisory_xact_lock key that serialises port allocation across processes and hosts.
_PORTS_LOCK_KEY = 0x62676470  # "bgdp"


@dataclass(frozen=True)
class TransitionResult:
    applied: bool
    row: DeploymentFields
    message: str
    # A switch or rollback refused because its target boot has not attached these.
    unattached: tuple[str, ...] = ()


def prepare_sqlite_file(path: Path) -> None:
    """Create the registry folder 0700 and the file 0600 before SQLite touches them."""
    folder = path.parent
    if not folder.exists():
        try:
            folder.mkdir(parents=True, mode=0o700)
        except OSError as e:
            raise RegistryError(
                f"Cannot create the state folder {folder}: {e.strerror}.",
                hint="Check its permissions or set state_dir in bgdeploy.toml.",
            ) from None
    if not path.exists():
        try:
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        except OSError as e:
            raise RegistryError(
                f"Cannot create the registry {path}: {e.strerror}.",
                hint="Check the folder's permissions, or set registry.url in bgdeploy.toml.",
            ) from None


def safe_url(url: str) -> str:
    """The URL for messages: its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse has no password to hide
        return url


def libpq_url(url: str) -> str:
    """A PostgreSQL URL as libpq (plain psycopg) takes it: no "+psycopg" driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    if is_postgres(url):
        # pre_ping: after the server restarts, a pooled connection is replaced, not reused.
        try:
            return create_engine(
                url,
                pool_pre_ping=True,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "bgdeploy"},
            )
        except ImportError as e:
            raise ConfigError(
                f"The registry at {safe_url(url)} needs a PostgreSQL driver that is not "
                f"installed ({e.name or e}).",
                hint="Install it with: pip install 'bgdeploy[postgres]' (psycopg 3), and "
                "write the URL as postgresql+psycopg://...",
            ) from None
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's own BEGIN is deferred and too late).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def boot_colour(generation: int) -> str:
    return "blue" if generation % 2 == 1 else "green"


class Registry:
    """The registry of one config. Cheap to create; holds a small connection pool."""

    def __init__(self, url: str, *, auto_migrate: bool = True) -> None:
        self.url = url
        path = sqlite_path(url)
        if path is not None:
            prepare_sqlite_file(path)
        self.engine = make_engine(url)
        self.postgres = self.engine.dialect.name == "postgresql"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False
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
        return RegistryError(
            f"The registry at {self.url} is not a usable SQLite database ({e.orig}).",
            hint="Move the file aside and run `bgdeploy init` to create a new registry.",
        )

    def close(self) -> None:
        self.engine.dispose()

    @property
    def boot_records(self) -> BootRecords:
        return BootRecords(self)

    @property
    def workspaces(self) -> WorkspaceRecords:
        return WorkspaceRecords(self)

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
            raise RegistryError(
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
        return RegistryError(
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
                self._apply_boot_effects(s, ev, before, after)
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

    def record_failure(
        self, service: str, generation: int, state: str, event_name: str, reason: str
    ) -> bool:
        """An attempted step that did not commit (e.g. a rollback whose target could not
        attach a workspace): ``last_error`` and an event say why; the state is unchanged."""
        with self.writing() as s:
            row = self._row(s, service)
            before = DeploymentFields.from_row(row)
            if (before.generation, before.state) != (generation, state):
                return False
            now = utcnow()
            row.last_error, row.updated_ts = reason, now
            s.add(self._event(event_name, before, before, reason, now))
        log.warning("generation %d: %s: %s", generation, event_name, reason)
        return True

    def _apply_boot_effects(
        self, s: Session, ev: DeploymentEvent, before: DeploymentFields, after: DeploymentFields
    ) -> None:
        """Boot states and workspace bindings that follow an event, in the same transaction.

        Demotions run before promotions: the partial unique index allows one active boot.
        A demotion applies only to a live boot: one recorded failed or stopped has no
        process, and never comes back as standby or draining.
        """

        def set_state(boot_id: str | None, state: BootState, only_live: bool = False) -> None:
            if boot_id is None:
                return
            q = update(Boot).where(Boot.boot_id == boot_id)
            if only_live:
                q = q.where(Boot.state.in_([st.value for st in LIVE_BOOT_STATES]))
            values: dict[str, Any] = {"state": state.value}
            if state is BootState.DRAINING:
                values["draining_ts"] = utcnow()
            s.execute(q.values(**values).execution_options(synchronize_session=False))

        if ev is DeploymentEvent.CANDIDATE_READY:
            set_state(before.candidate_boot_id, BootState.HEALTHY, only_live=True)
        elif ev is DeploymentEvent.ABORT:
            set_state(before.candidate_boot_id, BootState.FAILED, only_live=True)
        elif ev is DeploymentEvent.SWITCH:
            set_state(after.old_boot_id, BootState.STANDBY, only_live=True)
            set_state(after.active_boot_id, BootState.ACTIVE)
            self._rebind_workspaces(s, after.service, after.active_boot_id)
        elif ev is DeploymentEvent.FINALIZE:
            set_state(before.old_boot_id, BootState.DRAINING, only_live=True)
        elif ev is DeploymentEvent.ROLLBACK:
            set_state(after.old_boot_id, BootState.DRAINING, only_live=True)
            set_state(after.active_boot_id, BootState.ACTIVE)
            self._rebind_workspaces(s, after.service, after.active_boot_id)
        elif ev is DeploymentEvent.ROLLBACK_DONE and before.old_boot_id:
            failed = s.get(Boot, before.old_boot_id)
            if failed is not None and s.get(Quarantine, (after.service, failed.version)) is None:
                s.add(
                    Quarantine(
                        service=after.service,
                        version=failed.version,
                        generation=after.generation,
                        reason=before.rollback_reason,
                        ts=utcnow(),
                    )
                )

    def _rebind_workspaces(self, s: Session, service: str, boot_id: str | None) -> None:
        if boot_id is not None:
            s.execute(
                update(Workspace)
                .where(Workspace.service == service)
                .values(boot_id=boot_id)
                .execution_options(synchronize_session=False)
            )

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

    def note(self, service: str, event_name: str, reason: str) -> None:
        """Append an event that is not a transition (a hook ran, a pause began) to history,
        under the current generation and state."""
        with self.writing() as s:
            row = DeploymentFields.from_row(self._row(s, service))
            s.add(self._event(event_name, row, row, reason, utcnow()))

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
        with self.reading() as s:
            return list(
                s.scalars(
                    select(Quarantine.version)
                    .where(Quarantine.service == service)
                    .order_by(Quarantine.ts)
                )
            )

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


class BootRecords:
    """Boot rows as the supervisor writes them (ports, pids, exits)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def assign_port(
        self, boot_id: str, port_range: tuple[int, int], is_free: Callable[[int], bool]
    ) -> int:
        """Pick a port no live boot holds and ``is_free`` accepts, and record it, atomically.

        The write transaction serialises allocators across processes, so two boots
        started at the same moment never get the same port.
        """
        with self.registry.writing() as s:
            if self.registry.postgres:
                s.execute(select(func.pg_advisory_xact_lock(_PORTS_LOCK_KEY)))
            taken = set(
                s.scalars(
                    select(Boot.port).where(
                        Boot.port.is_not(None),
                        Boot.boot_id != boot_id,
                        Boot.state.in_([st.value for st in LIVE_BOOT_STATES]),
                    )
                )
            )
            low, high = port_range
            for port in range(low, high + 1):
                if port not in taken and is_free(port):
                    s.execute(update(Boot).where(Boot.boot_id == boot_id).values(port=port))
                    return port
        raise BootError(
            f"No free internal port in {low}-{high} for boot {boot_id}.",
            hint="Widen daemon.port_range in bgdeploy.toml, or stop what holds those ports.",
        )

    def set_process(self, boot_id: str, pid: int, create_time: float, log_path: str) -> None:
        with self.registry.writing() as s:
            s.execute(
                update(Boot)
                .where(Boot.boot_id == boot_id)
                .values(pid=pid, pid_create_time=create_time, log_path=log_path)
            )

    def mark_exited(self, boot_id: str, state: BootState, exit_code: int | None) -> None:
        """A boot's process is gone: record how (stopped by us, or failed) and when."""
        with self.registry.writing() as s:
            s.execute(
                update(Boot)
                .where(Boot.boot_id == boot_id)
                .values(state=state.value, exit_code=exit_code, stopped_ts=utcnow())
            )
