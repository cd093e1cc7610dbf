"""Faults of the machine (invariant 7): a full or read-only state folder, a registry
locked by another process, a signal to a command. Every command says one sentence with
its documented exit code, the router keeps serving, and once the fault is gone
everything works again with no restart by hand.

The state folder sits on a small tmpfs of its own (root mounts one here; elsewhere
these tests skip and say why), so "full" and "read-only" are the kernel's own ENOSPC
and EROFS, not a mock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from loadgen import LoadGen

from bgdeploy.config import load_config
from bgdeploy.control.app import App
from bgdeploy.control.lock import LifecycleLock
from bgdeploy.faults import StateDirError
from tests.conftest import REPO, REPORT, poll_until, run_bgdeploy
from tests.integration.conftest import RouterRun, free_port, make_app, stop_orphaned_workers

pytestmark = pytest.mark.slow


class Tmpfs:
    """A small tmpfs at ``path``: fill it up, free it, make it read-only and back."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs for the state folder: {done.stderr.strip()}")
        self.filler = path / "filler"
        self.binds: list[Path] = []

    def fill(self) -> None:
        """Write until the kernel says ENOSPC, in ever smaller pieces (nothing is left)."""
        fd = os.open(self.filler, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 16, 1 << 12, 1):
                chunk = b"\0" * size
                with contextlib.suppress(OSError):
                    while os.write(fd, chunk):
                        pass
            with pytest.raises(OSError) as e:
                os.write(fd, b"\0")
            assert e.value.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool, folder: str = "") -> None:
        """Make ``folder`` of it (a bind mount of its own) read-only, or writable again.
        The kernel refuses while a file there is open for writing (a pass holding the
        lock file): retried, bounded."""
        target = self.path / folder
        if on and not self.binds.count(target):
            subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
            self.binds.append(target)
        if target not in self.binds:
            return
        mode = "ro" if on else "rw"
        argv = ["mount", "-o", f"remount,bind,{mode}", str(target)]
        poll_until(
            lambda: subprocess.run(argv, capture_output=True).returncode == 0,
            10,
            what=f"{target} to be remounted {mode}",
        )

    def unmount(self) -> None:
        for target in reversed(self.binds):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def faulty_app(tmp_path: Path, state: Path, **kw: object) -> App:
    """A config whose state folder is ``state``, with its own router ports and a
    version file (VERSION, 1.0)."""
    (tmp_path / "VERSION").write_text("1.0\n")
    router = f"\n[router]\nport = {free_port()}\nadmin_port = {free_port()}\nworkers = 1\n"
    kw.setdefault("stable", 2)  # finalize soon: auto-deploy acts on an idle deployment
    app = make_app(tmp_path, extra=router, daemon_extra='version_file = "VERSION"', **kw)
    path = app.config.path
    path.write_text(f'state_dir = "{state}"\n' + path.read_text())
    app.close()
    return App(load_config(path))


@pytest.fixture
def cleanup() -> Iterator[list[App | RouterRun | Tmpfs]]:
    """Gives the tmpfs its space back, stops the routers and every boot the test's apps
    started, then unmounts the tmpfs."""
    made: list[App | RouterRun | Tmpfs] = []
    yield made
    from bgdeploy.boots import BootProcesses

    mounts = [thing for thing in made if isinstance(thing, Tmpfs)]
    for fs in mounts:
        for target in fs.binds:
            fs.read_only(False, str(target.relative_to(fs.path)))
        fs.free()
    for thing in reversed(made):
        if isinstance(thing, RouterRun):
            thing.stop()
            stop_orphaned_workers(thing.app)
        elif isinstance(thing, App):
            sup = BootProcesses(thing.config, thing.registry)
            for boot in thing.registry.boots(thing.service, live_only=True):
                if sup.is_running(boot):
                    sup.stop(boot, timeout=2)
            thing.close()
    for fs in mounts:
        fs.unmount()


@pytest.fixture
def tmpfs(tmp_path: Path, cleanup: list[App | RouterRun | Tmpfs]) -> Tmpfs:
    fs = Tmpfs(tmp_path / "state", "16m")
    cleanup.append(fs)
    return fs


