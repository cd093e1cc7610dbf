"""Abuse against the router: it keeps serving everyone else and its memory stays bounded."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import httpx
import pytest

from tests.conftest import REPORT, poll_until
from tests.integration.conftest import serve
from tests.integration.test_router import raw


def open_connections(router) -> float:
    """The router's own count, from /metrics."""
    text = httpx.get(router.admin_url + "/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("bgdeploy_open_connections "))
    return float(line.split()[1])


def still_serving(router) -> None:
    resp = httpx.get(router.url + "/", timeout=10)
    assert resp.status_code == 200


@pytest.mark.slow
def test_invalid_chunk_sizes_and_garbage_get_400(served):
    app, router, _ = served
    port = app.config.router.port
    bad_chunk = raw(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ZZ\r\nabc\r\n0\r\n\r\n",
    )
    assert bad_chunk.startswith(b"HTTP/1.1 400 ")
    huge_chunk = raw(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffffff\r\nabc\r\n",
    )
    assert huge_chunk.startswith(b"HTTP/1.1 400 ")
    garbage = raw(port, os.urandom(4096).replace(b"\r\n", b"xx"))
    assert garbage.startswith(b"HTTP/1.1 400 ") or garbage == b""
    still_serving(router)


@pytest.mark.slow
def test_five_thousand_idle_connections(stack):
    # A header timeout longer than the test: with the 1 s of `served`, the first connections
    # were cut with 408 before a loaded machine had opened the last ones.
    app, router, _ = serve(stack, header_timeout=600.0)
    proc = router.worker()
    before = proc.memory_info().rss
    socks = []
    try:
        # In batches no bigger than the listen backlog, so that none is dropped unseen.
        for batch in range(10):
            for _ in range(500):
                s = socket.create_connection(("127.0.0.1", app.config.router.port), timeout=10)
                socks.append(s)
            want = 500 * (batch + 1)
            poll_until(
                lambda want=want: open_connections(router) >= want,
                30,
                what=f"the router to accept {want} connections",
            )
        still_serving(router)
        assert open_connections(router) >= 5000  # all still held, none cut or dropped
        growth = proc.memory_info().rss - before
        REPORT.append(f"abuse: 5000 idle connections, router RSS +{growth / 1e6:.1f} MB")
        assert growth < 100e6
    finally:
        for s in socks:
            s.close()
    still_serving(router)


@pytest.mark.slow
def test_slowloris_clients_are_cut_and_others_served(served):
    app, router, _ = served
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", app.config.router.port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\n")
        socks.append(s)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # dribble a byte now and then
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"X")
            still_serving(router)
            time.sleep(0.2)
        # Each is answered 408 (or reset) at once; a recv that times out (TimeoutError,
        # an OSError too) is a client that was never cut, and fails the test.
        cut = 0
        for s in socks:
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            if data.startswith(b"HTTP/1.1 408 ") or data == b"":
                cut += 1
        assert cut == len(socks)
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_a_client_that_never_reads_does_not_grow_the_router(served):
    app, router, _ = served
    proc = router.worker()
    before = proc.memory_info().rss
    s = socket.create_connection(("127.0.0.1", app.config.router.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.sendall(b"GET /bytes?n=200000000 HTTP/1.1\r\nHost: t\r\n\r\n")  # 200 MB, unread
        time.sleep(0.1)
        for _ in range(20):
            still_serving(router)
        time.sleep(1.0)
        growth = proc.memory_info().rss - before
        REPORT.append(f"abuse: an unread 200 MB response, router RSS +{growth / 1e6:.1f} MB")
        assert growth < 20e6
    finally:
        s.close()
    still_serving(router)
