"""Preview of a held candidate, promote under load, and pause/resume, end to end:
the CLI changes the registry, a real router follows it, demo daemons answer."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from loadgen import LoadGen

from tests.conftest import REPORT, poll_until
from tests.integration.conftest import deploy, free_port

PREVIEW = {"X-Bgdeploy-Preview": "1"}


def route(router) -> dict:
    return httpx.get(f"{router.admin_url}/api/route", timeout=5).json()


def boot_of(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return resp.headers["x-bgdeploy-boot"]


@pytest.mark.slow
def test_held_candidate_answers_preview_requests_only(stack, cli):
    preview_port = free_port()
    app, router = stack(router_extra=f"preview_port = {preview_port}")
    first = deploy(app, "1.0")
    cfg = ("--config", app.config.path)
    held = json.loads(cli(*cfg, "deploy", "--version", "2.0", "--hold", "--json").out)
    assert held["held"]
    poll_until(lambda: route(router)["preview_boot_id"] == held["boot_id"], 5, what="preview")
    preview_url = f"http://127.0.0.1:{preview_port}"
    with httpx.Client(timeout=10) as c:
        # Everyone else still gets the active boot, on both of the router's parsing paths.
        assert {boot_of(c.get(router.url + "/")) for _ in range(20)} == {first.boot_id}
        slow = {"X-Forwarded-For": "10.0.0.1"}  # a head the fast path leaves to httptools
        assert boot_of(c.get(router.url + "/", headers=slow)) == first.boot_id
        assert boot_of(c.get(router.url + "/", headers={"X-Bgdeploy-Preview": "0"})) == (
            first.boot_id
        )
        # The preview header and the preview port reach the candidate.
        assert boot_of(c.get(router.url + "/", headers=PREVIEW)) == held["boot_id"]
        assert boot_of(c.get(router.url + "/", headers={**PREVIEW, **slow})) == held["boot_id"]
        echoed = c.post(router.url + "/echo", headers=PREVIEW, content=b"x" * 5000)
        assert boot_of(echoed) == held["boot_id"] and echoed.content == b"x" * 5000
        assert boot_of(c.get(preview_url + "/")) == held["boot_id"]
        assert c.get(preview_url + "/").json()["version"] == "2.0"
        metrics = c.get(router.admin_url + "/metrics").text
        assert f'bgdeploy_preview_boot_info{{boot="{held["boot_id"]}",generation="2"}} 1.0' in (
            metrics
        )
        dashboard_status = c.get(router.admin_url + "/api/status").json()
        assert dashboard_status["held"] is not None
        assert cli(*cfg, "promote").code == 0
        poll_until(lambda: route(router)["preview_boot_id"] is None, 5, what="preview over")
        # Promoted: everyone gets it; the preview port has nothing held to show.
        assert boot_of(c.get(router.url + "/")) == held["boot_id"]
        assert boot_of(c.get(router.url + "/", headers=PREVIEW)) == held["boot_id"]
        nothing = c.get(preview_url + "/")
        assert nothing.status_code == 503 and "nothing to preview" in nothing.text


@pytest.mark.slow
def test_promote_under_load_fails_no_request(stack, cli):
    app, router = stack()
    first = deploy(app, "1.0")
    cfg = ("--config", app.config.path)
    load = LoadGen(router.url, clients=8, seconds=120).start()
    try:
        poll_until(lambda: load.stats.requests > 200, 30, what="load to flow")
        held = json.loads(cli(*cfg, "deploy", "--version", "2.0", "--hold", "--json").out)
        before = load.stats.requests
        poll_until(lambda: load.stats.requests > before + 200, 30, what="load while held")
        assert load.stats.boots[held["boot_id"]] == 0  # held: no user traffic yet
        res = cli(*cfg, "promote")
        assert res.code == 0, res.err
        poll_until(lambda: load.stats.boots[held["boot_id"]] > 200, 30, what="load on 2.0")
    finally:
        stats = load.stop()
    REPORT.append(
        f"promote under load: {stats.requests} requests, {stats.failures} failed, "
        f"{stats.mismatches} mismatched"
    )
    assert stats.failures == 0 and stats.mismatches == 0, stats.errors
    assert stats.boots[first.boot_id] > 0 and stats.boots[held["boot_id"]] > 0


class Held:
    """Requests sent one by one while paused, each only after the one before is held."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: dict[int, httpx.Response | Exception] = {}
        self.threads: list[threading.Thread] = []

    def send(self, seq: int) -> None:
        def run() -> None:
            try:
                self.answers[seq] = httpx.get(f"{self.url}/?seq={seq}", timeout=60)
            except httpx.HTTPError as e:
                self.answers[seq] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=60)


