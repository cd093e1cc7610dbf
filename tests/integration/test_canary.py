"""Canary routing and the traffic windows, end to end: a real router in front of demo
daemons, a held candidate given a share of new requests by the registry row's
``canary_weight``, and ``/api/traffic`` counting what each boot answered."""

from __future__ import annotations

import random
import re
import zlib

import httpx
import pytest

from bgdeploy.registry.models import Deployment
from tests.conftest import poll_until
from tests.integration.conftest import deploy

KEY = "X-Bgdeploy-Canary-Key"
COOKIE = re.compile(r"^bgdeploy_canary=(\d+); Path=/; SameSite=Lax$")


def set_canary(app, weight: int | None) -> None:
    """What the canary steps do to the row: the held candidate's share of new requests."""
    reg = app.registry
    with reg.writing() as s:
        s.get(Deployment, app.service).canary_weight = weight
        reg.route_changed(s, app.service)


def route(router) -> dict:
    return httpx.get(f"{router.admin_url}/api/route", timeout=5).json()


def boot_of(resp: httpx.Response) -> str:
    assert resp.status_code < 500 or resp.headers.get("x-bgdeploy-boot"), resp.text
    return resp.headers["x-bgdeploy-boot"]


def key_in(low: int, high: int, prefix: str = "k") -> str:
    """A canary key whose bucket is in [low, high)."""
    return next(
        k for i in range(10_000) if low <= zlib.crc32((k := f"{prefix}{i}").encode()) % 100 < high
    )


def canary(stack, weight: int, **kw):
    """A router, 1.0 active, 2.0 held at ready with ``weight`` % of new requests."""
    app, router = stack(**kw)
    active = deploy(app, "1.0").boot_id
    held = deploy(app, "2.0", hold=True)
    assert held.ok and held.held, held.message
    set_canary(app, weight)
    poll_until(lambda: route(router)["canary_weight"] == weight, 10, what="the canary weight")
    return app, router, active, held.boot_id


@pytest.mark.slow
def test_canary_share_is_sticky_by_key_cookie_and_connection(stack):
    app, router, active, candidate = canary(stack, 30)
    url = router.url + "/"
    rng = random.Random(21)
    with httpx.Client(timeout=10) as c:
        # (a) Random keys: the candidate gets its share of them.
        boots = [
            boot_of(c.get(url, headers={KEY: f"{rng.getrandbits(64):x}"})) for _ in range(1000)
        ]
        share = 100 * boots.count(candidate) / len(boots)
        assert set(boots) == {active, candidate}
        assert 25 <= share <= 35, share
        # (b) One key, one side, every time; a key brings no cookie.
        for key, side in ((key_in(0, 30), candidate), (key_in(30, 100), active)):
            answers = [c.get(url, headers={KEY: key}) for _ in range(50)]
            assert {boot_of(a) for a in answers} == {side}
            assert all("set-cookie" not in a.headers for a in answers)
        # ... and one cookie, one side, every time, on fresh connections too.
        for bucket, side in ((7, candidate), (29, candidate), (30, active), (88, active)):
            cookie = {"Cookie": f"other=1; bgdeploy_canary={bucket}"}
            assert {boot_of(c.get(url, headers=cookie)) for _ in range(50)} == {side}
            assert boot_of(httpx.get(url, headers=cookie, timeout=10)) == side
        # A cookie that is not one of ours counts for nothing: the connection decides.
        bad = httpx.get(url, headers={"Cookie": "bgdeploy_canary=100"}, timeout=10)
        assert COOKIE.match(bad.headers["set-cookie"])
        # The preview header reaches the candidate whatever the bucket.
        preview = {"X-Bgdeploy-Preview": "1", KEY: key_in(30, 100)}
        assert boot_of(c.get(url, headers=preview)) == candidate
    # (c) No key, no cookie: the connection's bucket decides, and the answer says which
    # it was, so that the client stays on its side across connections.
    seen = set()
    for _ in range(60):
        first = httpx.get(url, timeout=10)  # a new connection (a new client port) each time
        bucket = int(COOKIE.match(first.headers["set-cookie"]).group(1))
        side = candidate if bucket < 30 else active
        assert boot_of(first) == side
        seen.add(side)
        again = httpx.get(url, headers={"Cookie": f"bgdeploy_canary={bucket}"}, timeout=10)
        assert boot_of(again) == side and "set-cookie" not in again.headers
    assert seen == {active, candidate}  # per connection, not one bucket for 127.0.0.1
    # A bigger step keeps every client of the smaller one on the candidate.
    set_canary(app, 50)
    poll_until(lambda: route(router)["canary_weight"] == 50, 10, what="the next step")
    with httpx.Client(timeout=10) as c:
        for b in range(30):
            assert boot_of(c.get(url, headers={"Cookie": f"bgdeploy_canary={b}"})) == candidate
        # No weight: a held candidate gets preview requests only, and sets no cookie.
        set_canary(app, None)
        poll_until(lambda: route(router)["canary_weight"] == 0, 10, what="the canary to end")
        plain = c.get(url, headers={"Cookie": "bgdeploy_canary=0"})
        assert boot_of(plain) == active and "set-cookie" not in plain.headers
        assert boot_of(httpx.get(url, timeout=10)) == active


