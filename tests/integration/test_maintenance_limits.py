"""Maintenance answers and the router's daemon-side limits (upstream_timeout,
stream_idle_timeout, max_body), end to end through the CLI and a real router."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import poll_until
from tests.integration.conftest import deploy


def route(router) -> dict:
    return httpx.get(f"{router.admin_url}/api/route", timeout=5).json()


def metric(router, name: str, **labels: str) -> float:
    text = httpx.get(router.admin_url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.mark.slow
def test_maintenance_on_and_off_for_browsers_and_json_clients(stack, cli, registry_url):
    # Both registries: a PostgreSQL router learns of the controls by NOTIFY, as of a switch.
    app, router = stack(registry_url=registry_url)
    boot_id = deploy(app, "1.0").boot_id
    cfg = ("--config", app.config.path)
    res = cli(*cfg, "maintenance", "on", "--message", "Back at 5 <pm>", "--retry-after", "120")
    assert res.code == 0 and "Retry-After: 120" in res.out
    poll_until(lambda: route(router)["maintenance"], 5, what="maintenance on")
    with httpx.Client(timeout=10) as c:
        page = c.get(router.url + "/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 503 and page.headers["retry-after"] == "120"
        assert page.headers["content-type"].startswith("text/html")
        assert "Back at 5 &lt;pm&gt;" in page.text and "<h1>" in page.text
        api = c.post(router.url + "/echo", headers={"Accept": "application/json"}, content=b"{}")
        assert api.status_code == 503 and api.headers["retry-after"] == "120"
        assert api.json() == {"error": "Back at 5 <pm>", "retry_after": 120}
        assert metric(router, "bgdeploy_maintenance") == 1
        st = json.loads(cli(*cfg, "status", "--json").out)
        assert st["maintenance"]["message"] == "Back at 5 <pm>"
        assert st["maintenance"]["retry_after"] == 120
        assert "maintenance" in cli(*cfg, "status").out
        assert cli(*cfg, "maintenance", "off").code == 0
        poll_until(lambda: not route(router)["maintenance"], 5, what="maintenance off")
        ok = c.get(router.url + "/")
        assert ok.status_code == 200 and ok.headers["x-bgdeploy-boot"] == boot_id
        assert metric(router, "bgdeploy_maintenance") == 0
    events = [e["event"] for e in json.loads(cli(*cfg, "history", "--json").out)]
    assert events[:2] == ["maintenance_off", "maintenance_on"]


@pytest.mark.slow
def test_a_daemon_that_never_answers_gets_504_at_upstream_timeout(stack):
    app, router = stack(router_extra="upstream_timeout = 1.0\nstream_idle_timeout = 2.5")
    boot_id = deploy(app, "1.0").boot_id
    port = app.config.router.port

    async def events(c: httpx.AsyncClient, every_ms: int, want: int) -> int:
        """How many events of a stream with that pace arrive, up to want."""
        n = 0
        try:
            async with c.stream("GET", f"{router.url}/sse?every={every_ms}") as sse:
                async for line in sse.aiter_lines():
                    n += line.startswith("data: ")
                    if n == want:
                        break
        except httpx.RemoteProtocolError:
            pass  # cut by the router
        return n

    async def scenario() -> None:
        # An idle WebSocket tunnel outlives the upstream timeout.
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws")
        async with httpx.AsyncClient(timeout=30) as c:
            # Streams idle 1.5 s between events live (stream_idle_timeout 2.5 s, not the
            # 1 s upstream_timeout); one idle 5 s is cut after its first event.
            lively = asyncio.create_task(events(c, 1500, 3))
            sleepy = asyncio.create_task(events(c, 5000, 2))
            t0 = time.monotonic()
            hung = await c.get(router.url + "/hang")
            waited = time.monotonic() - t0
            assert hung.status_code == 504 and "no answer within 1s" in hung.text
            assert 0.9 <= waited < 10
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(router.url + "/stall")  # a body that stops part-way: closed
            assert await lively == 3
            assert await sleepy == 1
        await ws.send("still here")
        assert await ws.recv() == f"{boot_id}:still here"
        await ws.close()

    asyncio.run(scenario())
    assert metric(router, "bgdeploy_upstream_errors_total", kind="timeout") == 3
    assert httpx.get(router.url + "/").status_code == 200


@pytest.mark.slow
def test_an_oversized_body_gets_413_and_the_daemon_never_sees_it(stack):
    app, router = stack(router_extra="max_body = 1000", flags=["--access-log"])
    boot = app.registry.boot(deploy(app, "1.0").boot_id)
    with httpx.Client(timeout=10) as c:
        small = c.post(router.url + "/echo", content=b"s" * 1000)
        assert small.status_code == 200 and small.content == b"s" * 1000
        big = c.post(router.url + "/echo", content=b"b" * 5000)
        assert big.status_code == 413 and "larger than 1000 bytes" in big.text
        # A slow-path head (X-Forwarded-For) is checked the same.
        big = c.post(
            router.url + "/echo", content=b"b" * 5000, headers={"X-Forwarded-For": "10.0.0.1"}
        )
        assert big.status_code == 413

        def chunks():
            for _ in range(5):
                yield b"c" * 400

        # A chunked body is cut when it crosses the limit: 413, as here, when the daemon
        # has not answered yet (it reads a whole JSON body first); else a closed connection.
        chunked = c.post(router.url + "/workspaces", content=chunks())
        assert chunked.status_code == 413
    # A body announced as 2 GiB is refused from its head alone.
    with socket.create_connection(("127.0.0.1", app.config.router.port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\n\r\nxx")
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    with open(boot.log_path) as f:
        posts = [line for line in f if line.startswith("POST /echo")]
    assert len(posts) == 1, posts  # only the small one
