"""The fast path: plain heads checked whole by one pattern and passed on as the bytes that came.

Most heads are small, strict and plain: one read holds the whole head, no
hop-by-hop header but (on answers) "Connection: keep-alive", and a Content-Length
body or none. Such a head is checked whole by one compiled pattern that accepts
only a strict subset of what httptools accepts (RFC 9112 tokens, CRLF line ends,
no folding), and is passed on as the bytes that came, with our headers spliced in
at its end; its Content-Length body is relayed as bytes, counted down. Anything
else (chunked bodies, HEAD, 1xx/204/304, Upgrade, Expect, HTTP/1.0, pipelined
requests, heads split across reads, a header we must strip or rewrite other than
those) goes through httptools and the rules of ``http11``.
"""

from __future__ import annotations

import re

_FIELDS = rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
FAST_REQUEST = re.compile(
    rb"(GET|POST|PUT|PATCH|DELETE|OPTIONS) /[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]* HTTP/1\.1\r\n"
    + _FIELDS
)
FAST_RESPONSE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*\r\n" + _FIELDS)
# Headers that send a head down the slow path, as they appear in a lower-cased head.
FAST_REQUEST_SLOW = re.compile(
    rb"\n(?:transfer-encoding|te|trailer|upgrade|proxy-[a-z-]*|x-forwarded-[a-z-]*|expect|keep-alive):"
)
FAST_RESPONSE_SLOW = re.compile(
    rb"\n(?:transfer-encoding|te|trailer|upgrade|proxy-[a-z-]*|x-bgdeploy-boot|keep-alive):"
)


def plain_head(
    data: bytes, end: int, slow: re.Pattern[bytes]
) -> tuple[bytes, int, bytes, int] | None:
    """Read a head that matched FAST_REQUEST or FAST_RESPONSE (``end``: its CRLFCRLF).

    Returns the head without its last CRLFCRLF and without a "Connection:
    keep-alive" line, its Content-Length (-1 when absent), the lower-cased
    header lines and where they start in ``data``; or None when it needs the
    slow path: a header matching ``slow``, a repeated Content-Length or
    Connection, another Connection value, a bad length.
    """
    first = data.find(b"\r\n")
    h = data[first : end + 2].lower()
    if slow.search(h) is not None:
        return None
    length = -1
    i = h.find(b"\r\ncontent-length:")
    if i >= 0:
        if h.find(b"\r\ncontent-length:", i + 17) >= 0:
            return None
        value = h[i + 17 : h.find(b"\r", i + 17)].strip(b" \t")
        if not value.isdigit() or len(value) > 15:
            return None
        length = int(value)
    i = h.find(b"\r\nconnection:")
    if i < 0:
        return data[:end], length, h, first
    j = h.find(b"\r", i + 13)
    if h[i + 13 : j].strip(b" \t") != b"keep-alive" or h.find(b"\r\nconnection:", j) >= 0:
        return None
    return data[: first + i] + data[first + j : end], length, h, first


def plain_request(data: bytes, max_head: int) -> tuple[bytes, int, bytes, int] | None:
    """The fast path's decision for the request head at the start of ``data``.

    Returns the head to forward (without its last CRLFCRLF and any "Connection:
    keep-alive" line), its body length (0 without Content-Length), its one Host
    value and where its CRLFCRLF starts; or None: it goes through httptools.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > max_head or FAST_REQUEST.fullmatch(data, 0, end + 4) is None:
        return None
    plain = plain_head(data, end, FAST_REQUEST_SLOW)
    if plain is None:
        return None
    head, length, h, first = plain
    i = h.find(b"\r\nhost:")
    if i < 0 or h.find(b"\r\nhost:", i + 7) >= 0:
        return None
    host = data[first + i + 7 : first + h.find(b"\r", i + 7)].strip(b" \t")
    return head, max(length, 0), host, end


def plain_response(data: bytes) -> tuple[bytes, int, int, int] | None:
    """The fast path's decision for the answer head at the start of ``data``.

    Returns the head to forward (as for plain_request), its Content-Length, its
    status and where its CRLFCRLF starts; or None: no Content-Length, a 204 or 304
    answer, or anything else that goes through httptools.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    m = FAST_RESPONSE.fullmatch(data, 0, end + 4)
    if m is None:
        return None
    status = int(m.group(1))
    if status == 204 or status == 304:
        return None
    plain = plain_head(data, end, FAST_RESPONSE_SLOW)
    if plain is None or plain[1] < 0:
        return None
    return plain[0], plain[1], status, end