@pytest.mark.slow
def test_traffic_window_counts_answers_errors_and_latency_per_boot(stack, tmp_path):
    # The candidate (2.0) answers /probe with 500; the active boot with 200.
    (tmp_path / "faults-2.0.json").write_text('{"probe_status": 500}')
    app, router, active, candidate = canary(
        stack, 30, flags=["--fault-file", str(tmp_path / "faults-{version}.json")]
    )
    traffic = f"{router.admin_url}/api/traffic"
    poll_until(lambda: httpx.get(traffic, timeout=5).json()["span"] > 0, 10, what="two samples")
    before = httpx.get(traffic, params={"window": 300}, timeout=5).json()
    on_candidate, on_active = {KEY: key_in(0, 30)}, {KEY: key_in(30, 100)}
    with httpx.Client(base_url=router.url, timeout=10) as c:
        for _ in range(10):
            assert c.get("/probe", headers=on_candidate).status_code == 500
            assert c.get("/slow?ms=150", headers=on_candidate).status_code == 200
        for _ in range(30):
            assert c.get("/probe", headers=on_active).status_code == 200
        for _ in range(5):
            assert c.get("/no-such-page", headers=on_active).status_code == 404

    def now() -> dict:
        return httpx.get(traffic, params={"window": 300}, timeout=5).json()

    poll_until(
        lambda: {b: f["answers"] for b, f in now()["boots"].items()} == {candidate: 20, active: 35},
        10,
        what="the answers in the traffic window",
    )
    got = now()
    assert got["window"] == 300.0 and got["span"] > 0
    cand, act = got["boots"][candidate], got["boots"][active]
    assert cand["by_class"] == {"2xx": 10, "3xx": 0, "4xx": 0, "5xx": 10}
    assert cand["errors"] == 10 and cand["error_ratio"] == 0.5
    assert act["by_class"] == {"2xx": 30, "3xx": 0, "4xx": 5, "5xx": 0}
    assert act["errors"] == 0 and act["error_ratio"] == 0.0
    assert cand["upstream_errors"] == {} and act["upstream_errors"] == {}
    # Half the candidate's answers slept 150 ms: its p99 is in the 100-250 ms bucket;
    # the active boot answered everything at once.
    assert 100 <= cand["p99_ms"] <= 250 and cand["p50_ms"] <= cand["p99_ms"]
    assert act["p50_ms"] < 100 and act["p99_ms"] < 100
    # A window that ends before the requests saw none of them.
    old = httpx.get(traffic, params={"window": 300, "end": before["end"]}, timeout=5).json()
    assert candidate not in old["boots"] and active not in old["boots"]
    # A bad window is refused.
    assert httpx.get(traffic, params={"window": "x"}, timeout=5).status_code == 400
    assert httpx.get(traffic, params={"window": "-1"}, timeout=5).status_code == 400
    # /metrics has the same answers as a histogram per boot.
    metrics = httpx.get(f"{router.admin_url}/metrics", timeout=5).text
    assert f'bgdeploy_response_seconds_bucket{{boot="{candidate}",le="+Inf"}} 20.0' in metrics
    assert f'bgdeploy_response_seconds_bucket{{boot="{active}",le="+Inf"}} 35.0' in metrics
