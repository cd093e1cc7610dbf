"""The lifecycle lock of a PostgreSQL registry: a session-level advisory lock.

The same contract as the ``flock`` of ``lock.py`` (one lifecycle operation per
service at a time, gone when its holder dies), but held by the database server, so
it also works between hosts sharing the registry. The holder keeps one connection
open while it holds the lock; when its process dies, kill -9 included, the kernel
closes the socket, the server ends the session and the lock goes with it.

The holder is named through the connection's ``application_name`` ("<pid>@<host>
<command>", which PostgreSQL cuts at 63 bytes), read back from ``pg_stat_activity``
beside ``pg_locks``: nothing to clean up, nothing that can go stale.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time

import psycopg

from bgdeploy.control.lock import GRACE_S, POLL_S, LockHolder, _own_command
from bgdeploy.errors import LockBusy, RegistryError
from bgdeploy.registry.engine import CONNECT_TIMEOUT_S, libpq_url, safe_url

HOLDER_SQL = """
SELECT a.application_name, to_char(a.backend_start AT TIME ZONE 'UTC',
       'YYYY-MM-DD"T"HH24:MI:SS"Z"')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
"""


def lock_key(service: str) -> int:
    """A stable signed 64-bit key per service (Python's hash() changes per process)."""
    digest = hashlib.blake2b(f"bgdeploy lifecycle {service}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgLifecycleLock:
    def __init__(self, url: str, service: str) -> None:
        self.url = url
        self.service = service
        self.key = lock_key(service)
        self._conn: psycopg.Connection | None = None

    def _connect(self, name: str) -> psycopg.Connection:
        try:
            return psycopg.connect(
                libpq_url(self.url),
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=name[:63],
            )
        except psycopg.Error as e:
            raise RegistryError(
                f"Cannot reach the registry at {safe_url(self.url)} for the lifecycle lock "
                f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}).",
                hint="Check registry.url and that the PostgreSQL server is running.",
            ) from None

    def acquire(self, wait: float | None = None, command: str | None = None) -> None:
        """Take the lock; ``wait`` seconds at most (None: do not wait; exit 3 if busy)."""
        if self._conn is not None:
            raise RuntimeError("lifecycle lock already held by this object")
        who = f"{os.getpid()}@{socket.gethostname()} {command or _own_command()}"
        conn = self._connect(who)
        try:
            self._take(conn, wait)
        except BaseException:
            # Acquire fully or release: closing the session drops a lock it took.
            conn.close()
            raise
        self._conn = conn

    def _take(self, conn: psycopg.Connection, wait: float | None) -> None:
        deadline = time.monotonic() + max(wait or 0.0, GRACE_S)
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
            if time.monotonic() >= deadline:
                conn.close()
                holder = self.holder()
                name = holder.describe() if holder else "another process"
                waited = f" after waiting {wait:g}s" if wait else ""
                raise LockBusy(
                    f"The lifecycle lock of service '{self.service}' is held by {name}{waited}.",
                    holder=holder,
                )
            time.sleep(POLL_S)

    def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error:
            pass  # the session is gone, and the lock with it
        finally:
            conn.close()

    @property
    def held(self) -> bool:
        return self._conn is not None

    def holder(self) -> LockHolder | None:
        """Who holds the lock now, or None when it is free."""
        with self._connect("bgdeploy lock check") as conn:
            row = conn.execute(
                HOLDER_SQL, ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF)
            ).fetchone()
        if row is None:
            return None
        name, since = row
        head, _, cmd = (name or "").partition(" ")
        pid_text, _, host = head.partition("@")
        if host and host != socket.gethostname():
            cmd = f"{cmd} on {host}"
        return LockHolder(
            pid=int(pid_text) if pid_text.isdigit() else None, command=cmd or "unknown", since=since
        )

    def __enter__(self) -> PgLifecycleLock:
        if self._conn is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
