"""Router conformance against real demo daemons (DESIGN section 5)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket

import httpx
import psutil
import pytest

from bgdeploy.router import ipc
from tests.conftest import poll_until
from tests.integration.conftest import serve


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
    # Heads the fast path must leave to httptools, which refuses them.
    for bad in (
        b"GET / HTTP/1.1\nHost: t\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n",  # space in a name
        b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",  # space before the colon
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",  # NUL in a value
    ):
        assert raw(port, bad).startswith(b"HTTP/1.1 400 "), bad
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


def still_open(sock: socket.socket) -> bool:
    """True while the peer has neither closed nor reset it (and sent nothing)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_a_worker_forwards_while_a_client_of_its_control_socket_is_slow_to_ask(served):
    """A client of a worker's control socket that connects and says nothing stalls neither
    forwarding nor the other control clients: the worker holds it (up to its 10 s) on its
    event loop. Before, it read each question blocking: forwarding stopped for 1 s per
    silent client, which it then dropped."""
    app, router, boot_id = served
    address = ipc.worker_address(ipc.namespace(app.config.state_dir), router.worker().pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(address)
        with httpx.Client(timeout=10.0) as client:
            for _ in range(20):
                resp = client.get(router.url + "/")
                assert resp.status_code == 200 and resp.headers["x-bgdeploy-boot"] == boot_id
        for _ in range(5):  # on new connections too
            resp = httpx.get(router.url + "/", timeout=10.0)
            assert resp.status_code == 200 and resp.headers["x-bgdeploy-boot"] == boot_id
        assert still_open(silent)  # neither waited on nor dropped meanwhile
        # Another client's question is answered while the silent one is held.
        held = poll_until(
            lambda: ipc.request(address, {"cmd": "stats"}, 10.0)[0]["control_clients"] >= 2,
            30,
            what="the worker to answer while it holds the silent client",
        )
        assert held
        # A question over 64 KiB is refused, and the worker answers the next one.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as big:
            big.settimeout(10.0)
            big.connect(address)
            with pytest.raises((BrokenPipeError, ConnectionResetError)):  # closed on it
                big.sendall(b"x" * (1 << 20))
        stats, _ = ipc.request(address, {"cmd": "stats"}, 10.0)
        assert stats["control_requests"]["stats"] >= 2
        assert still_open(silent)


@pytest.mark.slow
def test_ten_megabytes_stream_both_ways_without_buffering(served):
    app, router, _ = served
    rproc = router.worker()
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
@pytest.mark.parametrize("finalized", [False, True], ids=["switched", "idle"])
def test_dead_upstream_is_502(stack, finalized):
    """Down by operator, then the daemon dies: nothing restarts it, so a request gets 502
    at once. (While idle the control loop records the exit as it records a crash; it must
    not make the router hold requests for a restart that never comes.)"""
    app, router, boot_id = serve(stack, header_timeout=1.0, stable=2 if finalized else 1000)
    if finalized:
        poll_until(
            lambda: app.registry.deployment(app.service).state == "idle", 60, what="finalize"
        )
    boot = app.registry.boot(boot_id)
    app.registry.intents.set_run(app.service, "down", "test: a dead upstream stays dead")
    os.killpg(boot.pid, signal.SIGKILL)
    poll_until(
        lambda: not psutil.pid_exists(boot.pid) or psutil.Process(boot.pid).status() == "zombie",
        5,
        what="the daemon to die",
    )
    resp = httpx.get(router.url + "/", timeout=30)
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


def request_on(conn: http.client.HTTPConnection, path: str, headers: list[tuple[str, str]]):
    """One request on a kept-alive connection, with exactly these headers (and Host)."""
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    return resp, json.loads(resp.read())


def names(seen: dict) -> list[str]:
    return [name.lower() for name, _ in seen["headers"]]


def header(seen: dict, name: str) -> list[str]:
    return [v for n, v in seen["headers"] if n.lower() == name]


@pytest.mark.slow
def test_forwarding_headers_added_and_hop_by_hop_stripped(served):
    """Plain heads (the fast path) and heads that need rewriting (the slow path) alike."""
    app, router, boot_id = served
    conn = http.client.HTTPConnection("127.0.0.1", app.config.router.port, timeout=10)
    plain, seen = request_on(conn, "/headers?a=1", [])
    assert plain.status == 200 and seen["path_qs"] == "/headers?a=1"
    host = f"127.0.0.1:{app.config.router.port}"
    assert header(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert header(seen, "x-forwarded-proto") == ["http"]
    assert header(seen, "x-forwarded-host") == [host]
    assert header(seen, "host") == [host]
    assert plain.getheader("X-Bgdeploy-Boot") == boot_id

    # The client's own forwarding and hop-by-hop headers, on the same connection.
    hop = [
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("TE", "trailers"),
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "spoofed.example"),
        ("X-Kept", "yes"),
    ]
    resp, seen = request_on(conn, "/headers", hop)
    assert resp.status == 200
    for gone in ("keep-alive", "proxy-authorization", "te", "connection"):
        assert gone not in names(seen), f"{gone} reached the daemon"
    assert header(seen, "x-forwarded-for") == ["10.1.2.3, 127.0.0.1"]
    assert header(seen, "x-forwarded-proto") == ["http"]
    assert header(seen, "x-forwarded-host") == [host]
    assert header(seen, "x-kept") == ["yes"]

    # Only "Connection: keep-alive" besides plain headers: still cut.
    resp, seen = request_on(conn, "/headers", [("Connection", "keep-alive")])
    assert "connection" not in names(seen) and header(seen, "x-forwarded-for") == ["127.0.0.1"]

    # Hop-by-hop headers of the answer are stripped; our boot header replaces a fake one.
    query = "set=Keep-Alive:timeout%3D5&set=Proxy-Authenticate:Basic&set=X-Bgdeploy-Boot:fake"
    resp, _ = request_on(conn, "/headers?" + query + "&set=X-Kept:1", [])
    assert resp.getheader("Keep-Alive") is None and resp.getheader("Proxy-Authenticate") is None
    assert resp.headers.get_all("X-Bgdeploy-Boot") == [boot_id]
    assert resp.getheader("X-Kept") == "1"
    conn.close()


@pytest.mark.slow
def test_pipelined_requests_and_bodies_in_pieces(served):
    app, _, boot_id = served
    port = app.config.router.port
    body = os.urandom(3000)
    # Three requests in one write: answered in order, on one connection.
    reply = raw(
        port,
        b"GET /headers?n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body
        + b"GET /headers?n=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert reply.count(b"HTTP/1.1 200 ") == 3
    first, second, third = reply.find(b"?n=1"), reply.find(body), reply.find(b"?n=3")
    assert 0 < first < second < third
    assert reply.count(b"X-Bgdeploy-Boot: " + boot_id.encode()) == 3

    # A head, then its Content-Length body in pieces, then a second request.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 1000):
            s.sendall(body[i : i + 1000])
        s.sendall(b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    assert reply.count(b"HTTP/1.1 200 ") == 2 and body in reply
