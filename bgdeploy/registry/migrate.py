"""Alembic, driven from code: the registry migrates itself to head on first use.

The migrations ship inside the package (``bgdeploy/registry/migrations/``, the
folder ``alembic.ini`` names too), so an installed bgdeploy finds them, and
`alembic` by hand in a checkout and bgdeploy agree.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, select

from bgdeploy.errors import RegistryError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key that lets one process at a time migrate a PostgreSQL registry.
_MIGRATE_LOCK_KEY = 0x62676D67  # "bgmg"


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def current_revision(engine: Engine | Connection) -> str | None:
    if isinstance(engine, Connection):
        return MigrationContext.configure(engine).get_current_revision()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_head(engine: Engine) -> tuple[str | None, str | None]:
    """(current, head); raises if the registry was written by a newer bgdeploy."""
    script = ScriptDirectory.from_config(alembic_config())
    current, head = current_revision(engine), script.get_current_head()
    if current is not None and current != head:
        try:
            script.get_revision(current)
        except Exception:
            where = engine.url.render_as_string(hide_password=True)
            raise RegistryError(
                f"The registry at {where} is at schema revision {current}, which this "
                f"bgdeploy does not know (its newest is {head}).",
                hint="It was written by a newer bgdeploy: upgrade bgdeploy, or point "
                "registry.url at another registry.",
            ) from None
    return current, head


def ensure_head(engine: Engine, db_path: Path | None = None) -> None:
    """Upgrade to head if behind; serialised across processes by a file lock (SQLite)
    or a transaction-level advisory lock (PostgreSQL)."""
    current, head = check_head(engine)
    if current == head:
        return
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(_MIGRATE_LOCK_KEY)))
            if current_revision(conn) != head:  # another process may have just done it
                _upgrade_on(conn)
        return
    lock_fd = None
    if db_path is not None:
        lock_fd = os.open(f"{db_path}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        upgrade(engine)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        _upgrade_on(conn, revision)


def _upgrade_on(conn: Connection, revision: str = "head") -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)
