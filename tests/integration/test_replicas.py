"""Replicas (daemon.replicas = N): a boot is a set of daemon processes behind the
router, balanced, healed one at a time, switched, scaled and rolled back as a set.

Real daemon processes, a real router on loopback, a real SQLite registry; the load
is tools/crashload.py's keep-alive clients (GET /slow?ms=20 and POST /echo), whose
answers name the process that served them.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from bgdeploy.control.status import status
from bgdeploy.processes import process_matches
from bgdeploy.states import DeploymentState as St
from tests.conftest import REPORT, poll_until, run_bgdeploy
from tests.integration.conftest import deploy, settle

crashload = pytest.importorskip("crashload")

TWO = "replicas = 2"


def _active(app):  # noqa: ANN001, ANN202
    return app.registry.boot(app.registry.deployment(app.service).active_boot_id)


def _replicas(app, boot_id: str):  # noqa: ANN001, ANN202
    return [r for r in app.registry.replicas.rows(boot_id) if r.state != "stopped"]


def _serving_pids(app, boot_id: str) -> set[int]:  # noqa: ANN001
    return {r.pid for r in _replicas(app, boot_id) if r.state == "serving"}


def _idle(app) -> None:  # noqa: ANN001
    poll_until(lambda: app.registry.deployment(app.service).state == St.IDLE, 30, what="idle")


def _shares(counts: dict[int, int], pids: set[int]) -> dict[int, float]:
    total = sum(counts.get(p, 0) for p in pids)
    return {p: counts.get(p, 0) / total for p in pids} if total else {}


def _no_503(load) -> None:  # noqa: ANN001
    bad = [r for r in load.failures() if r.status == 503]
    assert not bad, [f"{r.method} {r.status} {r.error}" for r in bad[:5]]


@pytest.mark.slow
def test_a_deploy_of_a_two_replica_service_under_load_fails_nothing_and_balances(stack):
    app, router = stack(daemon_extra=TWO)
    first = deploy(app, "1.0")
    old = _serving_pids(app, first.boot_id)
    assert len(old) == 2
    load = crashload.CrashLoad("127.0.0.1", app.config.router.port, seconds=120).start()
    try:
        poll_until(lambda: len(load.log) > 200, 20, what="load before the deploy")
        result = deploy(app, "2.0")
        settle(app)
        switched_at = time.monotonic()
        new = _serving_pids(app, result.boot_id)
        assert len(new) == 2 and not new & old
        poll_until(
            lambda: sum(load.answered_by(switched_at).get(p, 0) for p in new) >= 1000,
            60,
            what="1000 answers from the new set",
        )
    finally:
        load.stop()
    assert not load.failures(), [f"{r.method} {r.status} {r.error}" for r in load.failures()[:5]]
    counts = load.answered_by(switched_at)
    shares = _shares(counts, new)
    assert all(0.3 <= s <= 0.7 for s in shares.values()), shares
    total = sum(counts.get(p, 0) for p in new)
    REPORT.append(
        f"replicas: deploy of a 2-replica set under load: {len(load.log)} requests, 0 failed; "
        f"the new set's {total} answers split " + " / ".join(f"{s:.0%}" for s in shares.values())
    )
    st = status(app)
    assert st["active"]["boot_id"] == result.boot_id and len(st["active"]["replicas"]) == 2


@pytest.mark.slow
def test_kill_9_of_one_replica_under_load_fails_no_get_and_no_request_waits(stack):
    app, router = stack(daemon_extra=TWO + "\ncrash_window = 1.0", interval=0.2, stable=2)
    boot = deploy(app, "1.0")
    _idle(app)
    victim = _replicas(app, boot.boot_id)[1]
    load = crashload.CrashLoad("127.0.0.1", app.config.router.port, seconds=120).start()
    try:
        poll_until(lambda: len(load.answered_by()) == 2, 20, what="both replicas answering")
        os.kill(victim.pid, signal.SIGKILL)
        poll_until(lambda: not process_matches(victim.pid, victim.pid_create_time), 5, 0.001)
        at = time.monotonic()
        in_flight = load.in_flight(at)
        # The first exit of a series restarts at once: back in rotation with a new pid.
        poll_until(
            lambda: any(
                r.replica == victim.replica and r.state == "serving" and r.pid != victim.pid
                for r in _replicas(app, boot.boot_id)
            ),
            30,
            what="the killed replica back in rotation",
        )
        back_at = time.monotonic()
        back = next(r for r in _replicas(app, boot.boot_id) if r.replica == victim.replica)
        poll_until(lambda: load.answered_by(back_at).get(back.pid, 0) > 20, 20, what="it serves")
    finally:
        load.stop()
    failed = load.failures()
    assert all(r.method == "POST" for r in failed), [f"{r.method} {r.error}" for r in failed]
    assert len(failed) <= in_flight, (len(failed), in_flight)
    _no_503(load)
    row = app.registry.deployment(app.service)
    assert row.active_boot_id == boot.boot_id  # no heal: the same boot
    assert app.registry.marks.snapshot(app.service).healing_ts is None  # nothing held
    history = [e.reason or "" for e in app.registry.events(app.service, None)]
    assert any(f"replica {victim.replica} of boot {boot.boot_id}" in h for h in history)
    REPORT.append(
        f"replicas: kill -9 of one of 2 replicas under load: {len(load.log)} requests, "
        f"failed {len(failed)} (all POST, {in_flight} in flight), no 503; back in rotation "
        f"after {back_at - at:.1f} s"
    )


@pytest.mark.slow
def test_scale_3_then_1_under_load_fails_nothing(stack, tmp_path):
    app, router = stack(stable=2)
    boot = deploy(app, "1.0")
    _idle(app)
    load = crashload.CrashLoad("127.0.0.1", app.config.router.port, seconds=120).start()
    cfg = str(app.config.path)
    try:
        poll_until(lambda: len(load.log) > 100, 20, what="load")
        up = run_bgdeploy("--config", cfg, "scale", "3", "--json", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["replicas"] == 3
        three = _serving_pids(app, boot.boot_id)
        assert len(three) == 3
        at = time.monotonic()
        poll_until(
            lambda: all(load.answered_by(at).get(p, 0) >= 30 for p in three),
            30,
            what="all three replicas answering",
        )
        down = run_bgdeploy("--config", cfg, "scale", "1", cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        assert "runs 1 replica (was 3)" in down.stdout
        one = _serving_pids(app, boot.boot_id)
        assert len(one) == 1
        gone = three - one
        assert not any(psutil.pid_exists(p) and process_matches_pid(p) for p in gone)
        at = time.monotonic()
        poll_until(lambda: sum(load.answered_by(at).values()) >= 100, 20, what="load after")
        assert set(load.answered_by(at)) == one
    finally:
        load.stop()
    assert not load.failures(), [f"{r.method} {r.status} {r.error}" for r in load.failures()[:5]]
    st = run_bgdeploy("--config", cfg, "status", "--json", cwd=tmp_path)
    doc = json.loads(st.stdout)
    assert doc["active"]["boot_id"] == boot.boot_id and len(doc["active"]["replicas"]) == 1
    # The count is the intent's: the next boot starts one replica too.
    assert "scale to 1" in " ".join(e.reason or "" for e in app.registry.events(app.service, None))
    REPORT.append(f"replicas: scale 1 -> 3 -> 1 under load: {len(load.log)} requests, 0 failed")


def process_matches_pid(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_two_replica_set_that_fails_its_health_checks_is_rolled_back_as_a_set(stack, tmp_path):
    fault = tmp_path / "fault-{version}.json"
    (tmp_path / "fault-2.0.json").write_text(json.dumps({"fail_health_after": 1.5}))
    app, router = stack(
        flags=["--fault-file", str(fault)], daemon_extra=TWO, interval=0.2, threshold=3, stable=25
    )
    old = deploy(app, "1.0")
    _idle(app)
    old_pids = _serving_pids(app, old.boot_id)
    new = deploy(app, "2.0")
    new_pids = _serving_pids(app, new.boot_id)
    assert len(new_pids) == 2
    poll_until(
        lambda: (
            app.registry.deployment(app.service).state == St.IDLE
            and app.registry.deployment(app.service).active_boot_id == old.boot_id
        ),
        30,
        what="the rollback to the old set",
    )
    row = app.registry.deployment(app.service)
    assert "consecutive failed health checks" in (row.rollback_reason or "")
    assert "replicas healthy" in (row.rollback_reason or "")
    assert _serving_pids(app, old.boot_id) == old_pids  # the warm old set, unchanged
    poll_until(
        lambda: not any(process_matches_pid(p) for p in new_pids), 30, what="new set stopped"
    )
    REPORT.append(f"replicas: a failing 2-replica set rolled back: {row.rollback_reason}")


@pytest.mark.slow
def test_workspaces_attach_on_every_replica_and_one_refusal_aborts_the_deploy(stack, tmp_path):
    fault = tmp_path / "fault-{version}.json"
    app, router = stack(
        flags=["--fault-file", str(fault).replace("{version}", "{version}-{replica}")],
        daemon_extra=TWO,
        stable=2,
    )
    boot = deploy(app, "1.0")
    cfg = str(app.config.path)
    attach = run_bgdeploy("--config", cfg, "attach", "ws-1", cwd=tmp_path)
    assert attach.returncode == 0, attach.stderr
    for rep in _replicas(app, boot.boot_id):
        assert _attached_on(rep.port, "ws-1"), rep.replica
    # Replica 1 of 2.0 refuses: the deploy aborts, 1.0 keeps serving, nothing is bound to 2.0.
    (tmp_path / "fault-2.0-1.json").write_text(json.dumps({"refuse_attach": True}))
    res = run_bgdeploy("--config", cfg, "deploy", "--version", "2.0", cwd=tmp_path)
    assert res.returncode != 0
    assert "Replica 1 of boot" in res.stderr and "refused to attach" in res.stderr, res.stderr
    assert _active(app).boot_id == boot.boot_id
    assert app.registry.workspaces.bindings(app.service) == {"ws-1": boot.boot_id}


def _attached_on(port: int, workspace: str) -> bool:
    import httpx

    r = httpx.get(f"http://127.0.0.1:{port}/workspaces", timeout=5)
    return workspace in r.text


@pytest.mark.slow
def test_a_replica_that_fails_its_checks_is_restarted_while_the_other_serves(stack, tmp_path):
    unhealthy = tmp_path / "unhealthy-{replica}"
    app, router = stack(
        flags=["--fail-health-file", str(unhealthy)],
        daemon_extra=TWO + "\ncrash_window = 1.0",
        interval=0.2,
        threshold=3,
        stable=2,
        startup=2,
    )
    boot = deploy(app, "1.0")
    _idle(app)
    first = {r.replica: r.pid for r in _replicas(app, boot.boot_id)}
    (tmp_path / "unhealthy-1").touch()
    poll_until(
        lambda: any(
            e.event == "replica-out" and "replica 1 of" in (e.reason or "")
            for e in app.registry.events(app.service, None)
        ),
        20,
        what="replica 1 taken out",
    )
    # Replica 0 still serves every request meanwhile: the boot is not healed or held.
    for _ in range(20):
        r = httpx_get(router.url + "/")
        assert r.status_code == 200 and r.json()["pid"] == first[0]
    (tmp_path / "unhealthy-1").unlink()
    poll_until(
        lambda: any(
            r.replica == 1 and r.state == "serving" and r.pid != first[1]
            for r in _replicas(app, boot.boot_id)
        ),
        30,
        what="replica 1 restarted and back in rotation",
    )
    row = app.registry.deployment(app.service)
    assert row.active_boot_id == boot.boot_id and row.state == St.IDLE
    assert _serving_pids(app, boot.boot_id) >= {first[0]}


def httpx_get(url: str):  # noqa: ANN201
    import httpx

    return httpx.get(url, timeout=10)
