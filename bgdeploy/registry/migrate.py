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
from sqlalchemy import Engine

from bgdeploy.errors import RegistryError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
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
            raise RegistryError(
                f"The registry is at schema revision {current}, which this bgdeploy does not "
                f"know (its newest is {head}).",
                hint="It was written by a newer bgdeploy: upgrade bgdeploy, or point "
                "registry.url at another file.",
            ) from None
    return current, head


def ensure_head(engine: Engine, db_path: Path | None = None) -> None:
    """Upgrade to head if behind; serialised across processes by a file lock."""
    current, head = check_head(engine)
    if current == head:
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
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
