"""The registry's engine: SQLite files made private, WAL and BEGIN IMMEDIATE, or
PostgreSQL through psycopg 3; URLs safe to print."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from bgdeploy.errors import ConfigError, RegistryError
from bgdeploy.registry.urls import is_postgres

BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5
WRITE = "bgdeploy_write"


def prepare_sqlite_file(path: Path) -> None:
    """Create the registry folder 0700 and the file 0600 before SQLite touches them."""
    folder = path.parent
    if not folder.exists():
        try:
            # exist_ok: two commands started at once (two `up`s) both saw it missing
            folder.mkdir(parents=True, mode=0o700, exist_ok=True)
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


def sqlite_change_hint(path: Path) -> tuple[int, ...]:
    """A token that differs after a commit: the SQLite file's and its WAL's inode, size
    and change time (two stat calls, no query). The same token does not promise the same
    rows (a file system whose ``st_mtime_ns`` does not move within a clock tick), so a
    reader that trusts it still rereads now and then."""
    token: list[int] = []
    for f in (path, path.with_name(path.name + "-wal")):
        try:
            st = os.stat(f)
        except OSError:
            token += (0, 0, 0)
        else:
            token += (st.st_ino, st.st_size, st.st_mtime_ns)
    return tuple(token)


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
        immediate = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
