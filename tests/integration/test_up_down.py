"""`bgdeploy up` / `down` with the real console entry point."""

from __future__ import annotations

import os
import signal

import httpx
import psutil
import pytest

from bgdeploy.control.router_api import running_router
from tests.conftest import poll_until, run_bgdeploy
from tests.integration.conftest import free_port, make_app


@pytest.mark.slow
def test_up_twice_is_a_noop_and_up_after_kill_9_serves_the_same_daemon(tmp_path):
    port = free_port()
    app = make_app(
        tmp_path,
        daemon_extra='version_file = "VERSION"',
        extra=f"\n[router]\nport = {port}\nadmin_port = {free_port()}\n",
    )
    (tmp_path / "VERSION").write_text("1.0\n")
    cfg = str(app.config.path)
    try:
        first = run_bgdeploy("--config", cfg, "up", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "Serving." in first.stdout
        page = httpx.get(f"http://127.0.0.1:{port}/").json()
        assert page["version"] == "1.0"
        router_pid = running_router(app).pid

        again = run_bgdeploy("--config", cfg, "up", cwd=tmp_path)
        assert again.returncode == 0 and "Already up" in again.stdout
        assert running_router(app).pid == router_pid

        os.kill(router_pid, signal.SIGKILL)
        poll_until(
            lambda: (
                not psutil.pid_exists(router_pid) or psutil.Process(router_pid).status() == "zombie"
            ),
            5,
            what="the router to die",
        )
        back = run_bgdeploy("--config", cfg, "up", cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        assert running_router(app).pid != router_pid
        after = httpx.get(f"http://127.0.0.1:{port}/").json()
        assert after["pid"] == page["pid"]  # the same daemon process served on
    finally:
        down = run_bgdeploy("--config", cfg, "down", cwd=tmp_path)
        app.close()
    assert down.returncode == 0 and "router stopped" in down.stdout
    assert not psutil.pid_exists(page["pid"]) or psutil.Process(page["pid"]).status() == "zombie"


@pytest.mark.slow
def test_up_on_a_taken_port_exits_1_naming_the_holder(tmp_path):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    app = make_app(
        tmp_path,
        daemon_extra='version_file = "VERSION"',
        extra=f"\n[router]\nport = {port}\nadmin_port = {free_port()}\n",
    )
    (tmp_path / "VERSION").write_text("1.0\n")
    try:
        proc = run_bgdeploy("--config", str(app.config.path), "up", cwd=tmp_path)
    finally:
        holder.close()
        app.close()
    assert proc.returncode == 1
    assert "the port is taken" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr
