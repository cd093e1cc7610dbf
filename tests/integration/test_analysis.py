"""Rollback on what users see, through the CLI with a real router and demo daemons whose
version string selects their faults: ``-bad`` answers 3 of every 10 ``/`` with 500 (its
/healthz stays fine), ``-slow`` answers ``/`` 300 ms late, anything else is healthy.

Load comes from threads that send each request with a fresh ``X-Bgdeploy-Canary-Key``,
so a canary's share is a share of requests, and record when each was answered and by
which boot, to measure each step's share from the client's side.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from bgdeploy.control.app import App
from bgdeploy.registry.models import Deployment, utcnow
from tests.conftest import REPORT, poll_until
from tests.integration.conftest import deploy, settle
from tests.integration.test_canary import KEY, key_in, route

pytestmark = pytest.mark.slow

ANALYSIS = "\n[analysis]\nwindow = 3\nmin_requests = 20\nmax_wait = 30\n"


@dataclass
class Answer:
    at: float  # unix time, when the answer came
    boot: str
    status: int  # 0: the connection failed


@dataclass
class KeyedLoad:
    """GET / from a few keep-alive clients, each request with a random canary key (or
    ``key``), bounded in time and count."""

    url: str
    clients: int = 3
    seconds: float = 120.0
    max_requests: int = 200_000
    key: str | None = None
    path: str = "/"
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> KeyedLoad:
        deadline = time.monotonic() + self.seconds
        for n in range(self.clients):
            t = threading.Thread(target=self._client, args=(n, deadline), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.answers

    def _client(self, n: int, deadline: float) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        rng = random.Random(n)
        while not self._stop.is_set() and time.monotonic() < deadline:
            if len(self.answers) >= self.max_requests:
                break
            key = self.key or f"{n}-{rng.getrandbits(64)}"
            try:
                conn.request("GET", self.path, headers={"X-Bgdeploy-Canary-Key": key})
                resp = conn.getresponse()
                resp.read()
                got = Answer(time.time(), resp.getheader("X-Bgdeploy-Boot", "?"), resp.status)
            except (OSError, http.client.HTTPException):
                got = Answer(time.time(), "?", 0)
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
            self.answers.append(got)  # list.append is atomic under the GIL
        conn.close()


def history(app: App) -> list:
    return list(reversed(app.registry.events(app.service, limit=200)))


def active_version(app: App) -> str | None:
    row = app.registry.deployment(app.service)
    boot = app.registry.boot(row.active_boot_id) if row.active_boot_id else None
    return boot.version if boot else None


def wait_for_a_baseline(router) -> None:  # noqa: ANN001 - RouterRun
    """The old boot's p99 comes from the window before the switch: let it fill (the
    router sums its figures once a second)."""

    def filled() -> bool:
        seen = httpx.get(f"{router.admin_url}/api/traffic?window=3", timeout=5).json()
        return seen["span"] >= 2 and len(seen["boots"]) == 1

    poll_until(filled, 30, interval=0.2, what="a window of the old boot's answers")


def start_with_load(stack, cli, **kw):  # noqa: ANN001, ANN201
    """A router with 1.0 active (deployed by the CLI) and keyed load already running."""
    app, router = stack(extra=ANALYSIS + kw.pop("extra", ""), **kw)
    cfg = str(app.config.path)
    assert cli("--config", cfg, "deploy", "--version", "1.0").code == 0
    load = KeyedLoad(router.url).start()
    poll_until(lambda: len(load.answers) >= 200, 30, what="load through the router")
    return app, router, cfg, load


def test_bad_answers_after_a_plain_switch_are_rolled_back_by_analysis(stack, cli):
    app, router, cfg, load = start_with_load(stack, cli)
    try:
        res = cli("--config", cfg, "deploy", "--version", "3.0-bad")
        assert res.code == 0, res.out
        switched = time.time()
        poll_until(
            lambda: app.registry.deployment(app.service).state == "idle",
            30,
            what="the analysis rollback",
        )
        rolled = time.time()
        poll_until(
            lambda: sum(a.at > rolled + 1 for a in load.answers) >= 100,
            30,
            what="answers after the rollback",
        )
    finally:
        answers = load.stop()
    assert active_version(app) == "1.0"
    (rb,) = [e for e in history(app) if e.event == "rollback"]
    assert rb.reason.startswith("traffic analysis: 5xx ratio"), rb.reason
    assert "(limit 5%)" in rb.reason, rb.reason
    assert "3.0-bad" in app.registry.quarantined_versions(app.service)
    # The quarantine and its figure are what `status --json` and `history` show.
    status = json.loads(cli("--config", cfg, "status", "--json").out)
    assert status["state"] == "idle" and status["active"]["version"] == "1.0"
    shown = cli("--config", cfg, "history").out
    assert "traffic analysis" in shown
    doctor = cli("--config", cfg, "doctor").out
    assert "3.0-bad" in doctor and "5xx ratio" in doctor, doctor
    failed = [a for a in answers if a.status != 200]
    assert all(a.status == 500 for a in failed)  # the version's own 500s, no 502s
    # Within the window plus a pass or two of reaching min_requests (loaded machine: +5 s).
    (sw,) = [e for e in history(app) if e.event == "switch" and e.generation == rb.generation]
    took = (rb.ts - sw.ts).total_seconds()
    assert took < 3 + 5 and rolled - switched < 3 + 5, (took, rolled - switched)
    after = [a for a in answers if a.at > rolled + 1]
    assert after and all(a.status == 200 for a in after)
    REPORT.append(
        f"analysis: 3.0-bad (30% 500 on /) rolled back {took:.1f} s after the switch;"
        f" {len(failed)} of {len(answers)} requests failed; reason: {rb.reason}"
    )


def test_slow_answers_are_rolled_back_by_the_latency_rule(stack, cli):
    app, router, cfg, load = start_with_load(stack, cli, extra="max_p99_ratio = 2\n")
    try:
        wait_for_a_baseline(router)
        assert cli("--config", cfg, "deploy", "--version", "3.0-slow").code == 0
        poll_until(
            lambda: app.registry.deployment(app.service).state == "idle",
            40,
            what="the latency rollback",
        )
    finally:
        answers = load.stop()
    (rb,) = [e for e in history(app) if e.event == "rollback"]
    assert rb.reason.startswith("traffic analysis: p99"), rb.reason
    assert "the old boot's" in rb.reason and "(limit 2" in rb.reason, rb.reason
    assert active_version(app) == "1.0"
    assert all(a.status == 200 for a in answers)
    REPORT.append(f"analysis: 3.0-slow (+300 ms) rolled back; reason: {rb.reason}")


def shares(answers: list[Answer], start: float, end: float, boot: str) -> tuple[int, float]:
    inside = [a for a in answers if start <= a.at < end]
    return len(inside), sum(a.boot == boot for a in inside) / max(len(inside), 1)


def test_a_canary_of_a_bad_version_is_aborted_at_its_first_step(stack, cli):
    app, router, cfg, load = start_with_load(stack, cli)
    active = app.registry.deployment(app.service).active_boot_id
    try:
        begun = time.time()
        res = cli(
            "--config",
            cfg,
            "deploy",
            "--version",
            "3.0-bad",
            "--canary",
            "10,50",
            "--canary-step",
            "20",
        )
        ended = time.time()
    finally:
        answers = load.stop()
    assert res.code != 0, res.out
    assert "canary step 1/2 (10%) failed: 5xx ratio" in res.err, res.err
    row = app.registry.deployment(app.service)
    assert row.state == "idle" and row.active_boot_id == active
    (abort,) = [e for e in history(app) if e.event == "abort"]
    assert abort.reason.startswith("canary step 1/2 (10%) failed: 5xx ratio"), abort.reason
    assert not [e for e in history(app) if e.event == "canary_step"]  # never reached 50%
    assert "3.0-bad" in app.registry.quarantined_versions(app.service)
    during = [a for a in answers if begun <= a.at <= ended]
    bad = [a for a in during if a.boot not in (active, "?")]
    share = len(bad) / len(during)
    assert share < 0.20, share  # under ~2x the step's 10%
    # The active boot never stopped serving: every answer it gave was a 200.
    assert all(a.status == 200 for a in answers if a.boot == active)
    assert all(a.status != 0 for a in answers)
    REPORT.append(
        f"canary 10,50 of 3.0-bad: aborted at 10% after {ended - begun:.1f} s; it answered "
        f"{share:.1%} of {len(during)} requests meanwhile; reason: {abort.reason}"
    )


def test_a_canary_of_a_good_version_goes_through_its_steps_and_switches(stack, cli):
    app, router, cfg, load = start_with_load(stack, cli, stable=5)
    try:
        res = cli(
            "--config", cfg, "deploy", "--version", "2.0", "--canary", "10,50", "--canary-step", "6"
        )
        assert res.code == 0, res.out
        poll_until(
            lambda: app.registry.deployment(app.service).state == "idle", 40, what="the finalize"
        )
    finally:
        answers = load.stop()
    assert active_version(app) == "2.0"
    events = history(app)
    gen = max(e.generation for e in events)
    mine = {e.event: e for e in events if e.generation == gen}
    assert mine["canary_step"].reason.startswith("canary step 1/2 (10%) passed: "), mine[
        "canary_step"
    ].reason
    assert mine["switch"].reason.startswith("canary step 2/2 (50%) passed: "), mine["switch"].reason
    assert "finalize" in mine
    candidate = mine["switch"].active_boot_id
    steps = [
        (10, mine["candidate_ready"].ts, mine["canary_step"].ts),
        (50, mine["canary_step"].ts, mine["switch"].ts),
    ]
    measured = []
    for weight, start, end in steps:
        # Answers come a little after their route changed: skip the first half second.
        n, share = shares(answers, start.timestamp() + 0.5, end.timestamp(), candidate)
        measured.append(f"{weight}%: {share:.1%} of {n}")
        assert n >= 1000, measured
        assert abs(share * 100 - weight) <= 5, measured
    failed = [a for a in answers if a.status != 200]
    assert failed == []
    REPORT.append(
        f"canary 10,50 of 2.0: {len(answers)} requests, 0 failed; measured share "
        + ", ".join(measured)
    )


def test_one_key_sees_one_version_through_a_canary(stack, cli):
    app, router, cfg, load = start_with_load(stack, cli)
    load.stop()
    active = app.registry.deployment(app.service).active_boot_id
    keys = [key_in(0, 50, f"in-{i}-") for i in range(3)] + [
        key_in(50, 100, f"out-{i}-") for i in range(3)
    ]
    loads = {k: KeyedLoad(router.url, clients=1, key=k).start() for k in keys}
    try:
        res = cli(
            "--config", cfg, "deploy", "--version", "2.0", "--canary", "50", "--canary-step", "4"
        )
        assert res.code == 0, res.out
    finally:
        answers = {k: load.stop() for k, load in loads.items()}
    events = history(app)
    gen = max(e.generation for e in events)
    ready, switch = (
        next(e.ts.timestamp() for e in events if e.generation == gen and e.event == ev)
        for ev in ("candidate_ready", "switch")
    )
    candidate = app.registry.deployment(app.service).active_boot_id
    for key, got in answers.items():
        during = {a.boot for a in got if ready + 0.5 < a.at < switch}
        want = candidate if key.startswith("in-") else active
        assert during == {want}, (key, during)
        assert all(a.status == 200 for a in got)
    REPORT.append(
        f"canary stickiness: 6 keys, {sum(map(len, answers.values()))} requests, each key "
        "answered by one boot until the switch"
    )


def test_promote_skips_the_steps_abort_ends_a_canary_and_pause_holds_both_sides(stack, cli):
    app, router = stack(extra=ANALYSIS)
    cfg = str(app.config.path)
    active = deploy(app, "1.0").boot_id
    first = deploy(app, "2.0", canary=(10, 50), canary_step=600.0)
    assert first.held and first.canary, first.message
    st = json.loads(cli("--config", cfg, "status", "--json").out)
    assert st["canary"]["share"] == 10 and st["canary"]["steps"] == [10, 50]
    # promote: switched at once, the 50% step skipped; the canary is over.
    assert cli("--config", cfg, "promote").code == 0
    row = app.registry.deployment(app.service)
    assert row.state == "switched" and row.active_boot_id == first.boot_id
    assert row.canary_weight is None
    assert not [e for e in history(app) if e.event == "canary_step"]
    settle(app)
    # abort: the candidate stops and the active boot keeps every request.
    second = deploy(app, "3.0", canary=(50,), canary_step=600.0)
    poll_until(lambda: route(router)["canary_weight"] == 50, 10, what="the canary weight")
    assert cli("--config", cfg, "abort", "--reason", "not today").code == 0
    row = app.registry.deployment(app.service)
    assert row.state == "idle" and row.canary_weight is None
    poll_until(lambda: route(router)["canary_weight"] in (None, 0), 10, what="no canary")
    keys = [key_in(0, 50, "a"), key_in(50, 100, "b")]
    with httpx.Client(timeout=10) as c:
        got = {c.get(router.url + "/", headers={KEY: k}).headers["x-bgdeploy-boot"] for k in keys}
    assert got == {first.boot_id}
    assert second.boot_id not in {
        b.boot_id for b in app.registry.boots(app.service, live_only=True)
    }
    # pause: a request for either side waits, and both are answered after resume.
    third = deploy(app, "4.0", canary=(50,), canary_step=600.0)
    poll_until(lambda: route(router)["canary_weight"] == 50, 10, what="the canary weight")
    assert cli("--config", cfg, "pause", "--max", "30").code == 0
    poll_until(lambda: route(router).get("paused"), 10, what="the pause")
    answers: dict[str, str] = {}

    def ask(key: str) -> None:
        r = httpx.get(router.url + "/", headers={KEY: key}, timeout=30)
        answers[key] = r.headers["x-bgdeploy-boot"]

    asking = [threading.Thread(target=ask, args=(k,)) for k in keys]
    for t in asking:
        t.start()
    poll_until(lambda: route(router)["held_requests"] == 2, 10, what="two held requests")
    assert answers == {}
    assert cli("--config", cfg, "resume").code == 0
    for t in asking:
        t.join(timeout=30)
    assert answers == {keys[0]: third.boot_id, keys[1]: first.boot_id}
    assert active != first.boot_id


def test_a_pause_after_the_switch_is_not_the_new_versions_latency(stack, cli):
    """Requests held by `pause` wait as long as the pause; their latency counts from
    their release, so the p99 rule does not roll back a good version for the pause.
    40 clients of a 100 ms page: the ~40 held requests are over 1% of the window's
    answers, so counted from their arrival they would be its p99."""
    app, router = stack(extra=ANALYSIS + "max_p99_ratio = 2\n", stable=5)
    cfg = str(app.config.path)
    assert cli("--config", cfg, "deploy", "--version", "1.0").code == 0
    load = KeyedLoad(router.url, clients=40, path="/slow?ms=100").start()
    try:
        wait_for_a_baseline(router)
        assert cli("--config", cfg, "deploy", "--version", "2.0", "--no-hold").code == 0
        assert cli("--config", cfg, "pause", "--max", "30").code == 0
        poll_until(lambda: route(router)["held_requests"] >= 35, 10, what="held requests")

        def paused_for(seconds: float) -> bool:
            with app.registry.reading() as s:
                since = s.get(Deployment, app.service).paused_ts
            return since is not None and (utcnow() - since).total_seconds() >= seconds

        # A pause an operator takes lasts seconds: 2 s, 20 times the page's 100 ms.
        poll_until(lambda: paused_for(2.0), 10, interval=0.1, what="a 2 s pause")
        assert cli("--config", cfg, "resume").code == 0
        poll_until(
            lambda: app.registry.deployment(app.service).state == "idle", 60, what="the finalize"
        )
    finally:
        answers = load.stop()
    assert active_version(app) == "2.0"
    assert not [e for e in history(app) if e.event == "rollback"], history(app)[-3:]
    assert all(a.status == 200 for a in answers)


def test_canary_and_a_held_deploy_are_refused_together(stack, cli):
    app, router = stack(extra=ANALYSIS)
    cfg = str(app.config.path)
    deploy(app, "1.0")
    res = cli("--config", cfg, "deploy", "--version", "2.0", "--canary", "10", "--hold")
    assert res.code == 1 and "cannot be combined with a held deploy" in res.err, res.err
    assert "--no-hold" in res.err
    row = app.registry.deployment(app.service)
    assert row.generation == 1 and row.state == "idle"  # nothing began
