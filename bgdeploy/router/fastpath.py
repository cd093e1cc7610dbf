"""The fast path: plain heads checked whole in one pass and passed on as the bytes that came.

Most heads are small, strict and plain: one read holds the whole head, no
hop-by-hop header but (on answers) "Connection: keep-alive", and a Content-Length
body or none. Such a head is checked whole against a strict subset of what
httptools accepts (RFC 9112 tokens, CRLF line ends, no folding), and is passed on
as the bytes that came, with our headers spliced in at its end; its
Content-Length body is relayed as bytes, counted down. Anything else (chunked
bodies, HEAD, 1xx/204/304, Upgrade, Expect, HTTP/1.0, pipelined requests, heads
split across reads, a header we must strip or rewrite other than those) goes
through httptools and the rules of ``http11``.

The check has two twins of one grammar, tested against each other
(tests/unit/test_fast_path.py):

- ``scan_request``/``scan_response``: one pass over the bytes with a table per
  character class. Compiled (fastpath.pxd types it: a ``const unsigned char*``
  over the buffer, C integers), it makes no Python object but the ones it returns;
  run by CPython it is a slow byte loop.
- ``re_plain_request``/``re_plain_response``: compiled patterns and
  ``bytes.find``, the fastest way for CPython.

``plain_request``/``plain_response`` are the compiled build's scan and the pure
build's patterns. So is ``head_end``, where a head's CRLFCRLF starts: a C loop
compiled (``scan_head_end``), ``bytes.find`` pure (``find_head_end``).
"""

from __future__ import annotations

import re

# Whether this module runs compiled (setup.py): its file is then the extension module.
COMPILED = not __file__.endswith(".py")


def _table(chars: bytes) -> bytes:
    """A 256-byte table: 1 at each byte value of ``chars``."""
    t = bytearray(256)
    for c in chars:
        t[c] = 1
    return bytes(t)


_ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# RFC 9110 tchar; the request-target's characters of the fast path; a field value's
# (and a reason phrase's) characters: HTAB, SP, VCHAR, obs-text.
TOKEN = _table(_ALPHA + b"!#$%&'*+.^_`|~-")
TARGET = _table(_ALPHA + b"-._~!$&'()*+,;=:@/?%")
VALUE = _table(b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))
METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")
# What a field name (lower-cased) makes of a head: passed on, the fast path refused,
# its framing, the one Connection line (dropped when it says keep-alive), its Host.
OTHER, SLOW, LENGTH, CONNECTION, HOST = range(5)


def _at(p: bytes, at: int, word: bytes) -> bool:
    """Whether ``word`` is at ``at`` (the caller knows the bytes are there)."""
    for k in range(len(word)):  # noqa: SIM110 - a C loop when compiled, all() is not
        if p[at + k] != word[k]:
            return False
    return True


def _lower_is(p: bytes, at: int, n: int, word: bytes) -> bool:
    """Whether the ``n`` token characters at ``at``, lower-cased, are ``word`` (of
    lower-case letters and "-": ``c | 0x20`` lower-cases a letter and maps no other
    token character onto those)."""
    if n != len(word):
        return False
    for k in range(n):  # noqa: SIM110 - a C loop when compiled, all() is not
        if (p[at + k] | 0x20) != word[k]:
            return False
    return True


def _letters(p: bytes, at: int, end: int) -> bool:
    """Whether p[at:end] is letters and "-" only (``[a-z-]*`` once lower-cased)."""
    for k in range(at, end):
        c = p[k] | 0x20
        if (c < 0x61 or c > 0x7A) and c != 0x2D:
            return False
    return True


def _kind(p: bytes, at: int, n: int, request: bool) -> int:
    """What the field name p[at:at+n] makes of a request (or answer) head."""
    if n == 14 and _lower_is(p, at, n, b"content-length"):
        return LENGTH
    if n == 10:
        if _lower_is(p, at, n, b"connection"):
            return CONNECTION
        if _lower_is(p, at, n, b"keep-alive"):
            return SLOW
        return OTHER
    if n == 4:
        return HOST if request and _lower_is(p, at, n, b"host") else OTHER
    if n == 2:
        return SLOW if _lower_is(p, at, n, b"te") else OTHER
    if n == 7:
        if _lower_is(p, at, n, b"trailer") or _lower_is(p, at, n, b"upgrade"):
            return SLOW
        return OTHER
    if n == 17 and _lower_is(p, at, n, b"transfer-encoding"):
        return SLOW
    if n >= 6 and _lower_is(p, at, 6, b"proxy-") and _letters(p, at + 6, at + n):
        return SLOW
    if request:
        if n == 6 and _lower_is(p, at, n, b"expect"):
            return SLOW
        if n >= 12 and _lower_is(p, at, 12, b"x-forwarded-") and _letters(p, at + 12, at + n):
            return SLOW
    elif n == 15 and _lower_is(p, at, n, b"x-bgdeploy-boot"):
        return SLOW
    return OTHER


def scan_head_end(data: bytes) -> int:
    """Where the first CRLFCRLF of ``data`` starts, or -1: ``data.find(b"\r\n\r\n")`` in one
    pass (compiled, a C loop over the buffer that makes no Python object)."""
    p = data
    i = 0
    last = len(data) - 4
    while i <= last:
        # Look at the 4th byte of a match starting at i: any but CR or LF rules out
        # every match that would cover it (at i..i+3); a CR rules out one at i, an LF
        # one at i+1 (whose 3rd byte would be a CR).
        c = p[i + 3]
        if c == 0x0A:
            if p[i] == 0x0D and p[i + 1] == 0x0A and p[i + 2] == 0x0D:
                return i
            i += 2
        elif c == 0x0D:
            i += 1
        else:
            i += 4
    return -1


