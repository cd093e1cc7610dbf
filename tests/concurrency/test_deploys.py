"""Four `bgdeploy deploy` processes of one version at the same moment: one deploys, the
lifecycle lock keeps the others out (exit 3 naming it) or they find the work done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from bgdeploy.boots import BootProcesses
from bgdeploy.registry.models import Boot
from tests.conftest import REPO
from tests.integration.conftest import deploy, make_app

RACERS = 4


@pytest.mark.slow
def test_racing_deploys_one_switches_the_others_meet_the_lock(tmp_path):
    # The candidate takes 3 s to start, so the winner holds the lock that long: racers
    # released together overlap with it even on a loaded machine.
    app = make_app(tmp_path, flags=["--start-delay", "3"])
    reg = app.registry
    sup = BootProcesses(app.config, reg)
    first = deploy(app, "1.0")
    go = tmp_path / "go"
    worker = Path(__file__).with_name("deploy_worker.py")
    args = ["--config", str(app.config.path), "deploy", "--version", "2.0", "--json"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(go), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(RACERS)
    ]
    try:
        go.touch()
        ended = [(p.pid, p.wait(timeout=120), *p.communicate()) for p in procs]
        switched, done, refused = [], [], []
        for pid, code, out, err in ended:
            assert code in (0, 3), (code, out, err)
            if code == 3:
                refused.append((pid, err))
                continue
            result = json.loads(out)
            assert result["ok"] and result["version"] == "2.0", result
            if "already active" in result["message"]:
                done.append(result)
            else:
                switched.append((pid, result))
        # The race happened: exactly one racer deployed, and at least one other ran into
        # the lock it held (the rest, if any, came after it and found the work done).
        assert len(switched) == 1, ended
        winner, won = switched[0]
        assert refused, f"no racer met the lock; they did not overlap: {ended}"
        for _, err in refused:
            assert "lifecycle lock" in err and f"pid {winner}" in err, err
            assert "bgdeploy deploy --version 2.0" in err, err
        assert all(r["boot_id"] == won["boot_id"] for r in done)
        assert len(switched) + len(done) + len(refused) == RACERS

        # The registry agrees: one new generation, one switch, one active boot (the
        # winner's), the old one kept warm, no other boot started.
        row = reg.deployment("default")
        assert (row.generation, row.state) == (2, "switched")
        assert row.active_boot_id == won["boot_id"] and row.old_boot_id == first.boot_id
        events = [(e.generation, e.event) for e in reg.events("default")]
        assert events.count((2, "begin")) == 1 and events.count((2, "switch")) == 1
        with reg.reading() as s:
            boots = list(s.scalars(select(Boot)))
        assert sorted(b.boot_id for b in boots) == sorted([first.boot_id, won["boot_id"]])
        assert [b.boot_id for b in boots if b.state == "active"] == [won["boot_id"]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for boot in reg.boots("default", live_only=True):
            if sup.is_running(boot):
                sup.stop(boot, timeout=2)
        app.close()
