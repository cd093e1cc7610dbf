"""Typed SQLAlchemy 2 models. Alembic migrations own the schema built from these."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from bgdeploy.states import BootState, DeploymentState

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC in SQLite and hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Deployment(Base):
    """One row per service: where its deploy stands. Changed only by fenced transitions."""

    __tablename__ = "deployments"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=DeploymentState.IDLE.value)
    active_boot_id: Mapped[str | None] = mapped_column(ForeignKey("boots.boot_id"))
    candidate_boot_id: Mapped[str | None] = mapped_column(ForeignKey("boots.boot_id"))
    old_boot_id: Mapped[str | None] = mapped_column(ForeignKey("boots.boot_id"))
    switch_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    health_fail_streak: Mapped[int] = mapped_column(Integer, default=0)
    health_ok_streak: Mapped[int] = mapped_column(Integer, default=0)
    rollback_reason: Mapped[str | None] = mapped_column(Text)
    rollback_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set while a deploy held at `ready` waits for `bgdeploy promote` (or abort).
    held_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Canary steps (a held candidate with a share of new requests): the share in
    # percent the router sends it now, the steps ("10,50"), the index of the current
    # one, seconds per step and when the current step began. NULL without a canary.
    canary_weight: Mapped[int | None] = mapped_column(Integer)
    canary_steps: Mapped[str | None] = mapped_column(String(64))
    canary_step: Mapped[int | None] = mapped_column(Integer)
    canary_step_s: Mapped[float | None] = mapped_column()
    canary_step_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Operator controls the router follows. They are not deploy transitions: set and
    # cleared by `pause`/`resume` and `maintenance on/off`, whatever the state.
    paused_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pause_max_s: Mapped[float | None] = mapped_column()
    maintenance_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    maintenance_message: Mapped[str | None] = mapped_column(Text)
    maintenance_retry_after: Mapped[int | None] = mapped_column(Integer)
    # Crash recovery (control/crashes.py): set while the active boot is dead and a
    # replacement starts, so the router holds new requests (up to healing_hold_s).
    healing_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    healing_hold_s: Mapped[float | None] = mapped_column()
    # The crash loop: exits within daemon.crash_window of their start, in a row.
    crash_exits: Mapped[int | None] = mapped_column(Integer)
    crash_since_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    crash_next_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    crash_log_tail: Mapped[str | None] = mapped_column(Text)


class Boot(Base):
    """One started process of the daemon."""

    __tablename__ = "boots"
    __table_args__ = (
        # Invariant 2: at most one active boot per service, enforced by the database.
        Index(
            "uq_boots_one_active_per_service",
            "service",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    boot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(128))
    port: Mapped[int | None] = mapped_column(Integer)
    pid: Mapped[int | None] = mapped_column(Integer)
    # psutil create_time of the process: a pid is ours only if this matches too.
    pid_create_time: Mapped[float | None] = mapped_column()
    log_path: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=BootState.STARTING.value, index=True)
    started_ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    # When the boot lost the route: its drain ends drain_timeout later, whoever finishes it.
    draining_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Replicas: how many processes the boot is a set of. With more than one, each has a
    # row in `replicas` (port, pid and log_path above are replica 0's, kept alike), and
    # ``ports`` lists the replicas the router balances over ("41001,41002"); NULL means
    # ``port`` alone, as a boot of one process always has.
    replicas: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    ports: Mapped[str | None] = mapped_column(Text)


class Replica(Base):
    """One process of a boot of several (``daemon.replicas``)."""

    __tablename__ = "replicas"

    boot_id: Mapped[str] = mapped_column(ForeignKey("boots.boot_id"), primary_key=True)
    replica: Mapped[int] = mapped_column(Integer, primary_key=True)
    port: Mapped[int | None] = mapped_column(Integer)
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_create_time: Mapped[float | None] = mapped_column()
    log_path: Mapped[str | None] = mapped_column(Text)
    # starting (not yet healthy) | serving (in rotation) | out (failed its checks or
    # exited: out of rotation, restarted after ``next_ts``) | stopped (scaled away)
    state: Mapped[str] = mapped_column(String(16), default="starting")
    started_ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    # Its own crash loop: quick exits in a row, and when it may start again.
    exits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Failed health checks in a row while serving; restarts so far.
    fails: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Workspace(Base):
    """A workspace bound to the boot that serves it."""

    __tablename__ = "workspaces"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace: Mapped[str] = mapped_column(String(512), primary_key=True)
    boot_id: Mapped[str] = mapped_column(ForeignKey("boots.boot_id"))
    attached_ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Attachment(Base):
    """A successful attach call: this boot attached this workspace (invariant 4).

    A workspace is bound only to a boot with an attachment for it; boot ids are never
    reused, so an attachment stays true for the life of its boot.
    """

    __tablename__ = "attachments"

    boot_id: Mapped[str] = mapped_column(ForeignKey("boots.boot_id"), primary_key=True)
    workspace: Mapped[str] = mapped_column(String(512), primary_key=True)
    attached_ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Quarantine(Base):
    """Versions that auto-deploy will not try again (set when a rollback completes)."""

    __tablename__ = "quarantine"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Intent(Base):
    """The desired state of one service: what operators asked for, which every actor obeys.

    The deployment row is what *is* (the state machine); this row is what *should be*.
    ``mode`` says which version should run: ``installed`` (follow the version file),
    ``pinned`` (``deploy --version``) or ``rolled_back`` (``bgdeploy rollback``), the
    last two naming ``version``. A pin or an operator rollback lasts until a new installed
    version (one other than ``installed_seen``, and not quarantined), a later operator
    command, or ``unpin``. ``run`` is ``up`` or ``down``: after ``down`` nothing starts
    the daemon until ``up`` (or ``deploy``).
    """

    __tablename__ = "intents"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    run: Mapped[str] = mapped_column(String(8), default="up")
    run_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    run_by: Mapped[str | None] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16), default="installed")
    version: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    mode_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    mode_by: Mapped[str | None] = mapped_column(Text)
    # The installed version when the pin or rollback was recorded: a different one ends it.
    installed_seen: Mapped[str | None] = mapped_column(String(128))
    # `bgdeploy scale N`: the replicas every boot should have, over daemon.replicas.
    replicas: Mapped[int | None] = mapped_column(Integer)


class Event(Base):
    """Append-only history of every transition."""

    __tablename__ = "events"
    __table_args__ = (
        # Invariant 3: the database itself refuses a second switch or rollback per generation.
        Index(
            "uq_events_once_per_generation",
            "service",
            "generation",
            "event",
            unique=True,
            sqlite_where=text("event IN ('switch', 'rollback')"),
            postgresql_where=text("event IN ('switch', 'rollback')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    active_boot_id: Mapped[str | None] = mapped_column(String(64))
    candidate_boot_id: Mapped[str | None] = mapped_column(String(64))
    old_boot_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    actor_pid: Mapped[int | None] = mapped_column(Integer)
    actor_command: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Router(Base):
    """The router process that owns the service's fixed address, while one runs."""

    __tablename__ = "routers"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    pid_create_time: Mapped[float] = mapped_column()
    url: Mapped[str] = mapped_column(Text)
    admin_url: Mapped[str] = mapped_column(Text)
    started_ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # sha256 of the bgdeploy.toml the supervisor runs with (set at start and reload).
    config_digest: Mapped[str | None] = mapped_column(String(64))
