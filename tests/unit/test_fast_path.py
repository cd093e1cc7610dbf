"""The router's fast path may only take heads that httptools takes, framed the same way.

Heads are built from pieces that are valid, nearly valid and hostile (bare LF, folding,
NUL, spaces in names, CL+TE, HTTP/1.0, ...). Whenever the fast path would forward a
head with a Content-Length of L, httptools must parse that head plus L body bytes as
exactly one complete message; when httptools refuses a head, the fast path must too.
"""

from __future__ import annotations

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from bgdeploy.router.client import Limits
from bgdeploy.router.fastpath import plain_request, plain_response

NAMES = [
    b"Host",
    b"host",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"Connection",
    b"Keep-Alive",
    b"TE",
    b"Te",
    b"Expect",
    b"Upgrade",
    b"X-Forwarded-For",
    b"X-Bgdeploy-Boot",
    b"Accept",
    b"X-A",
    b"Bad Name",
    b"X-A ",
    b"",
    b"X\x00",
]
VALUES = [
    b"t",
    b" t ",
    b"0",
    b"5",
    b"05",
    b"-1",
    b"1 2",
    b"12x",
    b"99999999999999999999",
    b"chunked",
    b"keep-alive",
    b"Keep-Alive",
    b"close",
    b"keep-alive, x",
    b"",
    b"a\tb",
    b"a\x00b",
    b"a\x7fb",
    b"\xff\xfe",
    b"100-continue",
]
SEPARATORS = [b"\r\n"] * 24 + [b"\n", b"\r\n ", b"\r"]
REQUEST_LINES = [
    b"GET / HTTP/1.1",
    b"POST /echo?a=1 HTTP/1.1",
    b"DELETE /x HTTP/1.1",
    b"GET / HTTP/1.0",
    b"HEAD / HTTP/1.1",
    b"GET http://h/ HTTP/1.1",
    b"GET /a b HTTP/1.1",
    b"GET /\x00 HTTP/1.1",
    b"get / HTTP/1.1",
]
STATUS_LINES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 404 Not Found",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 101 Switching Protocols",
    b"HTTP/1.1 100 Continue",
    b"HTTP/1.0 200 OK",
    b"HTTP/1.1 200",
    b"HTTP/1.1 2000 OK",
]


# The fields of a plain head: one of the first list, some of the second, in any order,
# and up to three of the pieces above put in among them. So a fair share of the heads
# is plain enough for the fast path (and checked against httptools there), and the
# rest is nearly so.
PLAIN_REQUEST = (
    [(b"Host", b": ", b"t"), (b"host", b":", b"t:8080"), (b"Host", b":  ", b"t \t")],
    [
        (b"Content-Length", b": ", b"5"),
        (b"Accept", b": ", b"*/*"),
        (b"Connection", b": ", b"keep-alive"),
        (b"User-Agent", b": ", b"a/1.0 (b; c)"),
    ],
)
PLAIN_RESPONSE = (
    [
        (b"Content-Length", b": ", b"5"),
        (b"content-length", b":", b"0"),
        (b"Content-Length", b": ", b"05 "),
    ],
    [
        (b"Content-Type", b": ", b"text/plain; charset=utf-8"),
        (b"Connection", b": ", b"keep-alive"),
        (b"Date", b": ", b"Sat, 28 Nov 2026 21:00:00 GMT"),
    ],
)
Field = tuple[bytes, bytes, bytes]


def heads(
    first_lines: list[bytes], plain: tuple[list[Field], list[Field]]
) -> st.SearchStrategy[bytes]:
    one_of, some_of = plain
    piece = st.tuples(
        st.sampled_from(NAMES), st.sampled_from([b": ", b":", b" : "]), st.sampled_from(VALUES)
    )
    plain_fields = st.builds(
        lambda one, some: [one, *some],
        st.sampled_from(one_of),
        st.lists(st.sampled_from(some_of), unique=True),
    ).flatmap(st.permutations)

    def build(first: bytes, fields: list[Field], inserted: list[tuple[int, Field]], seps) -> bytes:  # noqa: ANN001
        fields = list(fields)
        for at, field in inserted:
            fields.insert(at % (len(fields) + 1), field)
        return (
            first
            + b"".join(
                sep + n + colon + v for (n, colon, v), sep in zip(fields, seps, strict=False)
            )
            + b"\r\n\r\n"
        )

    return st.builds(
        build,
        # Half the time one of the first two lines, which are plain; else any.
        st.one_of(st.sampled_from(first_lines[:2]), st.sampled_from(first_lines)),
        plain_fields,
        st.lists(st.tuples(st.integers(0, 8), piece), max_size=3),
        st.lists(st.sampled_from(SEPARATORS), min_size=8, max_size=8),
    )


class Messages:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def request_length(data: bytes) -> int | None:
    """The body length the router's fast path frames this request with, or None."""
    plain = plain_request(data, Limits().max_head)
    return None if plain is None else plain[1]


def response_length(data: bytes) -> int | None:
    """The body length the router's fast path frames this answer with, or None."""
    plain = plain_response(data)
    return None if plain is None else plain[1]


def check_against_httptools(head: bytes, fast_length, parser) -> None:  # noqa: ANN001
    length = fast_length(head)
    messages = Messages()
    try:
        parser(messages).feed_data(head + b"x" * (length or 0))
        refused = False
    except httptools.HttpParserError:
        refused = True
    if length is not None:
        assert not refused, head
        assert messages.complete == 1, head
    if refused:
        assert length is None, head


@settings(max_examples=1500, deadline=None)
@given(heads(REQUEST_LINES, PLAIN_REQUEST))
def test_fast_requests_are_requests_httptools_frames_the_same(head):
    check_against_httptools(head, request_length, httptools.HttpRequestParser)


@settings(max_examples=1500, deadline=None)
@given(heads(STATUS_LINES, PLAIN_RESPONSE))
def test_fast_responses_are_responses_httptools_frames_the_same(head):
    check_against_httptools(head, response_length, httptools.HttpResponseParser)


def test_the_strategies_reach_both_paths():
    """Guard against a test that passes because everything took one path."""
    plain = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n"
    assert request_length(plain) == 5
    chunked = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert request_length(chunked) is None
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
    assert response_length(answer) == 2
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    assert response_length(closing) is None


def share_taking_the_fast_path(strategy: st.SearchStrategy[bytes], length) -> float:  # noqa: ANN001
    taken: list[bool] = []

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(strategy)
    def draw(head: bytes) -> None:
        taken.append(length(head) is not None)

    draw()
    return sum(taken) / len(taken)


def test_the_generated_heads_reach_both_paths():
    """The properties above only check what the fast path takes: a fair share of the
    generated heads must take it (and a fair share must not)."""
    for strategy, length in (
        (heads(REQUEST_LINES, PLAIN_REQUEST), request_length),
        (heads(STATUS_LINES, PLAIN_RESPONSE), response_length),
    ):
        share = share_taking_the_fast_path(strategy, length)
        assert 0.1 <= share <= 0.9, share
