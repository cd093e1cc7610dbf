"""The lifecycle lock across real processes: kill -9 leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bgdeploy.control.lock import LifecycleLock
from bgdeploy.errors import LockBusy

HOLDER = """
import sys, time
from pathlib import Path
from bgdeploy.control.lock import LifecycleLock
lock = LifecycleLock(Path(sys.argv[1]), "default")
lock.acquire(command="bgdeploy deploy --version 2.0")
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_busy_lock_names_its_holder(tmp_path, holder):
    lock = LifecycleLock(tmp_path, "default")
    with pytest.raises(LockBusy) as info:
        lock.acquire()
    assert f"pid {holder.pid}" in info.value.message
    assert "bgdeploy deploy --version 2.0" in info.value.message
    assert info.value.exit_code == 3
    seen = lock.holder()
    assert seen.pid == holder.pid and seen.command == "bgdeploy deploy --version 2.0"


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = LifecycleLock(tmp_path, "default")
    assert lock.holder() is None
    lock.acquire()  # no wait: this raises LockBusy if anything of the dead holder remained
    assert lock.held and lock.holder().pid == os.getpid()
    lock.release()


def test_wait_gets_the_lock_when_the_holder_finishes(tmp_path, holder):
    lock = LifecycleLock(tmp_path, "default")
    holder.terminate()
    lock.acquire(wait=30)
    assert lock.held
    lock.release()
    assert lock.holder() is None


def test_wait_runs_out_and_says_so(tmp_path, holder):
    with pytest.raises(LockBusy, match="after waiting 0.3s"):
        LifecycleLock(tmp_path, "default").acquire(wait=0.3)
