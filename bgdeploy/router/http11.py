"""The HTTP/1.1 head rules: which headers a proxy drops or rewrites, and the answers it makes.

A request head that httptools parsed is rebuilt by ``request_head``; an answer's
fields are sorted by ``response_fields`` (the framing is then the exchange's
decision). Hop-by-hop headers never cross the router; our own framing and
forwarding headers replace whatever the other side sent.
"""

from __future__ import annotations

from httptools import HttpParserError

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# What to do with a header, by lower-case name; a name absent here is passed on as it is.
DROP, HOST, XFF, TE, LENGTH, UPGRADE = range(6)
REQUEST_HEADERS = {name: DROP for name in HOP_BY_HOP} | {
    b"x-forwarded-proto": DROP,
    b"x-forwarded-host": DROP,
    b"host": HOST,
    b"x-forwarded-for": XFF,
    b"transfer-encoding": TE,
    b"content-length": LENGTH,
    b"upgrade": UPGRADE,
}
RESPONSE_HEADERS = {name: DROP for name in HOP_BY_HOP} | {
    b"x-bgdeploy-boot": DROP,
    b"transfer-encoding": TE,
    b"content-length": LENGTH,
    b"upgrade": UPGRADE,
    b"connection": UPGRADE,  # kept on a 101 answer only
}
STATUS_LINES: dict[tuple[int, bytes], bytes] = {}  # "HTTP/1.1 200 OK\r\n", made once

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def request_head(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    upgrade: bool,
    forwarded: bytes,
) -> tuple[bytes, bool]:
    """The head to forward for a parsed request, and whether its body is chunked.

    ``forwarded`` is what follows the client's own X-Forwarded-For values: the
    peer address and our X-Forwarded-Proto/-Host lines up to the Host value.
    Raises HttpParserError on a repeated Content-Length.
    """
    host = b""
    forwarded_for = b""
    chunked = False
    has_length = False
    upgrade_value = b""
    lines = [method, b" ", url, b" HTTP/1.1\r\n"]
    append = lines.append
    get = REQUEST_HEADERS.get
    for name, value in headers:
        kind = get(name.lower())
        if kind is None:
            append(name + b": " + value + b"\r\n")
        elif kind == HOST:
            host = value
            append(name + b": " + value + b"\r\n")
        elif kind == LENGTH:
            if has_length:
                raise HttpParserError("duplicate Content-Length")
            has_length = True
            append(name + b": " + value + b"\r\n")
        elif kind == XFF:
            forwarded_for = value + b", "
        elif kind == TE:
            chunked = True
        elif kind == UPGRADE:
            upgrade_value = value
    if chunked:
        append(b"Transfer-Encoding: chunked\r\n")
    if upgrade:
        append(b"Connection: Upgrade\r\nUpgrade: " + upgrade_value + b"\r\n")
    append(b"X-Forwarded-For: " + forwarded_for + forwarded + host + b"\r\n\r\n")
    return b"".join(lines), chunked


def response_fields(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[list[bytes], bytes | None, bool]:
    """An answer's status line and the fields passed on, each line ending in CRLF.

    Also returns its Content-Length value (None when absent) and whether it was
    sent chunked: the framing we send is decided from those by the caller.
    """
    line = STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(STATUS_LINES) < 256:
            STATUS_LINES[(status, reason)] = line
    lines = [line]
    append = lines.append
    content_length = None
    te_chunked = False
    get = RESPONSE_HEADERS.get
    for name, value in headers:
        kind = get(name.lower())
        if kind is None:
            append(name + b": " + value + b"\r\n")
        elif kind == LENGTH:
            content_length = value
        elif kind == TE:
            te_chunked = b"chunked" in value.lower()
        elif kind == UPGRADE and status == 101:
            append(name + b": " + value + b"\r\n")
    return lines, content_length, te_chunked


def simple_response(status: int, text: str, *, close: bool = True) -> bytes:
    """A plain-text answer of the router's own (an error, a refusal)."""
    body = text.encode() + b"\n"
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n" % (status, REASONS.get(status, b"Error"), len(body))
    )
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body