def find_head_end(data: bytes) -> int:
    """As ``scan_head_end``: the fastest way for CPython."""
    return data.find(b"\r\n\r\n")


def scan_request(data: bytes, max_head: int) -> tuple[bytes, int, bytes, int] | None:
    """As ``re_plain_request``, in one pass (see the module's doc)."""
    return _scan(data, max_head, True)


def scan_response(data: bytes) -> tuple[bytes, int, int, int] | None:
    """As ``re_plain_response``, in one pass (see the module's doc)."""
    return _scan(data, len(data), False)


def _scan(data: bytes, max_head: int, request: bool) -> tuple[bytes, int, object, int] | None:
    end = scan_head_end(data)
    if end < 0 or end > max_head or end < 14:
        return None
    # Reads stay below end + 4: the characters of each class stop at a CR, and
    # data[end] is one.
    p = data
    tok = TOKEN
    val = VALUE
    status = 0
    if request:
        i = 0
        for m in METHODS:
            if _at(p, 0, m):
                i = len(m)
                break
        if i == 0 or p[i] != 0x2F:  # "/"
            return None
        target = TARGET
        i += 1
        while target[p[i]]:
            i += 1
        if i + 11 > end + 2 or not _at(p, i, b" HTTP/1.1\r\n"):
            return None
        pos = i + 11
    else:
        if not _at(p, 0, b"HTTP/1.1 "):
            return None
        a, b, c = p[9] - 0x30, p[10] - 0x30, p[11] - 0x30
        if a < 2 or a > 5 or b < 0 or b > 9 or c < 0 or c > 9 or p[12] != 0x20:
            return None
        status = a * 100 + b * 10 + c
        if status == 204 or status == 304:
            return None
        i = 13
        while val[p[i]]:
            i += 1
        if p[i] != 0x0D or p[i + 1] != 0x0A:
            return None
        pos = i + 2
    stop = end + 2
    length = -1
    conn_start = -1
    conn_end = -1
    host_start = -1
    host_end = -1
    while pos < stop:
        name = pos
        while tok[p[pos]]:
            pos += 1
        n = pos - name
        if n == 0 or p[pos] != 0x3A:  # ":"
            return None
        pos += 1
        start = pos
        while val[p[pos]]:
            pos += 1
        if p[pos] != 0x0D or p[pos + 1] != 0x0A:
            return None
        raw_end = pos
        pos += 2
        kind = _kind(p, name, n, request)
        if kind == OTHER:
            continue
        if kind == SLOW:
            return None
        vend = raw_end
        while start < vend and (p[start] == 0x20 or p[start] == 0x09):
            start += 1
        while vend > start and (p[vend - 1] == 0x20 or p[vend - 1] == 0x09):
            vend -= 1
        if kind == LENGTH:
            if length >= 0 or vend == start or vend - start > 15:
                return None
            length = 0
            for k in range(start, vend):
                c = p[k] - 0x30
                if c < 0 or c > 9:
                    return None
                length = length * 10 + c
        elif kind == CONNECTION:
            if conn_start >= 0 or not _lower_is(p, start, vend - start, b"keep-alive"):
                return None
            conn_start = name - 2
            conn_end = raw_end
        elif host_start >= 0:  # HOST, a second one
            return None
        else:
            host_start = start
            host_end = vend
    head = data[:conn_start] + data[conn_end:end] if conn_start >= 0 else data[:end]
    if request:
        if host_start < 0:
            return None
        return head, max(length, 0), data[host_start:host_end], end
    if length < 0:
        return None
    return head, length, status, end


# The pure build's way: the same grammar as one compiled pattern, checked by fullmatch.
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


def re_plain_head(
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


def re_plain_request(data: bytes, max_head: int) -> tuple[bytes, int, bytes, int] | None:
    """The fast path's decision for the request head at the start of ``data``.

    Returns the head to forward (without its last CRLFCRLF and any "Connection:
    keep-alive" line), its body length (0 without Content-Length), its one Host
    value and where its CRLFCRLF starts; or None: it goes through httptools.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > max_head or FAST_REQUEST.fullmatch(data, 0, end + 4) is None:
        return None
    plain = re_plain_head(data, end, FAST_REQUEST_SLOW)
    if plain is None:
        return None
    head, length, h, first = plain
    i = h.find(b"\r\nhost:")
    if i < 0 or h.find(b"\r\nhost:", i + 7) >= 0:
        return None
    host = data[first + i + 7 : first + h.find(b"\r", i + 7)].strip(b" \t")
    return head, max(length, 0), host, end


def re_plain_response(data: bytes) -> tuple[bytes, int, int, int] | None:
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
    plain = re_plain_head(data, end, FAST_RESPONSE_SLOW)
    if plain is None or plain[1] < 0:
        return None
    return plain[0], plain[1], status, end


head_end = scan_head_end if COMPILED else find_head_end
plain_request = scan_request if COMPILED else re_plain_request
plain_response = scan_response if COMPILED else re_plain_response
