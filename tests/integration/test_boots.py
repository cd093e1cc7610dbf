"""Daemon supervision with real demo daemon processes (DESIGN section 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from bgdeploy import health
from bgdeploy.boots import log_tail
from bgdeploy.errors import BootError
from bgdeploy.processes import process_matches
from bgdeploy.states import BootState
from tests.conftest import DEMO_DAEMON, demo_command, poll_until


def wait(b, boot):
    sup = b.supervisor
    return health.wait_healthy(
        b.app.config,
        boot,
        is_running=lambda: sup.is_running(boot),
        describe_exit=lambda: sup.describe_exit(boot),
        log_tail=lambda: log_tail(boot.log_path),
    )


def test_start_healthy_attach_stop(boots_for):
    b = boots_for()
    boot = b.start("1.0")
    assert boot.pid and boot.port and boot.pid_create_time
    assert b.supervisor.is_running(boot)
    assert wait(b, boot).ok
    page = httpx.get(f"http://127.0.0.1:{boot.port}/").json()
    assert page == {"version": "1.0", "boot_id": boot.boot_id, "pid": boot.pid, "child_pid": None}
    assert psutil.Process(boot.pid).cwd() == str(b.app.config.base_dir)
    health.attach(b.app.config, boot, "/src/project-a")
    code = b.supervisor.stop(boot)
    assert code == 0  # SIGTERM: finished in-flight work and exited by itself
    row = b.app.registry.boot(boot.boot_id)
    assert row.state == BootState.STOPPED and row.exit_code == 0 and row.stopped_ts
    assert not psutil.pid_exists(boot.pid) or psutil.Process(boot.pid).status() == "zombie"
    assert "stopped: in-flight requests finished" in log_tail(row.log_path)


def test_env_variables_reach_the_daemon(boots_for):
    b = boots_for(command=[sys.executable, str(DEMO_DAEMON)])  # no flags: env only
    boot = b.start("4.2")
    wait(b, boot)
    page = httpx.get(f"http://127.0.0.1:{boot.port}/").json()
    assert (page["version"], page["boot_id"]) == ("4.2", boot.boot_id)


def test_crash_on_start_is_reported_at_the_exit_with_its_log_tail(boots_for):
    b = boots_for(flags=["--crash-on-start"], startup=60)
    boot = b.start()
    t0 = time.monotonic()
    with pytest.raises(BootError) as info:
        wait(b, boot)
    elapsed = time.monotonic() - t0
    assert "exited with code 3 before it became healthy" in info.value.message
    assert "fatal: --crash-on-start given" in info.value.log_tail
    assert "fatal: --crash-on-start given" in info.value.hint
    # Reported because the process exited, not because startup_timeout (60 s) ran out.
    assert elapsed < 30


def test_never_healthy_times_out_at_startup_timeout(boots_for):
    b = boots_for(flags=["--never-healthy"], startup=1.5)
    boot = b.start()
    with pytest.raises(
        BootError,
        match=r"did not become healthy within 1.5s \(last check: .* "
        r"answered 503, expected status 200-299\)",
    ):
        wait(b, boot)
    assert b.supervisor.is_running(boot)  # still up: deciding to stop it is the caller's


def test_wrong_version_is_unhealthy_at_once(boots_for):
    b = boots_for(flags=["--health-version", "9.9"], startup=60)
    boot = b.start("1.0")
    with pytest.raises(BootError, match="wrong binary: .* reports version 9.9, expected 1.0"):
        wait(b, boot)


def test_ignoring_sigterm_gets_the_group_killed_children_too(boots_for):
    b = boots_for(flags=["--ignore-sigterm", "--spawn-child"], stop=1.0)
    boot = b.start()
    wait(b, boot)
    child_pid = httpx.get(f"http://127.0.0.1:{boot.port}/").json()["child_pid"]
    child = psutil.Process(child_pid)
    assert child.is_running()
    code = b.supervisor.stop(boot)
    assert code == -9  # SIGKILL after stop_timeout
    poll_until(
        lambda: not child.is_running() or child.status() == "zombie",
        5,
        what="the daemon's child to die",
    )
    assert b.app.registry.boot(boot.boot_id).exit_code == -9


def test_a_reused_pid_is_not_taken_for_the_boot(boots_for):
    b = boots_for()
    boot = b.start()
    wait(b, boot)
    b.supervisor.stop(boot)
    # Another process now holds some pid; pretend the registry says the boot has it.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with b.app.registry.writing() as s:
            from bgdeploy.registry.models import Boot

            row = s.get(Boot, boot.boot_id)
            row.pid = stranger.pid  # same pid number, different process start time
            row.state = BootState.ACTIVE.value
        fake = b.app.registry.boot(boot.boot_id)
        fresh = type(b.supervisor)(b.app.config, b.app.registry)  # no Popen memory
        assert not fresh.is_running(fake)
        fresh.stop(fake, timeout=0.5)
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_argv_items_reach_the_daemon_unchanged(boots_for, tmp_path):
    tricky = ["two words", 'it\'s "quoted"', "a; touch pwned", "$HOME", "`id`", "{nope}"]
    b = boots_for(
        command=demo_command("--argv-echo", "--", *tricky),
    )
    boot = b.start("1.0")
    wait(b, boot)
    lines = Path(boot.log_path).read_text().splitlines()
    line = next(ln for ln in lines if ln.startswith("ARGV "))
    argv = json.loads(line[5:])
    assert argv == ["--port", str(boot.port), "--version", "1.0", "--argv-echo", "--", *tricky]
    assert not (tmp_path / "pwned").exists()


def test_command_that_does_not_exist_is_a_clear_error(boots_for):
    b = boots_for(command=["/nonexistent/daemon", "--port", "{port}"])
    with pytest.raises(BootError, match="could not start '/nonexistent/daemon'"):
        b.start()
    assert b.app.registry.boots("default")[0].state == BootState.FAILED


def test_stopping_a_set_ends_a_replica_started_again_whose_pid_never_reached_the_registry(
    boots_for,
):
    """A replica started again by a control loop that was stopped between the spawn and
    the registry's write: the row still names the dead process, the new one lives on
    its port. Stopping the set ends it too (found by its environment), so no daemon
    outlives its boot unseen."""
    b = boots_for()
    boot_id = b.app.registry.create_boot(b.app.service, 1, "1.0")
    boot = b.supervisor.spawn(boot_id, replicas=2)
    rows = b.app.registry.replicas.rows(boot_id)
    assert len(rows) == 2 and all(r.pid for r in rows)
    one = rows[1]
    os.killpg(one.pid, signal.SIGKILL)
    poll_until(lambda: not process_matches(one.pid, one.pid_create_time), 10, what="replica 1 dead")
    # Started again, as the tending does, but the new pid is not written down.
    pid, _created, _log = b.supervisor._start(boot, 1, one.port)
    assert psutil.pid_exists(pid)

    b.supervisor.stop(boot, timeout=2)
    poll_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        10,
        what="the unrecorded replica to be ended",
    )
    assert not any(process_matches(r.pid, r.pid_create_time) for r in rows)


RESTART_ELSEWHERE = """
import sys
from pathlib import Path
from bgdeploy.boots import BootProcesses
from bgdeploy.config import load_config
from bgdeploy.control.app import App

app = App(load_config(Path(sys.argv[1])))
boot = app.registry.boot(sys.argv[2])
BootProcesses(app.config, app.registry).spawn_replica(boot, 1, prefer_port=int(sys.argv[3]))
"""


def test_a_replica_started_again_by_another_process_is_seen_running_and_stopped_gracefully(
    boots_for,
):
    """This process started the set; a router's tending (another process) started a
    dead replica again and recorded its new pid. The old handle this process keeps
    must not hide the new process: it counts as running, and stopping the set sends it
    SIGTERM, so it finishes its requests, instead of leaving it to the leftover sweep's
    SIGKILL (before: its handle's exit code said "dead", and the set's stop skipped it)."""
    b = boots_for()
    boot_id = b.app.registry.create_boot(b.app.service, 1, "1.0")
    boot = b.supervisor.spawn(boot_id, replicas=2)
    one = b.app.registry.replicas.rows(boot_id)[1]
    os.killpg(one.pid, signal.SIGKILL)
    poll_until(lambda: not b.supervisor.replica_running(one), 10, what="replica 1 dead")
    subprocess.run(
        [sys.executable, "-c", RESTART_ELSEWHERE, str(b.app.config.path), boot_id, str(one.port)],
        check=True,
        timeout=60,
    )
    again = b.app.registry.replicas.get(boot_id, 1)
    assert again.pid != one.pid and process_matches(again.pid, again.pid_create_time)
    assert b.supervisor.replica_running(again)

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{again.port}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    poll_until(answers, 20, what="the replica started again to answer")

    b.supervisor.stop(boot, timeout=10)
    assert not process_matches(again.pid, again.pid_create_time)
    assert "stopped: in-flight requests finished" in Path(again.log_path).read_text()
