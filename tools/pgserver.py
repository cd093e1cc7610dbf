"""A throw-away PostgreSQL server for the tests and the bench: initdb in a temporary
folder, a free loopback port, password authentication over TCP, stopped (and deleted)
at the end.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
user that Debian's package creates (``runuser``); as anyone else it runs as them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PASSWORD = "bgdeploy-test-secret"


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                "`make test` installs Debian's postgresql where apt-get works"
            )
        self.as_user: list[str] = []
        owner = None
        if os.getuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL refuses root and there is no postgres user to run it as"
                ) from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="bgdeploy-pg-"))
        if owner is not None:
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.data = self.folder / "data"
        self.port = _free_port()
        self._template = False
        self._shared = False
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
            "-E",
            "UTF8",
        )
        # Durability off: a test server, thrown away at the end.
        (self.data / "postgresql.auto.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
            f"unix_socket_directories = '{self.folder}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "max_connections = 300\n"
        )

    def _run(self, tool: str, *args: str) -> None:
        assert self.bin is not None
        proc = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l",
                  str(self.folder / "log"), "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def new_database(self, migrated: bool = True) -> str:
        """A fresh database, migrated to head (a copy of one migrated template, which is
        much faster than migrating each) or empty; its SQLAlchemy URL."""
        if migrated and not self._template:
            self._create("bgdeploy_template")
            from bgdeploy.registry.store import Registry

            Registry(self.url("bgdeploy_template")).close()
            self._template = True
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._create(name, "bgdeploy_template" if migrated else "template0")
        return self.url(name)

    def clean_database(self) -> str:
        """The session's shared registry database, migrated and emptied; its URL.

        Emptying (~20 ms) instead of a new database per test (~400 ms on a busy machine):
        the tests run one at a time and stop what they started.
        """
        import psycopg

        if not self._shared:
            self._create("bgdeploy_shared", "template0")
            from bgdeploy.registry.store import Registry

            Registry(self.url("bgdeploy_shared")).close()
            self._shared = True
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=PASSWORD,
            dbname="bgdeploy_shared",
            autocommit=True,
        ) as conn:
            # A test that left a transaction open fails loudly here rather than hanging.
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(
                "TRUNCATE deployments, boots, events, workspaces, quarantine, routers "
                "RESTART IDENTITY CASCADE"
            )
        return self.url("bgdeploy_shared")

    def _create(self, name: str, template: str = "template0") -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=PASSWORD,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
