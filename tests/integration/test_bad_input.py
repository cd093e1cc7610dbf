"""Bad input gets one clear sentence, a hint and the documented exit code, and loses nothing:
the registry keeps its active boot and the active daemon keeps serving."""

from __future__ import annotations

import json
import sqlite3

import httpx
import psutil
import pytest
from sqlalchemy import select

from bgdeploy.registry.models import Workspace
from tests.conftest import poll_until, run_bgdeploy, write_config
from tests.integration.conftest import deploy, settle


def assert_clean_error(proc, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("Error: ") and needle in proc.stderr, proc.stderr
    assert any(ln.startswith("Hint: ") for ln in lines), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def live(stack, tmp_path):
    app, router = stack(
        flags=["--fault-file", str(tmp_path / "faults-{version}.json")], startup=5, stop=1
    )
    first = deploy(app, "1.0")
    settle(app)
    return app, router, first.boot_id


def serving(router, boot_id: str) -> None:
    resp = httpx.get(router.url + "/", timeout=5)
    assert resp.status_code == 200 and resp.headers["x-bgdeploy-boot"] == boot_id


@pytest.mark.slow
@pytest.mark.parametrize(
    ("faults", "needle"),
    [
        ({"crash_on_start": True}, "exited with code 3 before it became healthy"),
        ({"never_healthy": True}, "did not become healthy within 5s"),
        ({"health_version": "9.9"}, "is the wrong binary"),
        ({"refuse_attach": True}, "refused to attach workspace 'ws-1'"),
    ],
)
def test_candidate_faults_exit_1_and_keep_the_active_serving(live, tmp_path, faults, needle):
    app, router, boot_id = live
    from bgdeploy.control.workspaces import attach

    attach(app, "ws-1")
    (tmp_path / "faults-2.0.json").write_text(json.dumps(faults))
    proc = run_bgdeploy(
        "--config", str(app.config.path), "deploy", "--version", "2.0", cwd=tmp_path
    )
    assert_clean_error(proc, 1, needle)
    assert "Deploy of 2.0 aborted" in proc.stderr and "active boot is unchanged" in proc.stderr
    row = app.registry.deployment("default")
    assert row.state == "idle" and row.active_boot_id == boot_id and needle in row.last_error
    serving(router, boot_id)
    failed = app.registry.boot(f"green-{row.generation}")
    assert failed.state == "failed"
    assert not psutil.pid_exists(failed.pid) or psutil.Process(failed.pid).status() == "zombie"
    with app.registry.reading() as s:
        assert s.get(Workspace, ("default", "ws-1")).boot_id == boot_id


@pytest.mark.slow
def test_attach_refused_records_nothing(live, tmp_path):
    app, router, boot_id = live
    # restart the active boot's version with refuse_attach: deploy 1.1 refusing attaches
    (tmp_path / "faults-1.1.json").write_text(json.dumps({"refuse_attach": True}))
    new = deploy(app, "1.1")
    proc = run_bgdeploy("--config", str(app.config.path), "attach", "ws-9", cwd=tmp_path)
    assert_clean_error(proc, 1, f"Boot {new.boot_id} refused to attach workspace 'ws-9'")
    with app.registry.reading() as s:
        assert list(s.scalars(select(Workspace))) == []
    serving(router, new.boot_id)


@pytest.mark.slow
def test_daemon_that_hangs_on_sigterm_is_killed_by_down(live, tmp_path):
    app, router, _ = live
    (tmp_path / "faults-1.2.json").write_text(json.dumps({"ignore_sigterm": True}))
    hung = deploy(app, "1.2")
    pid = app.registry.boot(hung.boot_id).pid
    proc = run_bgdeploy("--config", str(app.config.path), "down", "--wait", "30", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    poll_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        10,
        what="the hung daemon to be killed",
    )
    assert app.registry.boot(hung.boot_id).exit_code == -9


def test_failing_version_command(tmp_path):
    write_config(tmp_path, '\nversion_command = ["false"]\n')
    proc = run_bgdeploy("deploy", cwd=tmp_path)
    assert_clean_error(proc, 1, "daemon.version_command ['false'] exited with code 1")
    st = json.loads(run_bgdeploy("status", "--json", cwd=tmp_path).stdout)
    assert st["generation"] == 0 and st["active"] is None


def test_registry_from_a_newer_schema(tmp_path):
    write_config(tmp_path)
    assert run_bgdeploy("status", cwd=tmp_path).returncode == 0
    db = tmp_path / ".bgdeploy" / "registry.db"
    conn = sqlite3.connect(db)
    conn.execute("UPDATE alembic_version SET version_num = 'ffff'")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert_clean_error(proc, 1, "schema revision ffff, which this bgdeploy does not know")
    assert db.read_bytes() == before


def test_corrupt_registry(tmp_path):
    write_config(tmp_path)
    assert run_bgdeploy("status", cwd=tmp_path).returncode == 0
    db = tmp_path / ".bgdeploy" / "registry.db"
    data = bytearray(db.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # smash the second page
    db.write_bytes(bytes(data))
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert_clean_error(proc, 1, "registry")
    assert (
        "malformed" in proc.stderr
        or "not a usable" in proc.stderr
        or "could not be read" in proc.stderr
    )
    assert db.read_bytes() == bytes(data)


def test_state_folder_not_writable(tmp_path):
    write_config(tmp_path, "", None)
    path = tmp_path / "bgdeploy.toml"
    path.write_text('state_dir = "/proc/bgdeploy-cannot-exist"\n' + path.read_text())
    proc = run_bgdeploy("status", cwd=tmp_path)
    assert_clean_error(proc, 1, "Cannot create the state folder /proc/bgdeploy-cannot-exist")


def test_rollback_with_nothing_to_go_back_to(tmp_path):
    write_config(tmp_path)
    proc = run_bgdeploy("rollback", cwd=tmp_path)
    assert_clean_error(proc, 1, "There is no previous version to roll back to.")


def test_usage_errors_exit_2(tmp_path):
    write_config(tmp_path)
    proc = run_bgdeploy("deploy", "--wait", "soon", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_bgdeploy("frobnicate", cwd=tmp_path)
    assert proc.returncode == 2 and "No such command" in proc.stderr
    for argv in (
        ["pause", "--max", "0"],
        ["maintenance", "on", "--retry-after", "0"],
        ["maintenance", "sideways"],
        ["promote", "--generation", "zero"],
        ["logs", "blue-1", "--hooks"],
    ):
        proc = run_bgdeploy(*argv, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr)
    assert not (tmp_path / ".bgdeploy").exists()  # a usage error touches nothing


def test_promote_and_abort_with_nothing_held_are_no_ops_that_say_so(tmp_path):
    write_config(tmp_path)
    for verb in ("promote", "abort"):
        proc = run_bgdeploy(verb, cwd=tmp_path)
        assert proc.returncode == 0 and f"{verb} is a no-op" in proc.stdout, proc.stderr
    proc = run_bgdeploy("logs", "--hooks", cwd=tmp_path)
    assert_clean_error(proc, 1, "No hook has run yet")
