"""Invariant 1: no request through the router fails while the active boot is switched."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from loadgen import LoadGen

from tests.conftest import REPORT
from tests.integration.conftest import deploy

SWITCHES = 10


def read_sse_events(lines, n: int) -> list[dict]:
    """The next n events from an iterator over an SSE stream's lines."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
            if len(events) == n:
                break
    return events


@pytest.mark.slow
def test_ten_switches_under_load_fail_no_request(stack, registry_url):
    app, router = stack(registry_url=registry_url)
    first = deploy(app, "1.0")
    assert first.ok and router.route() == first.boot_id

    load = LoadGen(router.url, clients=8, seconds=240).start()
    try:
        # A stream and a WebSocket opened before the first switch...
        with httpx.Client(timeout=10) as client, client.stream("GET", f"{router.url}/sse") as sse:
            assert sse.headers["x-bgdeploy-boot"] == first.boot_id
            lines = sse.iter_lines()
            assert len(read_sse_events(lines, 2)) == 2

            async def ws_roundtrip(ws, text: str) -> str:
                await ws.send(text)
                return await ws.recv()

            loop = asyncio.new_event_loop()
            ws = loop.run_until_complete(
                websockets.connect(f"ws://127.0.0.1:{app.config.router.port}/ws")
            )
            assert loop.run_until_complete(ws_roundtrip(ws, "before")) == f"{first.boot_id}:before"

            second = deploy(app, "2.0")
            assert router.route() == second.boot_id
            # ...keep working on their boot after the switch,
            later = read_sse_events(lines, 3)
            assert [e["boot_id"] for e in later] == [first.boot_id] * 3
            assert loop.run_until_complete(ws_roundtrip(ws, "after")) == f"{first.boot_id}:after"
            loop.run_until_complete(ws.close())
        # ...while new ones reach the new boot.
        with httpx.Client(timeout=10) as client, client.stream("GET", f"{router.url}/sse") as sse:
            assert read_sse_events(sse.iter_lines(), 1)[0]["boot_id"] == second.boot_id
        ws = loop.run_until_complete(
            websockets.connect(f"ws://127.0.0.1:{app.config.router.port}/ws")
        )
        assert loop.run_until_complete(ws_roundtrip(ws, "new")) == f"{second.boot_id}:new"
        loop.run_until_complete(ws.close())
        loop.close()

        boots = [first.boot_id, second.boot_id]
        for i in range(SWITCHES - 1):
            result = deploy(app, f"{3 + i}.0")  # finalizes (drains, stops) the one before
            assert result.ok
            boots.append(result.boot_id)
    finally:
        stats = load.stop()
    REPORT.append(
        f"zero-downtime ({registry_url.split(':', 1)[0].split('+', 1)[0]}): "
        f"{stats.requests} requests over {SWITCHES} switches: "
        f"{stats.failures} failed, {stats.mismatches} mismatched"
    )
    assert stats.failures == 0, stats.errors
    assert stats.mismatches == 0, stats.errors
    assert stats.requests > 0
    served_by = {b for b, n in stats.boots.items() if n > 0}
    assert len(served_by & set(boots)) >= SWITCHES  # traffic really moved each time
    status = httpx.get(f"{router.admin_url}/api/status").json()
    assert status["active"]["boot_id"] == boots[-1]
