"""The admin listener speaks HTTP/1.1 through a real router: HEAD, pipelining, methods."""

from __future__ import annotations

import json
import socket

import pytest

from tests.integration.conftest import serve


@pytest.fixture
def admin(stack) -> tuple[int, str]:
    """(the admin port, the active boot id) of a router in front of an active boot."""
    app, _, boot_id = serve(stack)
    return app.config.router.admin_port, boot_id


def talk(port: int, data: bytes) -> bytes:
    """Send data in one write and read until the listener closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def answers(
    data: bytes, methods: list[bytes]
) -> list[tuple[int, bytes, dict[bytes, bytes], bytes]]:
    """Split a stream of answers as the client that sent ``methods`` must: by
    Content-Length, and no body after the head of an answer to HEAD.
    Each answer is (status, head, lower-cased headers, body); nothing may be left over."""
    out = []
    for method in methods:
        end = data.index(b"\r\n\r\n") + 4
        head, data = data[:end], data[end:]
        status_line, *lines = head[:-4].split(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 "), head
        fields = dict(line.split(b": ", 1) for line in lines)
        headers = {name.lower(): value for name, value in fields.items()}
        length = 0 if method == b"HEAD" else int(headers[b"content-length"])
        body, data = data[:length], data[length:]
        out.append((int(status_line.split()[1]), head, headers, body))
    assert data == b"", f"bytes after the last answer: {data[:200]!r}"
    return out


def request(method: bytes, path: bytes, close: bool = False) -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (
        method,
        path,
        b"Connection: close\r\n" if close else b"",
    )


@pytest.mark.slow
def test_head_answers_the_get_head_without_a_body(admin):
    port, _ = admin
    for path in (b"/", b"/api/route", b"/nowhere"):
        (get,) = answers(talk(port, request(b"GET", path, close=True)), [b"GET"])
        (head,) = answers(talk(port, request(b"HEAD", path, close=True)), [b"HEAD"])
        # The same head byte for byte (Content-Length of the GET body), and no body.
        assert head[1] == get[1], path
        assert int(head[2][b"content-length"]) == len(get[3]) > 0, path
        assert head[3] == b""


@pytest.mark.slow
def test_pipelined_requests_are_answered_in_order(admin):
    """One write of nine requests; the status and history answers come from a thread,
    the others at once, and still every answer comes in its request's place."""
    port, boot_id = admin
    sent = [
        (b"HEAD", b"/api/status"),
        (b"GET", b"/metrics"),
        (b"HEAD", b"/"),
        (b"GET", b"/api/history"),
        (b"GET", b"/api/route"),
        (b"HEAD", b"/metrics"),
        (b"DELETE", b"/api/route"),
        (b"GET", b"/nowhere"),
        (b"GET", b"/api/status"),
    ]
    data = b"".join(request(m, p) for m, p in sent) + request(b"GET", b"/", close=True)
    methods = [m for m, _ in sent] + [b"GET"]
    got = answers(talk(port, data), methods)
    assert [status for status, *_ in got] == [200, 200, 200, 200, 200, 200, 405, 404, 200, 200]
    types = [headers[b"content-type"].split(b";")[0] for _, _, headers, _ in got]
    assert types == [
        b"application/json",
        b"text/plain",
        b"text/html",
        b"application/json",
        b"application/json",
        b"text/plain",
        b"text/plain",
        b"text/plain",
        b"application/json",
        b"text/html",
    ]
    assert b"bgdeploy_requests" in got[1][3]
    assert isinstance(json.loads(got[3][3]), list)  # the history
    assert json.loads(got[4][3])["boot_id"] == boot_id  # the route
    assert got[6][2][b"allow"] == b"GET, HEAD"
    assert json.loads(got[8][3])["active"]["boot_id"] == boot_id  # the status
    assert int(got[2][2][b"content-length"]) == len(got[9][3])  # HEAD / and GET /
    assert got[9][2][b"connection"] == b"close"


@pytest.mark.slow
def test_methods_it_does_not_allow_are_405_with_allow(admin):
    port, _ = admin
    # PROPFIND is known to the parser, FROB and get (methods are case-sensitive) are not.
    for method in (b"POST", b"PROPFIND", b"FROB", b"get"):
        (got,) = answers(talk(port, request(method, b"/api/status", close=True)), [method])
        assert got[0] == 405, method
        assert got[2][b"allow"] == b"GET, HEAD", method


@pytest.mark.slow
def test_what_follows_an_upgrade_or_a_close_is_not_answered(admin):
    port, _ = admin
    upgrade = b"GET /api/route HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
    for first in (upgrade, request(b"GET", b"/api/route", close=True)):
        (got,) = answers(talk(port, first + request(b"GET", b"/metrics")), [b"GET"])
        assert got[0] == 200 and got[2][b"connection"] == b"close"


@pytest.mark.slow
def test_a_client_pipelining_without_bound_is_cut_off(admin):
    port, _ = admin
    got = talk(port, request(b"GET", b"/api/status") * 1000)
    assert 0 < got.count(b"HTTP/1.1 200 ") < 1000
    assert got.rstrip().endswith(b"too many pipelined requests")


@pytest.mark.slow
def test_the_supervisors_answers_in_process_are_the_admin_answers(tmp_path):
    """info(), route() and traffic(), called from the control loop's thread, return what
    /api/router, /api/route and /api/traffic answer (see supervisor_answers.py)."""
    import subprocess
    import sys

    from tests.conftest import REPO, poll_until
    from tests.integration.conftest import free_port, make_app, stop_orphaned_workers

    app = make_app(
        tmp_path,
        extra=f"\n[router]\nport = {free_port()}\nadmin_port = {free_port()}\nworkers = 2\n",
    )
    result = tmp_path / "answers.json"
    with open(tmp_path / "router.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.supervisor_answers",
                str(app.config.path),
                str(result),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        poll_until(result.exists, 90, what="the supervisor's answers")
        proc.wait(timeout=30)  # it stops itself once it has written them
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop_orphaned_workers(app)
    answers = json.loads(poll_until(lambda: result.read_text(), 5, what="the answers' file"))
    assert "error" not in answers, answers
    for name in ("info", "route", "traffic"):
        mine, admin = answers[name]
        if name == "info":  # the HTTP answer counts its own request; nothing else differs
            assert admin.pop("admin_requests") > mine.pop("admin_requests") >= 0
            # Nor do the workers, but for what they were asked meanwhile: the supervisor's
            # questions (these two answers' among them) and the registry watch's checks.
            for m, a in zip(mine["workers"], admin["workers"], strict=True):
                for key in ("control_requests", "registry_checks", "registry_reads"):
                    asked, asked_later = m.pop(key), a.pop(key)
                    if key == "control_requests":
                        assert asked_later["stats"] > asked["stats"] >= 1, (asked, asked_later)
                    else:
                        assert asked_later >= asked >= 0, (key, asked, asked_later)
        assert mine == admin, name
    info, route, traffic = answers["info"][0], answers["route"][0], answers["traffic"][0]
    assert len(info["workers"]) == 2 and {w["build"] for w in info["workers"]} <= {
        "compiled",
        "pure-python",
    }
    assert route["requests_total"] == 3 and route["boot_id"] is None
    assert sum(f["answers"] for f in traffic["boots"].values()) == 3, traffic
