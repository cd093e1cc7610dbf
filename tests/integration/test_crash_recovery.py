"""A daemon crash costs only the requests it had in flight (issue 16).

Real router, real demo daemons, real kill -9: four keep-alive GET clients and
one POST client run throughout, and every request's start, end and outcome is
logged (tools/crashload.py), so each kill is judged by what a user saw.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from datetime import UTC

import httpx
import psutil
import pytest

from bgdeploy.control.status import status
from bgdeploy.registry.models import Deployment
from bgdeploy.states import BootState
from bgdeploy.states import DeploymentState as St
from tests.conftest import REPORT, poll_until, run_bgdeploy
from tests.integration.conftest import deploy

crashload = pytest.importorskip("crashload")

CRASH_CONFIG = 'version_file = "VERSION"\ncrash_window = 1.0'


def _active(app):  # noqa: ANN001, ANN202
    row = app.registry.deployment(app.service)
    return row, app.registry.boot(row.active_boot_id)


def _kill_active(app, load, label: str, figures: list) -> str:  # noqa: ANN001
    """kill -9 the active boot under load; wait until another boot serves and the
    deployment is idle again; record what the kill cost."""
    _, boot = _active(app)
    assert boot is not None and boot.pid
    os.kill(boot.pid, signal.SIGKILL)
    # The kill's moment is when the process is gone: a request sent between the signal
    # and the death can still reach it, and is in flight at the kill.
    poll_until(lambda: _gone(boot.pid), 5, interval=0.001, what="the daemon to die")
    at = time.monotonic()
    poll_until(
        lambda: (
            (row := app.registry.deployment(app.service)).active_boot_id != boot.boot_id
            and row.state == St.IDLE
            and load.served_by(row.active_boot_id, at)
        ),
        60,
        interval=0.05,
        what=f"another boot to serve after the kill ({label})",
    )

    figures.append((label, at, boot.boot_id))
    return boot.boot_id


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _long_get(url: str, out: dict) -> None:  # noqa: ANN001
    r = httpx.get(f"{url}/slow?ms=3500", timeout=30)
    out["status"], out["boot"] = r.status_code, r.headers.get("x-bgdeploy-boot")


@pytest.mark.slow
def test_kill_9_of_the_active_daemon_costs_only_its_requests_in_flight(stack, tmp_path):
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra=CRASH_CONFIG, interval=0.5, stable=6)
    deploy(app, "1.0")
    poll_until(lambda: app.registry.deployment(app.service).state == St.IDLE, 30, what="idle")
    load = crashload.CrashLoad("127.0.0.1", app.config.router.port, seconds=240).start()
    kills: list = []
    try:
        poll_until(lambda: load.served_by(_active(app)[1].boot_id, 0), 10, what="load served")
        # 1: while idle: restarted on its exit, not on the next pass.
        _kill_active(app, load, "idle", kills)
        # 2, 3: while switched: back to the warm old boot at once.
        for k in (1, 2):
            old = _active(app)[1].boot_id
            (tmp_path / "VERSION").write_text(f"2.{k}\n")  # installed, as a user deploys
            deploy(app, f"2.{k}")
            row = app.registry.deployment(app.service)
            assert row.state == St.SWITCHED, "the kill must come while switched"
            _kill_active(app, load, f"switched {k}", kills)
            assert _active(app)[1].boot_id == old  # the rollback went to the warm old boot
        # 4, 5: during a finalize's drain (a long request keeps the old boot draining).
        for k in (1, 2):
            old = _active(app)[1].boot_id
            slow: dict = {}
            t = threading.Thread(target=_long_get, args=(router.url, slow), daemon=True)
            t.start()
            poll_until(lambda: load.in_flight(time.monotonic()) >= 0 and router.route(), 5)
            time.sleep(0.2)  # let the long GET reach the old boot before the switch
            # Installed first, as a user deploys: the heal after the kill restarts the
            # version that ran, and no auto-deploy of another installed version follows.
            (tmp_path / "VERSION").write_text(f"3.{k}\n")
            deploy(app, f"3.{k}")
            poll_until(
                lambda: app.registry.boot(old).state == BootState.DRAINING,  # noqa: B023
                30,
                interval=0.02,
                what="the finalize's drain of the old boot",
            )
            _kill_active(app, load, f"drain {k}", kills)
            t.join(30)
            assert slow.get("status") == 200 and slow.get("boot") == old, slow
    finally:
        end = time.monotonic()
        load.stop()
    ends = [at for _, at, _ in kills[1:]] + [end]
    for (label, at, killed), until in zip(kills, ends, strict=True):
        f = load.figures(at, killed, until)
        REPORT.append(f"crash: kill -9 of the active daemon under load ({label}): {f.line()}")
        assert f.failed <= f.in_flight, (label, f)
        assert f.failed_get == 0, (label, f.errors)
        assert f.held_answered == f.held, (label, f, f.errors)
    assert len(kills) == 5
    history = [e["reason"] or "" for e in _history(app)]
    assert any("exit status unknown" in r or "killed by signal" in r for r in history)


def _history(app):  # noqa: ANN001, ANN202
    from bgdeploy.control.status import history

    return history(app)


def _delays(app) -> list[float]:  # noqa: ANN001
    """The crash-loop waits history announced, oldest first."""
    found = []
    for e in reversed(_history(app)):
        m = re.search(r"next start in ([0-9.]+) s", e["reason"] or "")
        if e["event"] == "exit" and m:
            found.append(float(m.group(1)))
    return found


def _restarts_before_their_wait(app) -> list[str]:  # noqa: ANN001
    """Each crash-loop wait history announced, with the restart that began before the
    wait was over (none, when every wait is kept)."""
    early, wait = [], None
    for e in reversed(app.registry.events(app.service, None)):  # oldest first
        at = (e.ts if e.ts.tzinfo else e.ts.replace(tzinfo=UTC)).timestamp()
        m = re.search(r"next start in ([0-9.]+) s", e.reason or "")
        if e.event == "exit" and m:
            wait = (at + float(m.group(1)), e.reason.split(";")[0] + f"; wait {m.group(1)} s")
        elif e.event == "begin" and wait is not None:
            if at < wait[0] - 0.05:
                early.append(f"{wait[1]}: restarted {wait[0] - at:.2f} s early")
            wait = None
    return early


def _left_of_last_wait(app) -> float:  # noqa: ANN001
    """Seconds left of the newest crash-loop wait history announced."""
    for e in app.registry.events(app.service, None):  # newest first, ts to the microsecond
        m = re.search(r"next start in ([0-9.]+) s", e.reason or "")
        if e.event == "exit" and m:
            at = e.ts if e.ts.tzinfo else e.ts.replace(tzinfo=UTC)
            return at.timestamp() + float(m.group(1)) - time.time()
    return 0.0


@pytest.mark.slow
def test_a_daemon_that_exits_after_every_start_backs_off_and_held_requests_get_503(stack, tmp_path):
    (tmp_path / "VERSION").write_text("1.0\n")
    fault = tmp_path / "fault.json"
    app, router = stack(
        flags=["--fault-file", str(fault)],
        daemon_extra='version_file = "VERSION"',
        router_extra="hold_timeout = 2.5",
        interval=0.2,
        stable=2,
    )
    deploy(app, "1.0")
    poll_until(lambda: app.registry.deployment(app.service).state == St.IDLE, 30, what="idle")
    fault.write_text(json.dumps({"exit_after": 0.2}))
    os.kill(_active(app)[1].pid, signal.SIGKILL)
    # Every restart exits 0.2 s after it listens: 0.5 s, 1 s, 2 s, then 4 s, longer
    # than router.hold_timeout (2.5 s).
    poll_until(lambda: len(_delays(app)) >= 4, 60, interval=0.1, what="four crash-loop waits")
    assert _delays(app)[:4] == [0.5, 1.0, 2.0, 4.0]
    assert any("exited with code 7" in (e["reason"] or "") for e in _history(app))
    assert _restarts_before_their_wait(app) == []

    # The 4 s wait exceeds router.hold_timeout: 503 at once, not after the 2.5 s hold.
    # On a loaded machine this poll can see the 4 s wait late, when less than the hold
    # is left of it (the router then rightly holds); the next wait, 8 s, is used then.
    if _left_of_last_wait(app) < 2.5 + 0.5:
        poll_until(lambda: len(_delays(app)) >= 5, 60, interval=0.1, what="a fifth crash-loop wait")
        assert _delays(app)[4] == 8.0
    t0 = time.monotonic()
    r = httpx.get(f"{router.url}/", timeout=30)
    waited = time.monotonic() - t0
    assert r.status_code == 503 and "Retry-After" in r.headers, r.text
    assert "restarting" in r.text
    assert waited < 2.5, waited
    REPORT.append(
        "crash loop (exit 0.2 s after each start): waits "
        + ", ".join(f"{d:g}" for d in _delays(app)[:4])
        + f" s; a request during a wait longer than hold_timeout got 503 after {waited:.2f} s"
    )

    st = run_bgdeploy("--config", str(app.config.path), "status", cwd=tmp_path)
    line = re.search(r"crash-looping: (\d+) exits in (\d+) s, next try in ([0-9.]+) s", st.stdout)
    assert line, st.stdout
    assert int(line.group(1)) >= 5 and float(line.group(3)) <= 30
    assert "exiting with code 7" in st.stdout  # the log's last lines
    doc = run_bgdeploy("--config", str(app.config.path), "doctor", cwd=tmp_path)
    assert "crash-looping:" in doc.stdout and doc.returncode != 0

    # Fixing the cause ends the loop: the next try succeeds and serves.
    fault.unlink()
    poll_until(
        lambda: httpx.get(f"{router.url}/", timeout=30).status_code == 200,
        40,
        interval=0.2,
        what="the next try after the fix to serve",
    )
    poll_until(
        lambda: (
            json.loads(
                run_bgdeploy(
                    "--config", str(app.config.path), "status", "--json", cwd=tmp_path
                ).stdout
            )["crash_loop"]
            is None
        ),
        30,
        interval=0.5,
        what="status to stop saying crash-looping",
    )


@pytest.mark.slow
def test_the_exit_is_noticed_at_once_not_on_the_next_pass(stack, tmp_path):
    """health.interval is 60 s: only the exit watcher can bring the daemon back soon."""
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra='version_file = "VERSION"', interval=60.0)
    first = deploy(app, "1.0").boot_id
    poll_until(lambda: router.route() == first, 10, what="the route")
    os.kill(_active(app)[1].pid, signal.SIGKILL)
    t0 = time.monotonic()
    r = httpx.get(f"{router.url}/", timeout=30)  # held meanwhile, then answered
    assert r.status_code == 200 and r.json()["boot_id"] != first
    assert time.monotonic() - t0 < 30
    exits = [e["reason"] for e in _history(app) if e["event"] == "exit"]
    assert exits and first in exits[0] and "exit status unknown: not our child" in exits[0]


@pytest.mark.slow
def test_an_auto_deployed_version_that_crash_loops_is_a_failed_deploy(stack, tmp_path):
    """2.0 passes its observation, then exits 2.5 s after every start: quarantined, and
    1.0, which ran before the auto-deploy, is deployed again."""
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(
        flags=["--fault-file", str(tmp_path / "fault-{version}.json")],
        daemon_extra='version_file = "VERSION"',
        interval=0.2,
        stable=2,
    )
    deploy(app, "1.0")
    poll_until(lambda: app.registry.deployment(app.service).state == St.IDLE, 30, what="idle")
    (tmp_path / "fault-2.0.json").write_text(json.dumps({"exit_after": 2.5}))
    (tmp_path / "VERSION").write_text("2.0\n")  # the control loop auto-deploys it
    poll_until(
        lambda: "2.0" in app.registry.quarantined_versions(app.service),
        60,
        interval=0.1,
        what="2.0 to be quarantined",
    )
    reasons = [e["reason"] or "" for e in _history(app)]
    assert any("2.0 is crash-looping: 2 exits" in r and "a failed deploy" in r for r in reasons)
    assert any(r.startswith("auto-deploy 2.0 over 1.0") for r in reasons)
    poll_until(
        lambda: httpx.get(f"{router.url}/", timeout=30).json().get("version") == "1.0",
        30,
        interval=0.1,
        what="1.0 to serve again",
    )


@pytest.mark.slow
def test_a_deploy_of_another_version_ends_the_crash_loop(stack, tmp_path):
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(
        flags=["--fault-file", str(tmp_path / "fault-{version}.json")],
        daemon_extra='version_file = "VERSION"',
        interval=0.2,
        stable=2,
    )
    deploy(app, "1.0")
    poll_until(lambda: app.registry.deployment(app.service).state == St.IDLE, 30, what="idle")
    (tmp_path / "fault-1.0.json").write_text(json.dumps({"exit_after": 0.2}))
    os.kill(_active(app)[1].pid, signal.SIGKILL)
    poll_until(lambda: len(_delays(app)) >= 2, 60, interval=0.1, what="a crash loop")
    poll_until(lambda: status(app)["crash_loop"], 30, interval=0.05, what="status: crash loop")
    result = deploy(app, "2.0")
    assert result.ok
    assert status(app)["crash_loop"] is None
    poll_until(
        lambda: httpx.get(f"{router.url}/", timeout=30).json().get("version") == "2.0",
        30,
        interval=0.1,
        what="2.0 to serve",
    )
    with app.registry.reading() as s:
        assert s.get(Deployment, app.service).crash_exits is None  # the series is over
