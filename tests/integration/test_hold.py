"""Held deploys, end to end through the CLI: deploy --hold, promote, abort,
deploy.auto_promote = false, fencing, and reconcile dropping a dead held candidate."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from tests.conftest import poll_until
from tests.integration.conftest import deploy


def status(cli, app) -> dict:
    return json.loads(cli("--config", app.config.path, "status", "--json").out)


def held_deploy(cli, app, version: str = "2.0") -> dict:
    res = cli("--config", app.config.path, "deploy", "--version", version, "--hold", "--json")
    assert res.code == 0, res.err
    result = json.loads(res.out)
    assert result["held"] and result["ok"]
    return result


@pytest.mark.slow
def test_held_deploy_waits_at_ready_then_promote_switches_once(stack, cli):
    app, router = stack()
    first = deploy(app, "1.0")
    cfg = ("--config", app.config.path)
    held = held_deploy(cli, app)
    st = status(cli, app)
    assert st["state"] == "ready" and st["generation"] == 2
    assert st["candidate"]["boot_id"] == held["boot_id"] and st["candidate"]["state"] == "healthy"
    assert st["held"]["seconds"] >= 0 and st["held"]["since"].endswith("Z")
    assert "held at ready" in cli(*cfg, "status").out
    # Users still get the active boot; a held candidate is not switched to.
    assert httpx.get(router.url + "/").json()["boot_id"] == first.boot_id
    # A reconcile pass leaves a live held candidate alone.
    cli(*cfg, "reconcile")
    assert status(cli, app)["state"] == "ready"
    # Fencing: a promote for another generation changes nothing and says so.
    stale = cli(*cfg, "promote", "--generation", "1")
    assert stale.code == 0 and "promote is a no-op: it was for generation 1" in stale.out
    assert status(cli, app)["state"] == "ready"
    res = cli(*cfg, "promote")
    assert res.code == 0 and f"2.0 is active on {held['boot_id']}" in res.out
    assert httpx.get(router.url + "/").json()["boot_id"] == held["boot_id"]
    st = status(cli, app)
    assert st["state"] == "switched" and st["held"] is None
    # Repeated: a no-op that says so, nothing switched twice.
    again = cli(*cfg, "promote", "--json")
    assert again.code == 0 and json.loads(again.out)["applied"] is False
    assert "no candidate held" in json.loads(again.out)["message"]
    # Transitions only: `deploy --version 2.0 --hold` also recorded its pin (an intent event).
    history = [
        e
        for e in json.loads(cli(*cfg, "history", "--json").out)
        if e["event"] not in ("pin", "unpin", "up")
    ]
    assert [e["event"] for e in history].count("switch") == 2
    assert history[0]["event"] == "switch" and "promoted after" in history[0]["reason"]
    assert history[1]["event"] == "candidate_ready" and "held at ready" in history[1]["reason"]


@pytest.mark.slow
def test_abort_drops_the_held_candidate_and_records_why(stack, cli):
    app, router = stack()
    first = deploy(app, "1.0")
    cfg = ("--config", app.config.path)
    held = held_deploy(cli, app)
    stale = cli(*cfg, "abort", "--generation", "7", "--reason", "x")
    assert stale.code == 0 and "abort is a no-op" in stale.out
    res = cli(*cfg, "abort", "--reason", "numbers look off")
    assert res.code == 0 and "aborted" in res.out
    st = status(cli, app)
    assert st["state"] == "idle" and st["active"]["boot_id"] == first.boot_id
    assert st["candidate"] is None and "numbers look off" in st["last_error"]
    assert app.registry.boot(held["boot_id"]).state == "failed"
    assert httpx.get(router.url + "/").json()["boot_id"] == first.boot_id
    (ev,) = [e for e in json.loads(cli(*cfg, "history", "--json").out) if e["event"] == "abort"]
    assert "numbers look off" in ev["reason"] and ev["from_state"] == "ready"
    assert "abort is a no-op" in cli(*cfg, "abort").out


@pytest.mark.slow
def test_auto_promote_false_holds_every_deploy(stack, cli):
    app, router = stack(extra="[deploy]\nauto_promote = false\n")
    cfg = ("--config", app.config.path)
    res = cli(*cfg, "deploy", "--version", "1.0")
    assert res.code == 0 and "held at ready" in res.out
    assert status(cli, app)["state"] == "ready"
    assert cli(*cfg, "promote").code == 0
    assert httpx.get(router.url + "/").json()["version"] == "1.0"
    # --no-hold overrides the config for one deploy.
    assert cli(*cfg, "deploy", "--version", "2.0", "--no-hold").code == 0
    assert httpx.get(router.url + "/").json()["version"] == "2.0"


@pytest.mark.slow
def test_reconcile_aborts_a_held_candidate_that_died(stack, cli):
    app, router = stack()
    first = deploy(app, "1.0")
    held = held_deploy(cli, app)
    os.killpg(app.registry.boot(held["boot_id"]).pid, signal.SIGKILL)
    # The router's control loop runs reconcile every health.interval.
    poll_until(lambda: status(cli, app)["state"] == "idle", 20, what="the held deploy aborted")
    st = status(cli, app)
    assert st["active"]["boot_id"] == first.boot_id
    assert f"held candidate {held['boot_id']}" in st["last_error"]
    events = json.loads(cli("--config", app.config.path, "history", "--json").out)
    assert events[0]["event"] == "abort"
