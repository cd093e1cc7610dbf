"""Richer health checks, end to end: `bgdeploy deploy` against a demo daemon whose
/probe endpoint has expectations; each [health] expectation passes when met, and
when not met the deploy aborts with a reason naming the expectation."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import make_app

PROBE = "/probe"

# case -> (daemon flags, [health] lines that pass, lines that fail, the failure's reason)
CASES = {
    "method": (
        ["--probe-method", "POST"],
        'method = "POST"',
        "",
        "GET /probe answered 405, expected status 200-299",
    ),
    "headers": (
        ["--probe-header", "X-Token:s3cret"],
        'headers = { X-Token = "s3cret" }',
        'headers = { X-Token = "wrong" }',
        "GET /probe answered 401, expected status 200-299",
    ),
    "host": (
        ["--probe-host", "myapp.local"],
        'host = "myapp.local"',
        "",
        "GET /probe answered 421, expected status 200-299",
    ),
    "expect_status list": (
        ["--probe-status", "204"],
        "expect_status = [200, 204]",
        "expect_status = [200, 201]",
        "GET /probe answered 204, expected status 200, 201",
    ),
    "expect_status range": (
        ["--probe-status", "302"],
        'expect_status = "300-399"',
        "",
        "GET /probe answered 302, expected status 200-299",
    ),
    "expect_body substring": (
        ["--probe-body", "all systems go"],
        'expect_body = "systems go"',
        'expect_body = "systems down"',
        "but the body does not contain 'systems down'",
    ),
    "expect_body regex": (
        ["--probe-body", "queue depth 7"],
        'expect_body = "re:depth [0-9]+$"',
        'expect_body = "re:depth [0-9]+ items"',
        "but the body does not match the regular expression 'depth [0-9]+ items'",
    ),
}


def deploy_json(cli, app) -> tuple[int, dict]:
    res = cli("--config", app.config.path, "deploy", "--version", "1.0", "--json")
    return res.code, json.loads(res.out)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_health_expectation_met_passes(cli, tmp_path, case):
    flags, passing, _, _ = CASES[case]
    app = make_app(tmp_path, flags=flags, health_path=PROBE, health_extra=passing, startup=20)
    try:
        code, result = deploy_json(cli, app)
        assert code == 0, result
        assert app.registry.deployment(app.service).active_boot_id == result["boot_id"]
    finally:
        cli("--config", app.config.path, "down")
        app.close()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_health_expectation_not_met_says_which(cli, tmp_path, case):
    flags, _, failing, reason = CASES[case]
    app = make_app(tmp_path, flags=flags, health_path=PROBE, health_extra=failing, startup=6)
    try:
        code, result = deploy_json(cli, app)
        assert code == 1 and not result["ok"]
        assert reason in result["message"]
        status = json.loads(cli("--config", app.config.path, "status", "--json").out)
        assert status["active"] is None and reason in status["last_error"]
    finally:
        cli("--config", app.config.path, "down")
        app.close()


@pytest.mark.slow
def test_startup_interval_paces_the_candidate_checks(cli, tmp_path):
    """A candidate that is never healthy is asked every startup_interval, not every
    interval: its access log counts the probes within startup_timeout."""
    app = make_app(
        tmp_path,
        flags=["--probe-status", "503", "--access-log"],
        health_path=PROBE,
        health_extra="startup_interval = 0.5",
        startup=3.0,
        interval=0.05,
    )
    try:
        code, result = deploy_json(cli, app)
        assert code == 1
        boot = app.registry.boots(app.service)[-1]
        with open(boot.log_path) as f:
            probes = sum("/probe 503" in line for line in f)
        # 3 s of checks 0.5 s apart is at most 7; at the 0.05 s interval it would be dozens.
        assert 1 <= probes <= 8, probes
    finally:
        cli("--config", app.config.path, "down")
        app.close()
