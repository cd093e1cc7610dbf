"""The HTTP/1.1 smuggling corpus, through the running router, in the build under test.

For each shape the router must either answer 400 and close, or forward bytes that the
backend (httptools, i.e. llhttp) parses as the same messages the router answered: one
backend message per 200 the client got, in order, with the body the client meant, and
no message the router did not answer (a smuggled request). Each shape hides a request
for ``/s/<n>/smuggled`` where a desynchronised parser would find it.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import httptools
import pytest

from tests.conftest import REPORT
from tests.integration.conftest import serve

HIDDEN = b"GET /s/{n}/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
NEXT = b"GET /s/{n}/next HTTP/1.1\r\nHost: t\r\n\r\n"


def post(n: int, headers: bytes, body: bytes) -> bytes:
    return b"POST /s/%d/a HTTP/1.1\r\nHost: t\r\n%b\r\n%b" % (n, headers, body)


def chunked_with_hidden(n: int, chunks: bytes) -> bytes:
    return chunks + HIDDEN.replace(b"{n}", b"%d" % n)


# (CVE or shape, builder of the bytes for shape number n)
SHAPES = [
    (
        "CVE-2021-22959 space before the colon",
        lambda n: b"GET /s/%d/a HTTP/1.1\r\nHost : t\r\n\r\n" % n,
    ),
    (
        "CVE-2021-22959 TE with a space before the colon, and CL",
        lambda n: post(
            n,
            b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
            chunked_with_hidden(n, b"0\r\n\r\n"),
        ),
    ),
    (
        "CVE-2021-22960 chunk extension",
        lambda n: post(n, b"Transfer-Encoding: chunked\r\n", b'5;a="b"\r\nhello\r\n0\r\n\r\n'),
    ),
    (
        "CVE-2021-22960 control byte in a chunk extension",
        lambda n: post(n, b"Transfer-Encoding: chunked\r\n", b"5;\x01x\r\nhello\r\n0\r\n\r\n"),
    ),
    (
        "CVE-2022-32213 TE 'chunked, identity' with CL",
        lambda n: post(
            n,
            b"Transfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n",
            chunked_with_hidden(n, b"0\r\n\r\n"),
        ),
    ),
    (
        "CVE-2022-32213 TE 'xchunked'",
        lambda n: post(n, b"Transfer-Encoding: xchunked\r\n", chunked_with_hidden(n, b"0\r\n\r\n")),
    ),
    (
        "CVE-2022-32215 TE split over two lines",
        lambda n: post(
            n,
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            chunked_with_hidden(n, b"0\r\n\r\n"),
        ),
    ),
    (
        "CVE-2022-32215 TE folded (obs-fold)",
        lambda n: post(
            n,
            b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n",
            chunked_with_hidden(n, b"0\r\n\r\n"),
        ),
    ),
    ("CVE-2022-32214 bare LF line ends", lambda n: b"GET /s/%d/a HTTP/1.1\nHost: t\n\n" % n),
    (
        "CVE-2022-32214 bare LF in one field",
        lambda n: b"GET /s/%d/a HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n" % n,
    ),
    (
        "CVE-2022-35256 field not ended by CRLF",
        lambda n: post(
            n,
            b"Content-Length: 5\rTransfer-Encoding: chunked\r\n",
            chunked_with_hidden(n, b"0\r\n\r\n"),
        ),
    ),
    (
        "CVE-2022-35256 a line without a colon",
        lambda n: b"GET /s/%d/a HTTP/1.1\r\nHost: t\r\nnot a field\r\n\r\n" % n,
    ),
    (
        "CVE-2023-30589 bare CR in a field",
        lambda n: b"GET /s/%d/a HTTP/1.1\r\nHost: t\rX-Smuggle: 1\r\n\r\n" % n,
    ),
    (
        "CVE-2023-30589 bare CR ending the head",
        lambda n: b"GET /s/%d/a HTTP/1.1\r\nHost: t\r\n\r" % n,
    ),
    (
        "CVE-2024-27982 CL with a space before the colon",
        lambda n: post(n, b"Content-Length : 5\r\n", b"hello"),
    ),
    ("CVE-2024-27982 CL '+5'", lambda n: post(n, b"Content-Length: +5\r\n", b"hello")),
    ("CVE-2024-27982 CL '5 5'", lambda n: post(n, b"Content-Length: 5 5\r\n", b"hello")),
    ("CVE-2024-27982 CL '0x5'", lambda n: post(n, b"Content-Length: 0x5\r\n", b"hello")),
    (
        "CVE-2024-27982 CL folded onto the line before",
        lambda n: post(n, b"X-A: b\r\n Content-Length: 5\r\n", b"hello"),
    ),
    (
        "CVE-2025-22871 bare LF after a chunk size",
        lambda n: post(
            n, b"Transfer-Encoding: chunked\r\n", chunked_with_hidden(n, b"5\nhello\r\n0\r\n\r\n")
        ),
    ),
    (
        "CL and TE together",
        lambda n: post(
            n,
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            chunked_with_hidden(n, b"0\r\n\r\n"),
        ),
    ),
    (
        "two equal Content-Lengths",
        lambda n: post(n, b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
    ),
    (
        "two differing Content-Lengths",
        lambda n: post(n, b"Content-Length: 5\r\nContent-Length: 45\r\n", b"hello" + b"x" * 40),
    ),
    (
        "CL '5, 5' in one field",
        lambda n: post(n, b"Content-Length: 5, 5\r\n", b"hello"),
    ),
    (
        "CVE-2025-55315 lone LF in a chunk extension",
        lambda n: post(
            n,
            b"Transfer-Encoding: chunked\r\n",
            b"2;\nxx\r\n" + chunked_with_hidden(n, b"0\r\n\r\n"),
        ),
    ),
]


def exchange(port: int, payload: bytes, follow: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """Send payload, then (once it is answered) follow on the same connection.

    Returns the answers until the router closes or is silent for 1 s, and whether it
    closed. The shape goes alone in its first read, so the fast path sees it as it is.
    """
    answers: list[tuple[int, bytes]] = []

    class Answer:
        body = b""

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            answers.append((parser.get_status_code(), self.body))
            self.body = b""

    parser = httptools.HttpResponseParser(Answer())
    deadline = time.monotonic() + 20
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(payload)
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return answers, True
            except TimeoutError:
                if follow:
                    s.sendall(follow)
                    follow = b""
                    continue
                return answers, False
            if not data:
                return answers, True
            parser.feed_data(data)
            if answers and follow and answers[-1][0] != 400:
                s.sendall(follow)
                follow = b""
    return answers, False


@pytest.mark.slow
def test_every_smuggling_shape_is_refused_or_framed_alike_on_both_sides(stack, tmp_path):
    record = tmp_path / "record.jsonl"
    backend = Path(__file__).with_name("recording_backend.py")
    app, router, _ = serve(stack, command=[sys.executable, str(backend), str(record)])
    port = app.config.router.port
    refused, forwarded = 0, 0
    for n, (shape, build) in enumerate(SHAPES):
        answers, closed = exchange(port, build(n), NEXT.replace(b"{n}", b"%d" % n))
        seen = [
            m
            for m in map(json.loads, record.read_text().splitlines())
            if m.get("url", "").startswith(f"/s/{n}/")
        ]
        assert answers, f"{shape}: no answer at all"
        statuses = [status for status, _ in answers]
        if 400 in statuses:
            # Refused: the 400 is the last answer and the router closed the connection.
            assert statuses[-1] == 400 and statuses.count(400) == 1, (shape, answers)
            assert closed, f"{shape}: answered 400 but kept the connection open"
            refused += 1
        else:
            forwarded += 1
        # Whatever was forwarded, the backend saw exactly the messages the client was answered.
        ok = [body for status, body in answers if status == 200]
        assert ok == [f"{m['url']} {len(m['body'])}".encode() for m in seen], (shape, answers, seen)
        assert not any(m["url"].endswith("/smuggled") for m in seen), (shape, seen)
        assert set(statuses) <= {200, 400}, (shape, answers)
    errors = [m for m in map(json.loads, record.read_text().splitlines()) if "error" in m]
    assert errors == [], errors
    REPORT.append(
        f"smuggling corpus: {len(SHAPES)} shapes, {refused} refused with 400, "
        f"{forwarded} forwarded framed alike"
    )