def bg(app: App, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return run_bgdeploy("--config", str(app.config.path), *args, cwd=REPO, timeout=timeout)


def assert_one_sentence(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Exit ``code``, an ``Error:`` sentence (and its hint), no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "unexpected" not in errors[0], done.stderr
    for word in words:
        assert word in errors[0], done.stderr


def route(run: RouterRun) -> str | None:
    return run.route()


def active_version(app: App) -> str | None:
    row = app.registry.deployment(app.service)
    boot = app.registry.boot(row.active_boot_id)
    return boot.version if boot is not None else None


# -- defect 7: the lock -------------------------------------------------------------------


def test_a_lock_whose_record_cannot_be_written_is_not_kept(tmpfs, tmp_path):
    """The lock file's first write fails with ENOSPC: the acquire raises one sentence and
    keeps no flock, so the same long-lived process takes the lock once space is back
    (before: the descriptor leaked with the flock held, and every later acquire, the
    control loop's included, was "held by pid None (unknown)" until a restart)."""
    lock = LifecycleLock(tmpfs.path, "default")
    tmpfs.fill()
    with pytest.raises(StateDirError) as e:
        lock.acquire(command="test")
    assert "is full" in e.value.message and "default.lock" in e.value.message
    assert lock.holder() is None
    tmpfs.free()
    lock.acquire(command="test")  # the same process: no leaked flock in the way
    assert lock.holder() is not None and lock.holder().command == "test"
    # Once the file has its block, a full disk no longer stops the lock itself.
    lock.release()
    tmpfs.fill()
    lock.acquire(command="again")
    assert lock.holder().command == "again"
    lock.release()


def test_commands_on_a_full_state_folder_say_so_and_hold_nothing(tmpfs, tmp_path, cleanup):
    """No router: the state folder fills before the first lifecycle command. `deploy`
    and `status` say the folder is full (exit 1), no lock is left held, and `deploy`
    works once it is freed."""
    app = faulty_app(tmp_path, tmpfs.path)
    cleanup.append(app)
    assert bg(app, "init").returncode == 0
    tmpfs.fill()
    done = bg(app, "deploy", "--no-wait")
    assert_one_sentence(done, 1, "is full")
    # With no connection open, SQLite cannot even read: it must create its shared memory.
    assert_one_sentence(bg(app, "status"), 1, "is full")
    assert LifecycleLock(tmpfs.path, app.service).holder() is None
    tmpfs.free()
    done = bg(app, "deploy", "--no-wait")
    assert done.returncode == 0, done.stderr
    assert active_version(app) == "1.0"


def test_a_read_only_lock_folder_gives_one_sentence_and_recovers(tmpfs, tmp_path, cleanup):
    """The state folder's locks/ turns read-only (a read-only bind mount: the kernel
    will not remount the registry's folder while the router has it open for writing):
    lifecycle commands exit 1 naming it; the router keeps serving; made writable again,
    the control loop acts again (it deploys the version installed meanwhile), no
    restart. Its log says so once, and the recovery once."""
    app = faulty_app(tmp_path, tmpfs.path)
    cleanup.append(app)
    run = RouterRun(app).start()
    cleanup.append(run)
    assert bg(app, "deploy").returncode == 0
    first = route(run)
    tmpfs.read_only(True, "locks")
    try:
        (tmp_path / "VERSION").write_text("2.0\n")
        done = bg(app, "deploy", "--no-wait")
        assert_one_sentence(done, 1, "read-only")
        assert httpx.get(run.url, timeout=5).status_code == 200
        time.sleep(1.0)  # several passes of the control loop fail meanwhile (interval 0.2 s)
        assert route(run) == first
    finally:
        tmpfs.read_only(False, "locks")
    poll_until(lambda: active_version(app) == "2.0", 30, what="the control loop to deploy 2.0")
    poll_until(lambda: route(run) != first, 10, what="the router to follow")
    # The recovery is logged when the pass that deployed 2.0 returns (after its drain).
    poll_until(
        lambda: "control loop passes work again" in (tmp_path / "router.log").read_text(),
        30,
        what="the recovery in the router's log",
    )
    log = (tmp_path / "router.log").read_text()
    assert log.count("control loop pass failed") == 1, log  # once per run of failures


# -- the disk-full test of issue 19 -------------------------------------------------------


def test_a_full_state_folder_under_load_costs_no_request_and_heals_by_itself(
    tmpfs, tmp_path, cleanup
):
    """The state folder fills up under load through a real router: commands fail with
    one sentence (exit 1), no request fails, and once the space is freed the control
    loop deploys the version installed meanwhile, with no restart by hand (before: the
    control loop's lock leaked on ENOSPC and every later pass skipped, forever)."""
    app = faulty_app(tmp_path, tmpfs.path)
    cleanup.append(app)
    run = RouterRun(app).start()
    cleanup.append(run)
    assert bg(app, "deploy").returncode == 0
    first = route(run)
    load = LoadGen(run.url, clients=4, seconds=120, max_requests=200_000).start()
    try:
        time.sleep(0.5)
        tmpfs.fill()
        (tmp_path / "VERSION").write_text("2.0\n")
        for args in (["deploy", "--no-wait"], ["rollback", "--no-wait"]):
            done = bg(app, *args)
            assert_one_sentence(done, 1)
            REPORT.append(f"disk full: `{' '.join(args)}` exit 1: {done.stderr.splitlines()[0]}")
        status = bg(app, "status", "--json")
        assert status.returncode == 0, status.stderr
        time.sleep(1.0)  # passes of the control loop fail meanwhile (interval 0.2 s)
        assert route(run) == first
        assert active_version(app) == "1.0"
        tmpfs.free()
        freed = time.monotonic()
        poll_until(lambda: active_version(app) == "2.0", 40, what="the control loop's deploy")
        healed = time.monotonic() - freed
        poll_until(lambda: route(run) != first, 10, what="the router to follow")
        again = bg(app, "deploy")
        assert again.returncode == 0, again.stderr
    finally:
        stats = load.stop()
    REPORT.append(
        f"disk full under load: {stats.requests} requests, {stats.failures} failed; "
        f"2.0 active {healed:.1f} s after the space was freed"
    )
    assert stats.requests > 100
    assert stats.failures == 0, stats.errors[:5]
    log = (tmp_path / "router.log").read_text()
    assert "Skipped" not in log and "pid None" not in log


# -- a registry locked by another process -------------------------------------------------

HOLD_EXCLUSIVE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def test_a_registry_locked_longer_than_a_pass_costs_nothing_lasting(tmp_path, cleanup):
    """Another process holds the SQLite registry in BEGIN EXCLUSIVE for longer than the
    busy timeout: a command that writes says so in one sentence (exit 1), the router
    keeps serving, and once it lets go the control loop deploys the installed version
    with no restart."""
    from bgdeploy.registry.engine import BUSY_TIMEOUT_S

    app = faulty_app(tmp_path, tmp_path / "state")
    cleanup.append(app)
    run = RouterRun(app).start()
    cleanup.append(run)
    assert bg(app, "deploy").returncode == 0
    first = route(run)
    db = app.config.state_dir / "registry.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_EXCLUSIVE, str(db), str(BUSY_TIMEOUT_S + 8)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "VERSION").write_text("2.0\n")
        done = bg(app, "maintenance", "on", timeout=BUSY_TIMEOUT_S + 30)
        assert_one_sentence(done, 1, "locked by another process")
        assert httpx.get(run.url, timeout=5).status_code == 200
        assert route(run) == first
    finally:
        holder.wait(timeout=BUSY_TIMEOUT_S + 30)
    poll_until(lambda: active_version(app) == "2.0", 60, what="the control loop's deploy")
    poll_until(lambda: route(run) != first, 10, what="the router to follow")
    assert httpx.get(run.url, timeout=5).status_code == 200
    status = json.loads(bg(app, "status", "--json").stdout)
    assert not status["maintenance"], status["maintenance"]  # the refused write did nothing


# -- defect 8: a signal to `deploy` -------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_signal_during_deploy_stops_the_candidate_and_records_the_abort(
    tmp_path, cleanup, sig, code
):
    """Ctrl-C (or SIGTERM, SIGHUP) while the candidate starts: one sentence naming the
    signal, its exit code, the candidate's processes gone, the abort in the registry
    with that reason, and the lock free (before: exit 130 with nothing printed, the
    candidate left `starting`)."""
    # The daemon never gets healthy before the signal, however slow the machine: its
    # start takes 60 s, and the deploy would wait for it far longer than that.
    app = faulty_app(tmp_path, tmp_path / "state", flags=["--start-delay", "60"], startup=600)
    cleanup.append(app)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgdeploy", "--config", str(app.config.path), "deploy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:

        def candidate() -> object:
            row = app.registry.deployment(app.service)
            boot = app.registry.boot(row.candidate_boot_id)
            return boot if boot is not None and boot.pid else None

        boot = poll_until(candidate, 30, what="the candidate to start")
        assert psutil.pid_exists(boot.pid)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    name = signal.Signals(sig).name
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err
    assert f"interrupted by {name}" in err, err
    assert f"candidate {boot.boot_id} stopped" in err, err
    assert not psutil.pid_exists(boot.pid) or psutil.Process(boot.pid).status() == "zombie"
    row = app.registry.deployment(app.service)
    assert row.state == "idle" and row.last_error == f"interrupted by {name}"
    history = json.loads(bg(app, "history", "--json").stdout)
    assert history[0]["event"] == "abort" and history[0]["reason"] == f"interrupted by {name}"
    status = json.loads(bg(app, "status", "--json").stdout)
    assert status["lock"] is None and status["candidate"] is None
