"""Boots started at the same moment from several processes never share a port."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bgdeploy.boots import BootProcesses
from tests.conftest import poll_until, run_together
from tests.integration.conftest import make_app

WORKERS = 4
PER_WORKER = 3


@pytest.mark.slow
def test_simultaneous_boots_get_distinct_ports_and_all_serve(tmp_path):
    app = make_app(tmp_path)
    app.registry.deployment("default")  # migrate before the race
    go = tmp_path / "go"
    worker = Path(__file__).with_name("port_worker.py")
    argv = [str(app.config.path), str(PER_WORKER), str(go)]
    outputs = run_together(worker, [argv] * WORKERS, go, timeout=120)
    started = [boot for out in outputs for boot in json.loads(out)]
    sup = BootProcesses(app.config, app.registry)
    try:
        ports = [b["port"] for b in started]
        assert len(ports) == WORKERS * PER_WORKER
        assert len(set(ports)) == len(ports), sorted(ports)
        # and each boot really serves on its own port
        for b in started:
            page = poll_until(lambda b=b: _get(b["port"]), 20, what=f"{b['boot_id']} to serve")
            assert page["boot_id"] == b["boot_id"]
    finally:
        for b in started:
            boot = app.registry.boot(b["boot_id"])
            sup.stop(boot, timeout=2)
        app.close()


def _get(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).json()
    except httpx.HTTPError:
        return None
