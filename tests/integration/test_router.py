"""Router conformance against real demo daemons (DESIGN section 5)."""

from __future__ import annotations

import os
import signal
import socket

import httpx
import psutil
import pytest

from tests.conftest import poll_until
from tests.integration.conftest import deploy


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def served(stack):
    app, router = stack(header_timeout=1.0)
    result = deploy(app, "1.0")
    return app, router, result.boot_id


@pytest.mark.slow
def test_no_active_boot_is_503(stack):
    app, router = stack()
    resp = httpx.get(router.url + "/")
    assert resp.status_code == 503 and "No active boot" in resp.text


@pytest.mark.slow
def test_forwarding_basics(served):
    app, router, boot_id = served
    port = app.config.router.port
    resp = httpx.get(router.url + "/")
    assert resp.status_code == 200 and resp.headers["x-bgdeploy-boot"] == boot_id
    head = httpx.head(router.url + "/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["x-bgdeploy-boot"] == boot_id
    # chunked request and chunked response (SSE)
    body = b"".join(os.urandom(1000) for _ in range(5))
    echoed = httpx.post(router.url + "/echo", content=iter([body[:2500], body[2500:]]))
    assert echoed.content == body
    sse = httpx.get(router.url + "/sse?count=3")
    assert sse.text.count("data: ") == 3 and sse.headers.get("transfer-encoding") == "chunked"
    # Expect: 100-continue
    reply = raw(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\nhello",
    )
    assert reply.endswith(b"hello") and b" 200 " in reply


@pytest.mark.slow
def test_smuggling_shapes_and_big_heads_are_rejected(served):
    app, router, _ = served
    port = app.config.router.port
    both = raw(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert both.startswith(b"HTTP/1.1 400 ")
    bad_len = raw(port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 12x\r\n\r\n")
    assert bad_len.startswith(b"HTTP/1.1 400 ")
    dup = raw(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    assert dup.startswith(b"HTTP/1.1 400 ")
    huge = raw(port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431 ")
    assert httpx.get(router.url + "/").status_code == 200  # everyone else still served


@pytest.mark.slow
def test_slow_client_is_cut_while_others_are_served(served):
    app, router, _ = served
    with socket.create_connection(("127.0.0.1", app.config.router.port), timeout=10) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # and never the rest
        assert httpx.get(router.url + "/").status_code == 200
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 ")


@pytest.mark.slow
def test_ten_megabytes_stream_both_ways_without_buffering(served):
    app, router, _ = served
    rproc = psutil.Process(router.proc.pid)
    httpx.get(router.url + "/bytes?n=1000")  # warm up
    before = rproc.memory_info().rss
    size = 10 * 1024 * 1024
    down = httpx.get(router.url + f"/bytes?n={size}", timeout=60)
    assert len(down.content) == size

    def chunks():
        block = os.urandom(65536)
        for _ in range(size // 65536):
            yield block

    up = httpx.post(router.url + "/echo", content=chunks(), timeout=60)
    assert len(up.content) == size
    growth = rproc.memory_info().rss - before
    assert growth < size // 2, f"router RSS grew by {growth} bytes"


@pytest.mark.slow
def test_dead_upstream_is_502(served):
    app, router, boot_id = served
    boot = app.registry.boot(boot_id)
    os.killpg(boot.pid, signal.SIGKILL)
    poll_until(
        lambda: not psutil.pid_exists(boot.pid) or psutil.Process(boot.pid).status() == "zombie",
        5,
        what="the daemon to die",
    )
    resp = httpx.get(router.url + "/")
    assert resp.status_code == 502 and "unreachable" in resp.text


@pytest.mark.slow
def test_a_big_body_in_the_same_read_as_its_head_is_not_a_big_head(served):
    """Head and 1 MB of body sent in one write: the body must not count as head (no 431)."""
    app, _, _ = served
    body = os.urandom(1024 * 1024)
    reply = raw(
        app.config.router.port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body,
        timeout=30,
    )
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(body)
