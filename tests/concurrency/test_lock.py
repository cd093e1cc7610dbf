"""The lifecycle lock across real processes: kill -9 leaves nothing behind. Both kinds:
the flock beside a SQLite registry, the advisory lock in a PostgreSQL one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bgdeploy.control.lock import LifecycleLock
from bgdeploy.control.pg_lock import PgLifecycleLock
from bgdeploy.errors import LockBusy
from tests.conftest import REGISTRIES, poll_until

HOLDER = """
import sys, time
from pathlib import Path
from bgdeploy.control.lock import LifecycleLock
from bgdeploy.control.pg_lock import PgLifecycleLock
kind, where = sys.argv[1], sys.argv[2]
if kind == "sqlite":
    lock = LifecycleLock(Path(where), "default")
else:
    lock = PgLifecycleLock(where, "default")
lock.acquire(command="bgdeploy deploy --version 2.0")
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture(params=REGISTRIES)
def make_lock(request, tmp_path):
    """(kind, where, factory of a lock on service "default")"""
    if request.param == "sqlite":
        where = str(tmp_path)
        return request.param, where, lambda: LifecycleLock(tmp_path, "default")
    where = request.getfixturevalue("pg_server").clean_database()
    return request.param, where, lambda: PgLifecycleLock(where, "default")


@pytest.fixture
def holder(make_lock):
    kind, where, _ = make_lock
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, kind, where], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_busy_lock_names_its_holder(make_lock, holder):
    lock = make_lock[2]()
    with pytest.raises(LockBusy) as info:
        lock.acquire()
    assert f"pid {holder.pid}" in info.value.message
    assert "bgdeploy deploy --version 2.0" in info.value.message
    assert info.value.exit_code == 3
    seen = lock.holder()
    assert seen.pid == holder.pid and seen.command == "bgdeploy deploy --version 2.0"


def test_lock_of_a_killed_holder_is_free_at_once(make_lock, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = make_lock[2]()
    # The flock is gone with the process; the server ends the session when the socket closes.
    poll_until(lambda: lock.holder() is None, 5, what="the dead holder's lock to vanish")
    lock.acquire()  # no wait: this raises LockBusy if anything of the dead holder remained
    assert lock.held and lock.holder().pid == os.getpid()
    lock.release()


def test_wait_gets_the_lock_when_the_holder_finishes(make_lock, holder):
    lock = make_lock[2]()
    holder.terminate()
    lock.acquire(wait=30)
    assert lock.held
    lock.release()
    assert lock.holder() is None


def test_wait_runs_out_and_says_so(make_lock, holder):
    with pytest.raises(LockBusy, match="after waiting 0.3s"):
        make_lock[2]().acquire(wait=0.3)


def test_advisory_locks_of_two_services_are_independent(pg_server):
    url = pg_server.clean_database()
    a, b = PgLifecycleLock(url, "a"), PgLifecycleLock(url, "b")
    a.acquire()
    b.acquire()  # no wait: a different service's lock is another key
    with pytest.raises(LockBusy):
        PgLifecycleLock(url, "a").acquire()
    a.release()
    b.release()
    assert a.holder() is None and b.holder() is None
