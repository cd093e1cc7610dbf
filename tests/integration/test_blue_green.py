"""Blue/green automation with real processes and the real router (DESIGN sections 2 and 7)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from loadgen import LoadGen

from bgdeploy.control.app import App
from bgdeploy.control.deploy import Deployer
from bgdeploy.control.reconcile import Reconciler
from bgdeploy.errors import BootError, OperationFailed
from tests.conftest import REPO, poll_until, run_bgdeploy
from tests.integration.conftest import deploy


@pytest.mark.slow
def test_blue_green_switch_then_health_failures_roll_back(stack, tmp_path):
    """start blue -> candidate green -> switch -> health failures -> rollback, 0 failed."""
    flag = tmp_path / "unhealthy-2.0"
    app, router = stack(
        flags=["--fail-health-file", str(tmp_path / "unhealthy-{version}")],
        interval=0.2,
        threshold=3,
    )
    reg = app.registry
    blue = deploy(app, "1.0")
    row = reg.deployment("default")
    assert (row.generation, row.state, row.active_boot_id) == (1, "switched", blue.boot_id)
    load = LoadGen(router.url, clients=4, seconds=120).start()
    try:
        green = deploy(app, "2.0")
        row = reg.deployment("default")
        assert (row.generation, row.state) == (2, "switched")
        assert (row.active_boot_id, row.old_boot_id, row.candidate_boot_id) == (
            green.boot_id,
            blue.boot_id,
            None,
        )
        assert router.route() == green.boot_id
        poll_until(
            lambda: reg.deployment("default").health_ok_streak >= 2,
            20,
            what="healthy checks of green",
        )
        flag.touch()  # green turns unhealthy after its switch
        unhealthy_since = datetime.now(UTC)
        row = poll_until(
            lambda: (r := reg.deployment("default")).state == "idle" and r.rollback_reason and r,
            30,
            what="the automatic rollback",
        )
        assert row.generation == 2
        assert row.active_boot_id == blue.boot_id and row.old_boot_id is None
        assert row.health_fail_streak == 3
        assert "3 consecutive failed health checks" in row.rollback_reason
        assert row.rollback_ts is not None and row.rollback_ts > row.switch_ts
        # within failure_threshold x interval + 1 s of turning unhealthy (3 x 0.2 + 1)
        assert (row.rollback_ts - unhealthy_since).total_seconds() <= 3 * 0.2 + 1
        poll_until(lambda: router.route() == blue.boot_id, 5, what="the router to follow")
        # rollback_done commits once the route moved; the drain and stop follow, unlocked
        poll_until(
            lambda: reg.boot(green.boot_id).state == "stopped", 15, what="green to be stopped"
        )
        assert reg.quarantined_versions("default") == ["2.0"]
        events = [e.event for e in reversed(reg.events("default"))]
        assert events[-2:] == ["rollback", "rollback_done"]
    finally:
        stats = load.stop()
    assert stats.failures == 0 and stats.mismatches == 0, stats.errors
    assert stats.boots[green.boot_id] > 0 and stats.boots[blue.boot_id] > 0


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--crash-on-start"], "exited with code 3 before it became healthy"),
        (["--never-healthy"], "did not become healthy within 2s"),
        (["--health-version", "6.6"], "wrong binary"),
        (["--refuse-attach"], "refused to attach workspace"),
    ],
)
@pytest.mark.slow
def test_candidate_faults_abort_and_keep_the_active(boots_for, flags, needle):
    b = boots_for(startup=2)
    app = b.app
    first = deploy(app, "1.0")
    from bgdeploy.control.workspaces import attach

    attach(app, "ws-1")
    # Same registry and state, but the next boots start with the fault switch on.
    bad = boots_for(flags=flags, startup=2)
    faulty = App(dataclasses.replace(app.config, daemon=bad.app.config.daemon))
    with pytest.raises(BootError, match=needle):
        deploy(faulty, "2.0")
    row = app.registry.deployment("default")
    assert row.state == "idle" and row.active_boot_id == first.boot_id
    assert needle.split()[0] in row.last_error or needle in row.last_error
    assert b.supervisor.is_running(app.registry.boot(first.boot_id))
    failed = app.registry.boot(f"green-{row.generation}")
    assert failed.state == "failed"


@pytest.mark.slow
def test_quarantined_version_needs_force(boots_for, tmp_path):
    b = boots_for(daemon_extra='version_file = "VERSION"')
    app = b.app
    (tmp_path / "VERSION").write_text("1.0\n")
    deploy(app, "1.0")
    Deployer(app).settle()
    with app.registry.writing() as s:
        from bgdeploy.registry.models import Quarantine

        s.add(Quarantine(service="default", version="2.0", generation=1, reason="test"))
    (tmp_path / "VERSION").write_text("2.0\n")  # installed, but quarantined
    report = Reconciler(app).run()
    assert not any("deploy" in a for a in report.actions), report.actions
    assert app.registry.boot(app.registry.deployment("default").active_boot_id).version == "1.0"
    with pytest.raises(OperationFailed, match="quarantined"):
        deploy(app, "2.0")
    result = deploy(app, "2.0", force=True)
    assert result.ok and app.registry.quarantined_versions("default") == []


@pytest.mark.slow
def test_reconcile_aborts_a_deploy_whose_process_died(boots_for):
    b = boots_for()
    app = b.app
    deploy(app, "1.0")
    row = Deployer(app).settle()  # finalize generation 1
    res = app.registry.transition("default", "begin", generation=row.generation, version="2.0")
    cand = b.supervisor.spawn(res.row.candidate_boot_id)  # then "the CLI died"
    report = Reconciler(app).run()
    assert any("abort generation 2" in a for a in report.actions)
    row = app.registry.deployment("default")
    assert row.state == "idle" and row.candidate_boot_id is None
    assert not b.supervisor.is_running(app.registry.boot(cand.boot_id))


def test_deploy_while_lock_held_exits_3_naming_the_holder(tmp_path):
    from tests.conftest import write_config

    write_config(tmp_path)
    from bgdeploy.control.lock import LifecycleLock

    lock = LifecycleLock(tmp_path / ".bgdeploy", "default")
    lock.acquire(command="bgdeploy deploy --version 9")
    try:
        proc = run_bgdeploy("deploy", "--version", "1.0", cwd=tmp_path)
    finally:
        lock.release()
    assert proc.returncode == 3
    assert "lifecycle lock" in proc.stderr and "bgdeploy deploy --version 9" in proc.stderr
    import os

    assert f"pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_deploys_and_the_control_loop_at_once(stack, tmp_path):
    app, router = stack(daemon_extra='version_file = "VERSION"')
    (tmp_path / "VERSION").write_text("1.0\n")
    deploy(app, "1.0")
    (tmp_path / "VERSION").write_text("2.0\n")  # the control loop wants it too
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bgdeploy", "--config", str(app.config.path), "deploy"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code in (0, 3), (code, out, err)
        if code == 3:
            assert "lifecycle lock" in err
    reg = app.registry
    poll_until(
        lambda: reg.boot(reg.deployment("default").active_boot_id).version == "2.0",
        30,
        what="2.0 to be active",
    )
    switches = [e for e in reg.events("default") if e.event == "switch"]
    per_generation = {}
    for e in switches:
        per_generation[e.generation] = per_generation.get(e.generation, 0) + 1
    assert all(n == 1 for n in per_generation.values()), per_generation
    with reg.reading() as s:
        from sqlalchemy import select

        from bgdeploy.registry.models import Boot

        active = list(s.scalars(select(Boot).where(Boot.state == "active")))
    assert len(active) == 1


def test_reconcile_skips_quietly_when_the_lock_is_busy(tmp_path):
    from bgdeploy.control.lock import LifecycleLock
    from tests.conftest import write_config

    write_config(tmp_path)
    lock = LifecycleLock(tmp_path / ".bgdeploy", "default")
    lock.acquire(command="bgdeploy deploy --version 7")
    try:
        proc = run_bgdeploy("reconcile", cwd=tmp_path)
    finally:
        lock.release()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Skipped: ")
    assert "bgdeploy deploy --version 7" in lines[0]


def test_reconcile_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    from bgdeploy.registry.store import Registry
    from tests.conftest import write_config

    write_config(tmp_path)
    reg = Registry(f"sqlite:///{tmp_path / '.bgdeploy' / 'registry.db'}")
    reg.transition("default", "begin", generation=0, version="1.0")  # its deployer "died"
    before = reg.deployment("default")
    reg.close()
    dry = run_bgdeploy("reconcile", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "would abort generation 1" in dry.stdout
    reg = Registry(f"sqlite:///{tmp_path / '.bgdeploy' / 'registry.db'}")
    assert reg.deployment("default") == before
    reg.close()
    real = run_bgdeploy("reconcile", cwd=tmp_path)
    assert real.returncode == 0 and "abort generation 1" in real.stdout
    reg = Registry(f"sqlite:///{tmp_path / '.bgdeploy' / 'registry.db'}")
    row = reg.deployment("default")
    assert row.state == "idle" and row.candidate_boot_id is None
    reg.close()


@pytest.mark.slow
def test_a_new_installed_version_that_already_runs_ends_the_pin(boots_for, tmp_path):
    """Pinned to 2.0 while 1.0 was installed; 2.0 is installed: the pin ends (history
    intent_ended), so a later install of 1.0 is deployed again, not held by the pin."""
    b = boots_for(daemon_extra='version_file = "VERSION"')
    app = b.app
    (tmp_path / "VERSION").write_text("1.0\n")
    deploy(app, "2.0")
    Deployer(app).settle()
    app.registry.intents.pin("default", "2.0", "1.0", "bgdeploy deploy --version 2.0")
    (tmp_path / "VERSION").write_text("2.0\n")
    Reconciler(app).run()
    assert app.registry.intents.read("default").mode == "installed"
    assert any(e.event == "intent_ended" for e in app.registry.events("default"))
