"""The README's gunicorn example, as written: a Flask app under gunicorn with 2 workers.

Deploys under load fail no request (one by the CLI, one the router's control loop
starts by itself); after `down` no gunicorn process is left, and none was ever a
zombie under the router."""

from __future__ import annotations

import json
import os
import sys

import psutil
import pytest
from loadgen import LoadGen

from bgdeploy.processes import processes_of_state_dir
from tests.conftest import REPORT, poll_until, run_bgdeploy
from tests.integration.conftest import free_port, free_port_block
from tests.integration.test_wheel_install import readme_block

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def gunicorns(state_dir) -> list[psutil.Process]:  # noqa: ANN001
    return [p for p in processes_of_state_dir(state_dir) if "gunicorn" in " ".join(p.cmdline())]


def zombies_under(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]


def test_flask_under_gunicorn_deploys_without_a_failed_request(tmp_path):
    pytest.importorskip("flask")
    pytest.importorskip("gunicorn")
    (tmp_path / "app.py").write_text(readme_block("Your app under gunicorn", "python"))
    toml = readme_block("Your app under gunicorn", "toml")
    assert '".venv/bin/gunicorn"' in toml and '"--workers", "2"' in toml
    low, high = free_port_block(10)
    port, admin = free_port(), free_port()
    # The README's config, on ports free here; the app's venv is this one (dev extras).
    toml = toml.replace("[daemon]\n", f"[daemon]\nport_range = [{low}, {high}]\n", 1)
    toml += f"\n[router]\nport = {port}\nadmin_port = {admin}\n\n[health]\ninterval = 0.3\n"
    (tmp_path / "bgdeploy.toml").write_text(toml)
    (tmp_path / ".venv").symlink_to(sys.prefix)
    (tmp_path / "VERSION").write_text("1.0\n")
    state_dir = tmp_path / ".bgdeploy"

    def bgdeploy(*args: str) -> str:
        proc = run_bgdeploy("--config", str(tmp_path / "bgdeploy.toml"), *args, cwd=tmp_path)
        assert proc.returncode == 0, f"bgdeploy {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def status() -> dict:
        return json.loads(bgdeploy("status", "--json"))

    try:
        bgdeploy("up")
        router_pid = status()["router"]["pid"]
        assert len(gunicorns(state_dir)) == 3  # the master and its 2 workers
        load = LoadGen(f"http://127.0.0.1:{port}", clients=4, seconds=120, post_every=10**9)
        load.start()
        try:
            poll_until(lambda: load.stats.requests > 50, 30, what="load to flow")
            (tmp_path / "VERSION").write_text("2.0\n")  # the router's control loop deploys it
            poll_until(
                lambda: (st := status())["active"]["version"] == "2.0" and st["state"] == "idle",
                90,
                what="the control loop to deploy and finalize 2.0",
            )
            (tmp_path / "VERSION").write_text("3.0\n")
            assert "3.0 is" in bgdeploy("deploy", "--wait", "60")
            poll_until(lambda: status()["state"] == "idle", 60, what="3.0 to finalize")
            seen = load.stats.requests
            poll_until(lambda: load.stats.requests > seen + 50, 30, what="load on 3.0")
        finally:
            stats = load.stop()
        REPORT.append(
            f"gunicorn example: {stats.requests} requests through 2 deploys, "
            f"{stats.failures} failed, {stats.mismatches} mismatched"
        )
        assert stats.failures == 0 and stats.mismatches == 0, stats.errors
        assert len(stats.boots) >= 3, stats.boots  # 1.0, 2.0 and 3.0 each served
        assert status()["active"]["version"] == "3.0"
        # 2.0 was the router's child, and stopped: reaped, not a zombie.
        poll_until(lambda: zombies_under(router_pid) == [], 10, what="no zombie under the router")
        assert len(gunicorns(state_dir)) == 3
        bgdeploy("down")
        assert gunicorns(state_dir) == [], "down left gunicorn processes"
        assert not psutil.pid_exists(router_pid) or (
            psutil.Process(router_pid).status() == psutil.STATUS_ZOMBIE
        )
    finally:
        for proc in processes_of_state_dir(state_dir):
            proc.kill()
        if os.path.exists(tmp_path / ".venv"):
            os.unlink(tmp_path / ".venv")
