"""Deploy hooks, end to end through the CLI with a real router and demo daemons."""

from __future__ import annotations

import json
import sys
import time

import httpx
import psutil
import pytest

from tests.integration.conftest import deploy

PY = json.dumps(sys.executable)

# A smoke test as an operator would write one: ask the candidate (on the port the hook
# is told) for its version, and fail if it is not the version being deployed, or if
# it is the version this test wants refused.
SMOKE = """
import json, os, sys, urllib.request
port, version = os.environ["BGDEPLOY_CANDIDATE_PORT"], os.environ["BGDEPLOY_CANDIDATE_VERSION"]
seen = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/"))["version"]
print(f"smoke: candidate on {port} reports {seen}", flush=True)
sys.exit(0 if seen == version and version != "2.0-broken" else 4)
"""

# Appends its name and the deployment's fields to a file: which hook ran, when, with what.
RECORD = """
import json, os, sys
fields = {k: v for k, v in os.environ.items() if k.startswith("BGDEPLOY_")}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(fields) + "\\n")
"""

HANG = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)
"""


def hooks_toml(tmp_path, **hooks: str) -> str:
    lines = ["[hooks]", "timeout = 2.0"]
    for name, script in hooks.items():
        path = tmp_path / f"{name}.py"
        path.write_text(script)
        arg = json.dumps(str(tmp_path / f"{name}.out"))
        lines.append(f"{name} = [{PY}, {json.dumps(str(path))}, {arg}]")
    return "\n".join(lines) + "\n"


def records(tmp_path, name: str) -> list[dict]:
    path = tmp_path / f"{name}.out"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_failing_pre_switch_aborts_and_keeps_the_active_boot(stack, cli, tmp_path):
    app, router = stack(extra=hooks_toml(tmp_path, pre_switch=SMOKE))
    first = deploy(app, "1.0")
    cfg = ("--config", app.config.path)
    res = cli(*cfg, "deploy", "--version", "2.0-broken")
    assert res.code == 1
    assert "pre_switch hook exited 4" in res.err and "active boot is unchanged" in res.err
    row = app.registry.deployment(app.service)
    assert row.state == "idle" and row.active_boot_id == first.boot_id
    assert httpx.get(router.url + "/").json()["version"] == "1.0"
    failed = app.registry.boots(app.service)[-1]
    assert failed.version == "2.0-broken" and failed.state == "failed"
    # The hook's output, and its outcome, are in the hook log and in history.
    log = cli(*cfg, "logs", "--hooks")
    assert log.code == 0
    assert "reports 2.0-broken" in log.out and "pre_switch hook exited 4" in log.out
    events = json.loads(cli(*cfg, "history", "--json").out)
    assert any(e["event"] == "hook" and "exited 4" in e["reason"] for e in events)
    # The same gate lets a good version through.
    assert cli(*cfg, "deploy", "--version", "2.0").code == 0
    assert httpx.get(router.url + "/").json()["version"] == "2.0"


@pytest.mark.slow
def test_hanging_hook_is_killed_at_its_timeout(stack, cli, tmp_path):
    app, router = stack(extra=hooks_toml(tmp_path, pre_switch=HANG))
    cfg = ("--config", app.config.path)
    t0 = time.monotonic()
    res = cli(*cfg, "deploy", "--version", "1.0")
    took = time.monotonic() - t0
    assert res.code == 1 and "pre_switch hook was killed after its 2s timeout" in res.err
    pid = int((tmp_path / "pre_switch.out").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert took < 60  # not the hook's 600 s
    assert app.registry.deployment(app.service).active_boot_id is None
    assert "killed after its 2s timeout" in cli(*cfg, "logs", "--hooks").out


@pytest.mark.slow
def test_post_hooks_run_with_the_deployment_fields_and_a_hang_is_only_recorded(
    stack, cli, tmp_path
):
    extra = hooks_toml(
        tmp_path, post_switch=RECORD, post_rollback=RECORD, post_finalize=RECORD
    ).replace("timeout = 2.0", "timeout = 1.0")
    app, router = stack(extra=extra)
    cfg = ("--config", app.config.path)
    assert cli(*cfg, "deploy", "--version", "1.0").code == 0
    assert cli(*cfg, "deploy", "--version", "2.0").code == 0
    switched = records(tmp_path, "post_switch")
    assert [r["BGDEPLOY_ACTIVE_VERSION"] for r in switched] == ["1.0", "2.0"]
    assert switched[1]["BGDEPLOY_HOOK"] == "post_switch"
    assert switched[1]["BGDEPLOY_GENERATION"] == "2" and switched[1]["BGDEPLOY_STATE"] == "switched"
    assert switched[1]["BGDEPLOY_OLD_VERSION"] == "1.0"
    assert switched[1]["BGDEPLOY_ROUTER_URL"] == router.url
    assert cli(*cfg, "rollback", "--reason", "bad numbers").code == 0
    (rolled,) = records(tmp_path, "post_rollback")
    assert rolled["BGDEPLOY_ACTIVE_VERSION"] == "1.0"
    assert rolled["BGDEPLOY_ROLLBACK_REASON"] == "manual: bad numbers"
    assert cli(*cfg, "deploy", "--version", "3.0").code == 0
    # A post_switch hook that hangs is killed and recorded; the deploy still succeeds.
    (tmp_path / "post_switch.py").write_text(HANG)
    res = cli(*cfg, "deploy", "--version", "4.0")
    assert res.code == 0 and httpx.get(router.url + "/").json()["version"] == "4.0"
    # Each deploy over a switched generation finalized it first: generations 1 and 3.
    finalized = records(tmp_path, "post_finalize")
    assert [r["BGDEPLOY_GENERATION"] for r in finalized] == ["1", "3"]
    assert finalized[0]["BGDEPLOY_STATE"] == "idle"
    events = json.loads(cli(*cfg, "history", "--json").out)
    assert any(
        e["event"] == "hook" and "post_switch hook was killed after its 1s timeout" in e["reason"]
        for e in events
    )
