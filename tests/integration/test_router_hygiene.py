"""The router process over many deploys: it reaps every daemon it started whoever stopped
it, its log says what changed (not every health check), and /metrics drops the series
of stopped boots while the lifetime totals stay."""

from __future__ import annotations

import os
import re
import signal

import httpx
import psutil
import pytest

from tests.conftest import poll_until, run_bgdeploy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def zombies_under(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]


def test_reaped_quiet_and_metrics_of_live_boots_only(stack, tmp_path):
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra='version_file = "VERSION"')
    config = str(app.config.path)
    served = 0

    def get(n: int = 5) -> None:
        nonlocal served
        for _ in range(n):
            assert httpx.get(router.url + "/", timeout=5).status_code == 200
            served += 1

    def deploy(version: str) -> str:
        proc = run_bgdeploy("--config", config, "deploy", "--version", version, "--wait", "30")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return app.registry.deployment(app.service).active_boot_id

    first = deploy("1.0")
    get()
    os.killpg(app.registry.boot(first).pid, signal.SIGKILL)  # the router heals: its child
    healed = poll_until(
        lambda: (
            (b := app.registry.deployment(app.service).active_boot_id) != first
            and router.route() == b
            and b
        ),
        30,
        what="the router to heal",
    )
    healed_pid = app.registry.boot(healed).pid
    assert healed_pid in [c.pid for c in psutil.Process(router.proc.pid).children()]
    (tmp_path / "VERSION").write_text("3.0\n")
    get()
    deploy("2.0")  # the healed boot is the old one, kept warm
    get()
    deploy("3.0")  # this command finishes generation 2: it stops the healed boot
    get()
    assert app.registry.boot(healed).state == "stopped"

    # Reaped by the router's next control pass, though a CLI command stopped it.
    poll_until(
        lambda: healed_pid not in zombies_under(router.proc.pid),
        10,
        what=f"the router to reap pid {healed_pid}",
    )
    assert zombies_under(router.proc.pid) == []

    metrics = httpx.get(router.admin_url + "/metrics", timeout=5).text
    for gone in (first, healed):
        assert f'boot="{gone}"' not in metrics, f"{gone} is stopped but /metrics shows it"
    live = app.registry.deployment(app.service).active_boot_id
    assert re.search(rf'bgdeploy_requests_total\{{boot="{live}",code="200"\}} 5\.0', metrics)
    total = re.search(r'bgdeploy_router_requests_total\{code="200"\} (\d+)', metrics)
    assert total and int(total.group(1)) >= served, metrics

    lines = (tmp_path / "router.log").read_text().splitlines()  # the router's output
    assert not [line for line in lines if " httpx: " in line or "HTTP Request:" in line]
    same = [line for line in lines if re.search(r"route: (\S+) -> \1$", line)]
    assert same == [], same
    assert not [line for line in lines if "1 workers" in line]
    assert any(re.search(rf"route: {first} -> {healed}$", line) for line in lines), lines
