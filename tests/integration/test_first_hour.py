"""The rough edges of a first hour: `--help`, `--version`, `--debug` after the command,
a lock wait that names its holder once, hints that match what happened, and doctor's
warnings (boot ports in the ephemeral range, a crash in the last hour, a failed deploy)."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from bgdeploy import __version__
from bgdeploy.config import load_config
from bgdeploy.control.app import App
from bgdeploy.control.doctor_warnings import EPHEMERAL, port_range
from bgdeploy.control.lock import LifecycleLock
from bgdeploy.router import build
from tests.conftest import poll_until, run_bgdeploy, write_config
from tests.integration.conftest import deploy, free_port_block


def checks_of(proc) -> dict[str, dict]:  # noqa: ANN001
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


@pytest.mark.parametrize("args", [["--help"], ["deploy", "--help"], ["init", "--help"]])
def test_help_shows_flags_without_type_placeholders(args):
    proc = run_bgdeploy(*args)
    assert proc.returncode == 0, proc.stderr
    assert "--help" in proc.stdout
    assert not re.search(r"<\w+>", proc.stdout), proc.stdout


def test_version_prints_the_version_and_the_router_build():
    proc = run_bgdeploy("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bgdeploy {__version__} (router build: {build()})"


def test_debug_is_accepted_after_the_command(tmp_path):
    proc = run_bgdeploy("status", "--debug", cwd=tmp_path)
    assert "No such option" not in proc.stderr
    assert proc.returncode == 2 and "No config file at" in proc.stderr


def test_a_lock_wait_names_the_holder_once_and_the_hint_matches(tmp_path):
    write_config(tmp_path)
    app = App(load_config(tmp_path / "bgdeploy.toml"))
    lock = app.lock()
    lock.acquire(command="bgdeploy deploy --version 9")
    try:
        proc = run_bgdeploy("deploy", "--wait", "1.5", cwd=tmp_path)
    finally:
        lock.release()
        app.close()
    assert proc.returncode == 3, proc.stderr
    named = f"held by pid {os.getpid()} (bgdeploy deploy --version 9)"
    assert proc.stderr.count(named) == 2, proc.stderr  # the wait line, then the error
    assert proc.stderr.count("Waiting up to 1.5s for the lifecycle lock") == 1, proc.stderr
    assert "after waiting 1.5s" in proc.stderr
    assert "pass --wait SECONDS" not in proc.stderr  # it was passed
    assert "longer --wait" in proc.stderr


def test_a_busy_lock_without_wait_still_says_how_to_wait(tmp_path):
    write_config(tmp_path)
    lock = LifecycleLock(tmp_path / ".bgdeploy", "default")
    lock.acquire(command="someone else")
    try:
        proc = run_bgdeploy("deploy", "--no-wait", cwd=tmp_path)
    finally:
        lock.release()
    assert proc.returncode == 3 and "pass --wait SECONDS" in proc.stderr, proc.stderr
    assert "Waiting" not in proc.stderr


def test_doctor_warns_when_boot_ports_overlap_the_ephemeral_range(tmp_path):
    proc_file = tmp_path / "ip_local_port_range"
    proc_file.write_text("32768\t60999\n")
    write_config(tmp_path, "port_range = [47800, 47999]\n")
    check = port_range(load_config(tmp_path / "bgdeploy.toml"), proc_file)
    assert check is not None and check.status == "warn"
    assert "overlaps the kernel's ephemeral ports (32768-60999)" in check.message
    assert "below 32768" in check.fix
    write_config(tmp_path)  # the default range
    check = port_range(load_config(tmp_path / "bgdeploy.toml"), proc_file)
    assert check is not None and check.status == "pass", check


@pytest.mark.slow
def test_doctor_shows_the_boot_ports_check_of_this_machine(tmp_path):
    low = int(EPHEMERAL.read_text().split()[0])
    write_config(tmp_path, f"port_range = [{low}, {low + 10}]\n")
    checks = checks_of(run_bgdeploy("doctor", "--json", cwd=tmp_path))
    assert checks["boot ports"]["status"] == "warn", checks["boot ports"]


@pytest.mark.slow
def test_a_failed_first_deploy_says_nothing_serves_and_doctor_shows_it(tmp_path):
    low, high = free_port_block(4)
    write_config(
        tmp_path,
        f"port_range = [{low}, {high}]\nstartup_timeout = 1.5\nstop_timeout = 2.0\n",
        command=[*_demo(), "--never-healthy"],
    )
    proc = run_bgdeploy("deploy", "--version", "1.0", cwd=tmp_path)
    assert proc.returncode == 1
    assert "did not become healthy" in proc.stderr
    assert "The active boot is unchanged" not in proc.stderr  # there was none
    assert "nothing serves yet" in proc.stderr
    doctor = run_bgdeploy("doctor", "--json", cwd=tmp_path)
    checks = checks_of(doctor)
    last = checks["last deploy"]
    assert last["status"] == "warn", last
    assert last["message"].startswith("generation 1 (bgdeploy deploy --version 1.0) failed")
    assert "did not become healthy" in last["message"] and "nothing serves" in last["message"]
    assert "bgdeploy logs blue-1" in last["fix"]
    assert checks["active boot"]["fix"] == "Run `bgdeploy deploy`."


@pytest.mark.slow
def test_doctor_warns_about_a_crash_in_the_last_hour(stack, tmp_path):
    (tmp_path / "VERSION").write_text("1.0\n")  # what the heal starts again
    app, router = stack(stable=1, daemon_extra='version_file = "VERSION"')
    blue = deploy(app, "1.0").boot_id
    poll_until(lambda: app.registry.deployment(app.service).state == "idle", 20, what="finalize")
    os.killpg(app.registry.boot(blue).pid, signal.SIGKILL)
    poll_until(
        lambda: (
            app.registry.deployment(app.service).active_boot_id != blue
            and router.route() not in (None, blue)
        ),
        30,
        what="the router to heal",
    )
    doctor = run_bgdeploy("--config", str(app.config.path), "doctor", "--json")
    crash = checks_of(doctor)["daemon crash"]
    assert crash["status"] == "warn", crash
    assert crash["message"].startswith(f"boot {blue} (1.0) ")
    # The test process started blue, so the router cannot know its exit status.
    assert "exited (exit status unknown" in crash["message"] and "s ago (" in crash["message"]
    assert f"bgdeploy logs {blue}" in crash["fix"]
    assert json.loads(doctor.stdout)["ok"], doctor.stdout  # a warning, not a failure


def _demo() -> list[str]:
    from tests.conftest import demo_command

    return demo_command()


def test_status_shows_the_boots_once_as_a_table_or_with_tree_as_a_tree(tmp_path, cli):
    write_config(tmp_path)
    app = App(load_config(tmp_path / "bgdeploy.toml"))
    row = app.registry.deployment("default")
    app.registry.transition("default", "begin", generation=row.generation, version="1.0")
    app.close()
    config = str(tmp_path / "bgdeploy.toml")
    table = cli("--config", config, "status")
    assert table.code == 0 and table.out.count("blue-1") == 1, table.out
    assert re.search(r"candidate\s+blue-1\s+1\.0\s+starting", table.out), table.out
    tree = cli("--config", config, "status", "--tree")
    assert tree.code == 0 and tree.out.count("blue-1") == 1, tree.out
    assert "└── candidate blue-1  1.0  starting" in tree.out, tree.out