@pytest.mark.slow
def test_pause_under_load_with_a_deploy_then_resume(stack, cli):
    app, router = stack(flags=["--access-log"])
    first = deploy(app, "1.0")
    cfg = ("--config", app.config.path)
    load = LoadGen(router.url, clients=4, seconds=120).start()
    held = Held(router.url)
    try:
        poll_until(lambda: load.stats.requests > 100, 30, what="load to flow")
        t0 = time.monotonic()
        res = cli(*cfg, "pause", "--max", "60")
        assert res.code == 0 and "held" in res.out
        poll_until(lambda: route(router)["paused"], 5, what="the router to pause")
        # The load's four clients each end up with one request held.
        poll_until(lambda: route(router)["held_requests"] == 4, 10, what="load held")
        for seq in range(10):
            held.send(seq)
            poll_until(lambda s=seq: route(router)["held_requests"] == 5 + s, 10, what="held")
        # A deploy while paused: it checks the candidate directly and switches.
        second = deploy(app, "2.0")
        assert second.ok and route(router)["boot_id"] == second.boot_id
        assert not held.answers  # still held, nothing answered or failed
        st = json.loads(cli(*cfg, "status", "--json").out)
        assert st["pause"]["max_seconds"] == 60
        assert cli(*cfg, "resume").code == 0
        held.join()
        paused_for = time.monotonic() - t0
        poll_until(lambda: load.stats.boots[second.boot_id] > 100, 30, what="load on 2.0")
    finally:
        stats = load.stop()
    REPORT.append(
        f"pause under load: {stats.requests} requests, {len(held.answers)} held in order, "
        f"paused {paused_for:.1f}s with a deploy; {stats.failures} failed"
    )
    assert stats.failures == 0 and stats.mismatches == 0, stats.errors
    answers = [held.answers[seq] for seq in range(10)]
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    assert [boot_of(a) for a in answers] == [second.boot_id] * 10
    # The new boot saw them in the order they arrived at the router.
    with open(app.registry.boot(second.boot_id).log_path) as f:
        seen = [int(line.split("seq=")[1].split()[0]) for line in f if "GET /?seq=" in line]
    assert seen == list(range(10))
    assert app.registry.boot(first.boot_id).state in ("standby", "draining", "stopped")
    events = [e["event"] for e in json.loads(cli(*cfg, "history", "--json").out)]
    assert events.index("resume") < events.index("switch") < events.index("pause")


@pytest.mark.slow
def test_pause_outlasting_max_answers_503_and_survives_a_router_restart(stack, cli):
    app, router = stack()
    boot_id = deploy(app, "1.0").boot_id
    cfg = ("--config", app.config.path)
    # A request in flight when the pause begins finishes while paused.
    slow: list[httpx.Response] = []
    in_flight = threading.Thread(
        target=lambda: slow.append(httpx.get(router.url + "/slow?ms=1500", timeout=30))
    )
    in_flight.start()
    poll_until(lambda: route(router)["inflight"].get(boot_id), 10, what="the slow request")
    assert cli(*cfg, "pause", "--max", "1").code == 0
    poll_until(lambda: route(router)["paused"], 5, what="the router to pause")
    in_flight.join(timeout=30)
    assert slow[0].status_code == 200 and route(router)["paused"]
    t0 = time.monotonic()
    late = httpx.get(router.url + "/", headers={"Accept": "application/json"}, timeout=30)
    waited = time.monotonic() - t0
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    assert "paused" in late.json()["error"] and 0.9 <= waited < 10
    # The pause is in the registry: a new router process starts paused.
    router.stop()
    router.start()
    assert route(router)["paused"]
    assert cli(*cfg, "pause", "--max", "30").code == 0
    held = Held(router.url)
    held.send(0)
    poll_until(lambda: route(router)["held_requests"] == 1, 10, what="held by the new router")
    assert cli(*cfg, "resume").code == 0
    held.join()
    assert held.answers[0].status_code == 200
    assert "Not paused" in cli(*cfg, "resume").out
