"""`bgdeploy router reload` and `up` with bad input and bad timing: each gets one sentence,
nothing is lost, and the workers that serve keep serving."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import psutil
import pytest
from loadgen import LoadGen

from bgdeploy import __version__
from bgdeploy.control.router_api import running_router
from bgdeploy.failpoints import ROUTER_FAILPOINTS
from bgdeploy.router import ipc
from bgdeploy.routerd import reload
from tests.conftest import REPO, poll_until, run_bgdeploy
from tests.integration.conftest import free_port, make_app, serve
from tests.integration.test_router_processes import Probe
from tests.integration.test_router_upgrade import install, make_venv, venv_bgdeploy


def worker_pids(admin_url: str) -> list[int]:
    info = httpx.get(f"{admin_url}/api/router", timeout=10).json()
    return sorted(w["pid"] for w in info["workers"] if not w["draining"])


def edit_router(path, **keys: object) -> None:
    """Set keys of [router] in the config file (the test stack writes that table last)."""
    text = path.read_text()
    for key, value in keys.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        if not n:
            text += f"{key} = {value}\n"
    path.write_text(text)


@pytest.mark.slow
def test_reload_checks_the_file_first_and_applies_a_good_one(stack, tmp_path):
    app, router, _ = serve(stack)
    cfg = app.config.path
    good = cfg.read_text()
    before = worker_pids(router.admin_url)

    edit_router(cfg, workers=0)
    bad = run_bgdeploy("--config", str(cfg), "router", "reload", cwd=tmp_path)
    assert bad.returncode == 2 and "`router.workers`" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr

    cfg.write_text(good)
    edit_router(cfg, port=free_port())
    moved = run_bgdeploy("--config", str(cfg), "router", "reload", cwd=tmp_path)
    assert moved.returncode == 2
    assert "`router.port` changed" in moved.stderr and "fixed address" in moved.stderr
    assert worker_pids(router.admin_url) == before  # nothing changed
    assert httpx.get(router.url + "/").status_code == 200

    # A good file: new workers with the new limits (one connection at most).
    cfg.write_text(good)
    edit_router(cfg, max_connections=1)
    ok = run_bgdeploy("--config", str(cfg), "router", "reload", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "Reloaded: new workers" in ok.stdout
    poll_until(lambda: before[0] not in psutil.pids(), 20, what="the old worker to exit")
    after = worker_pids(router.admin_url)
    assert not set(after) & set(before)
    with httpx.Client() as first, httpx.Client() as second:
        assert first.get(router.url + "/").status_code == 200  # holds the one connection
        refused = second.get(router.url + "/")
        assert refused.status_code == 503 and "Too many open connections" in refused.text


@pytest.mark.slow
def test_reload_while_a_deploy_holds_the_lock_exits_3_and_changes_nothing(stack, tmp_path):
    app, router, _ = serve(stack)
    before = worker_pids(router.admin_url)
    lock = app.lock()
    lock.acquire(command="bgdeploy deploy --version 2.0")
    try:
        busy = run_bgdeploy("--config", str(app.config.path), "router", "reload", cwd=tmp_path)
    finally:
        lock.release()
    assert busy.returncode == 3
    assert "bgdeploy deploy --version 2.0" in busy.stderr and f"pid {os.getpid()}" in busy.stderr
    assert worker_pids(router.admin_url) == before
    assert reload(app, wait=30)["ok"]  # and once the deploy is done, the reload goes through


@pytest.mark.slow
def test_reload_onto_a_broken_install_keeps_the_old_router_serving(tmp_path):
    port, admin_port = free_port(), free_port()
    app = make_app(
        tmp_path,
        daemon_extra='version_file = "VERSION"',
        extra=f"\n[router]\nport = {port}\nadmin_port = {admin_port}\n",
    )
    (tmp_path / "VERSION").write_text("1.0\n")
    cfg = app.config.path
    python, site = make_venv(tmp_path / "venv")
    install(site, __version__)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        assert venv_bgdeploy(python, cfg, "up").returncode == 0
        before = httpx.get(f"{admin}/api/router").json()
        load = LoadGen(f"http://127.0.0.1:{port}", clients=4, seconds=120).start()
        probe = Probe(port).start()
        try:
            # Same version, a worker that cannot start: the supervisor stays, so do its workers.
            install(site, __version__)
            (site / "bgdeploy" / "router" / "worker.py").write_text("raise SystemExit(1)\n")
            same = venv_bgdeploy(python, cfg, "router", "reload")
            assert same.returncode == 1
            assert (
                "The router was not reloaded: a new router worker exited at start with code 1; "
                "the old workers keep serving." in same.stderr
            ), same.stderr
            # A new version that cannot start: the new supervisor fails, the old one serves on.
            install(site, "9.9.9")
            (site / "bgdeploy" / "router" / "worker.py").write_text("raise SystemExit(1)\n")
            newer = venv_bgdeploy(python, cfg, "up")
            assert newer.returncode == 1
            assert "the new supervisor exited at start with code 1" in newer.stderr, newer.stderr
            after = httpx.get(f"{admin}/api/router").json()
            assert (after["pid"], after["version"]) == (before["pid"], __version__)
            assert worker_pids(admin) == sorted(w["pid"] for w in before["workers"])
            served = load.stats.requests
            poll_until(lambda: load.stats.requests > served + 100, 20, what="load served on")
        finally:
            stats = load.stop()
            probe.stop()
        assert stats.failures == 0 and probe.refused == 0 and probe.failed == []
        install(site, __version__)  # a good install again: `down` runs from it
    finally:
        venv_bgdeploy(python, cfg, "down")
        app.close()


@pytest.mark.slow
def test_two_ups_at_once_start_one_router(tmp_path):
    port = free_port()
    app = make_app(
        tmp_path,
        daemon_extra='version_file = "VERSION"',
        extra=f"\n[router]\nport = {port}\nadmin_port = {free_port()}\n",
    )
    (tmp_path / "VERSION").write_text("1.0\n")
    argv = [sys.executable, "-m", "bgdeploy", "--config", str(app.config.path), "up"]
    try:
        procs = [
            subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        results = [(p.wait(120), p.stderr.read().decode()) for p in procs]
        codes = sorted(code for code, _ in results)
        # Both served, or the second was told in one sentence who holds the lock.
        assert codes in ([0, 0], [0, 3]), results
        for code, err in results:
            if code == 3:
                assert "held by" in err and "bgdeploy up" in err and "Traceback" not in err
        ns = ipc.namespace(app.config.state_dir)
        supervisors = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "--foreground" in (p.info["cmdline"] or [])
            and str(app.config.path) in p.info["cmdline"]
        ]
        assert len(supervisors) == 1
        assert len(ipc.live_workers(ns)) == 1
        assert httpx.get(f"http://127.0.0.1:{port}/").json()["version"] == "1.0"
    finally:
        run_bgdeploy("--config", str(app.config.path), "down", cwd=tmp_path)
        app.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ROUTER_FAILPOINTS)
def test_supervisor_killed_inside_a_reload_then_up_recovers(stack, tmp_path, name):
    app, router, _ = serve(stack, workers=2, router_env={"BGDEPLOY_FAILPOINT": name})
    ns = ipc.namespace(app.config.state_dir)
    load = LoadGen(router.url, clients=4, seconds=200).start()
    probe = Probe(app.config.router.port).start()
    try:
        # The handover happens when the caller's bgdeploy is another version than the router.
        version = __version__ if name == "reload_after_new_workers" else "another"
        address = ipc.supervisor_address(ns, router.proc.pid)
        with pytest.raises((OSError, ValueError)):
            ipc.request(address, {"cmd": "reload", "version": version}, 60)
        assert router.proc.wait(30) == -signal.SIGKILL
        assert len(ipc.live_workers(ns)) >= 2  # the orphans serve on
        up = run_bgdeploy("--config", str(app.config.path), "up", cwd=tmp_path, timeout=120)
        assert up.returncode == 0, up.stderr
        sup = running_router(app)
        assert sup is not None
        poll_until(lambda: len(ipc.live_workers(ns)) == 2, 30, what="only two workers left")
        assert ipc.live_workers(ns) == worker_pids(router.admin_url)
        served = load.stats.requests
        poll_until(lambda: load.stats.requests > served + 100, 20, what="load served on")
    finally:
        stats = load.stop()
        probe.stop()
        again = running_router(app)
        if again is not None:
            os.kill(again.pid, signal.SIGTERM)
            poll_until(lambda: running_router(app) is None, 30, what="the router to stop")
    assert probe.refused == 0
    assert stats.failures == 0 and probe.failed == [], stats.errors[:5] + probe.failed


@pytest.mark.slow
def test_status_and_doctor_show_the_supervisor_and_each_worker(stack, tmp_path):
    app, router, _ = serve(stack, workers=2)
    for _ in range(10):
        assert httpx.get(router.url + "/").status_code == 200
    cfg = str(app.config.path)
    st = json.loads(run_bgdeploy("--config", cfg, "status", "--json", cwd=tmp_path).stdout)
    r = st["router"]
    assert r["pid"] == router.proc.pid and r["version"] == r["installed_version"] == __version__
    workers = r["workers"]
    assert sorted(w["pid"] for w in workers) == worker_pids(router.admin_url)
    assert sum(w["requests"] for w in workers) >= 10
    assert all(w["version"] == __version__ and w["started"].endswith("Z") for w in workers)
    text = run_bgdeploy("--config", cfg, "status", cwd=tmp_path).stdout
    assert f"supervisor  {router.proc.pid}" in text
    for w in workers:
        assert re.search(rf"worker\s+{w['pid']}\s+{re.escape(__version__)}", text), text
    doctor = json.loads(run_bgdeploy("--config", cfg, "doctor", "--json", cwd=tmp_path).stdout)
    check = next(c for c in doctor["checks"] if c["name"] == "router")
    assert check["status"] == "pass" and "with 2 workers" in check["message"]
    metrics = httpx.get(f"{router.admin_url}/metrics").text
    for w in workers:
        assert f'bgdeploy_worker_requests_total{{pid="{w["pid"]}"}}' in metrics
