"""The forwarding path: asyncio Protocols, httptools parsing, bytes relayed as they come.

Each client connection is a ``ClientConnection``. Each request becomes an
``Exchange`` that is routed to the active boot *as of its arrival* and runs on
one upstream connection (``Upstream``) taken from that boot's keep-alive pool.
Bodies are never held whole: chunks go on as they arrive, and a full write
buffer on one side pauses reading on the other.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from bgdeploy.config import default

if TYPE_CHECKING:
    from bgdeploy.router.routes import Route, RouteTable

log = logging.getLogger("bgdeploy.router")

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
# Our own framing and forwarding headers replace whatever the other side sent.
_DROP, _HOST, _XFF, _TE, _LENGTH, _UPGRADE = range(6)
REQUEST_HEADERS = {name: _DROP for name in HOP_BY_HOP} | {
    b"x-forwarded-proto": _DROP,
    b"x-forwarded-host": _DROP,
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    b"transfer-encoding": _TE,
    b"content-length": _LENGTH,
    b"upgrade": _UPGRADE,
}
RESPONSE_HEADERS = {name: _DROP for name in HOP_BY_HOP} | {
    b"x-bgdeploy-boot": _DROP,
    b"transfer-encoding": _TE,
    b"content-length": _LENGTH,
    b"upgrade": _UPGRADE,
    b"connection": _UPGRADE,  # kept on a 101 answer only
}
STATUS_LINES: dict[tuple[int, bytes], bytes] = {}  # "HTTP/1.1 200 OK\r\n", made once
# The fast path. Most heads are small, strict and plain: one read holds the whole head,
# no hop-by-hop header but (on answers) "Connection: keep-alive", and a Content-Length
# body or none. Such a head is checked whole by one compiled pattern that accepts only a
# strict subset of what httptools accepts (RFC 9112 tokens, CRLF line ends, no folding),
# and is passed on as the bytes that came, with our headers spliced in at its end; its
# Content-Length body is relayed as bytes, counted down. Anything else (chunked bodies,
# HEAD, 1xx/204/304, Upgrade, Expect, HTTP/1.0, pipelined requests, heads split across
# reads, a header we must strip or rewrite other than those) goes through httptools.
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


RETRY_BUFFER_LIMIT = 64 * 1024  # requests up to this size can be resent on a fresh connection
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


def simple_response(status: int, text: str, *, close: bool = True) -> bytes:
    body = text.encode() + b"\n"
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n" % (status, REASONS.get(status, b"Error"), len(body))
    )
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class Limits:
    """Per-connection limits, from [router] config (the connection cap lives in RouteTable)."""

    def __init__(
        self,
        *,
        max_head: int = 64 * 1024,
        header_timeout: float = default("router", "header_timeout"),
        idle_timeout: float = default("router", "idle_timeout"),
    ) -> None:
        self.max_head = max_head
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout


class Pools:
    """Idle keep-alive upstream connections, per boot."""

    def __init__(self) -> None:
        self.idle: dict[str, list[Upstream]] = {}

    def take(self, boot_id: str) -> Upstream | None:
        conns = self.idle.get(boot_id)
        while conns:
            up = conns.pop()
            if not up.closed:
                return up
        return None

    def give_back(self, up: Upstream) -> None:
        if up.closed:
            return
        up.exchange = None
        self.idle.setdefault(up.boot_id, []).append(up)

    def discard(self, up: Upstream) -> None:
        conns = self.idle.get(up.boot_id)
        if conns and up in conns:
            conns.remove(up)

    def close_all_but(self, boot_id: str | None) -> None:
        """Drop idle connections of boots that lost the route, so they can drain."""
        for bid in [b for b in self.idle if b != boot_id]:
            for up in self.idle.pop(bid):
                up.close()


class Upstream(asyncio.Protocol):
    """One connection to a boot. Carries one exchange at a time, or a tunnel."""

    def __init__(self, boot_id: str, table: RouteTable) -> None:
        self.boot_id = boot_id
        self.boot_line = b"X-Bgdeploy-Boot: " + boot_id.encode() + b"\r\n\r\n"
        self.table = table
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.uses = 0
        self.tunnel = False
        self.keep_alive = True  # of the last response
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head_done = False
        self._partial = False  # httptools holds part of an answer
        self._body_left = 0  # bytes still due of a fast answer's body

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            self.close()  # bytes on an idle connection: the connection is not trustworthy
            return
        if self.tunnel:
            ex.client.write(data)
            return
        left = self._body_left
        if left:  # the rest of a fast response's Content-Length body
            if len(data) > left:
                self._body_left = 0
                ex.upstream_failed(self, "more bytes than its Content-Length")
                return
            ex.client.write(data)
            self._body_left = left - len(data)
            if not self._body_left:
                ex.response_complete(self)
            return
        ex.got_response_bytes = True
        if not self._partial and self._fast_response(ex, data):
            return
        client = ex.client
        held = client.hold()  # one write to the client for all this data yields
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            rest = data[e.args[0] :]
            if self.exchange is not None and self.tunnel and rest:
                self.exchange.client.write(rest)
            return
        except HttpParserError:
            ex.upstream_failed(self, "a malformed response")
            return
        finally:
            if held:
                client.flush()
        if self._head_done:  # HEAD: the parser would wait for a body that never comes
            self._head_done = False
            self._partial = False
            self.parser = httptools.HttpResponseParser(self)
            ex.response_complete(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.table.pools.discard(self)
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading()

    def _fast_response(self, ex: Exchange, data: bytes) -> bool:
        """Relay a plain answer (see FAST_RESPONSE) without httptools; False if not one."""
        if ex.bodyless or not ex.client.http11:
            return False
        plain = plain_response(data)
        if plain is None:
            return False
        head, length, status, end = plain
        body = len(data) - end - 4
        if body > length:
            return False
        if ex.close_after:
            head += b"\r\nConnection: close"
        ex.interim = False
        ex.response_started = True
        self.keep_alive = True
        self.table.count_status(self.boot_id, status)
        ex.client.write(head + b"\r\n" + self.boot_line + data[end + 4 :])
        if body < length:
            self._body_left = length - body
        else:
            ex.response_complete(self)
        return True

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._partial = True

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers, reason = self._headers, self._reason
        self._headers, self._reason = [], b""
        ex = self.exchange
        if ex is None:
            return
        p = self.parser
        status = p.get_status_code()
        if status == 101:
            self.tunnel = True
        ex.response_head(self, status, reason, headers, p.should_keep_alive())
        if status >= 200 and ex.method == b"HEAD":
            self._head_done = True

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            if ex.chunk_response:
                ex.client.write(b"%x\r\n%b\r\n" % (len(body), body))
            else:
                ex.client.write(body)

    def on_message_complete(self) -> None:
        self._partial = False
        if self._head_done or self.tunnel:
            return
        ex = self.exchange
        if ex is not None:
            ex.response_complete(self)

    # ours
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class Exchange:
    """One request and its response, pinned to the boot it was routed to."""

    __slots__ = (
        "client",
        "method",
        "head",
        "chunked_request",
        "keep_alive",
        "upgrade",
        "route",
        "upstream",
        "pending",
        "pending_size",
        "request_complete",
        "retry_buffer",
        "retry_size",
        "attempts",
        "got_response_bytes",
        "response_started",
        "chunk_response",
        "close_after",
        "bodyless",
        "done",
        "interim",
        "counted",
    )

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        head: bytes,
        chunked_request: bool,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.client = client
        self.method = method
        self.head = head
        self.chunked_request = chunked_request
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.route: Route | None = None
        self.upstream: Upstream | None = None
        self.pending: list[bytes] | None = None  # bytes after the head waiting for a connection
        self.pending_size = 0
        self.request_complete = False
        self.retry_buffer: list[bytes] | None = None  # body bytes sent so far, for a resend
        self.retry_size = 0
        self.attempts = 0
        self.got_response_bytes = False
        self.response_started = False
        self.chunk_response = False
        self.close_after = not keep_alive
        self.bodyless = method == b"HEAD"
        self.done = False
        self.interim = False
        self.counted = False

    # -- request side ---------------------------------------------------------------------

    def start(self) -> None:
        table = self.client.table
        route = table.active
        if route is None:
            self.fail(503, "No active boot: bgdeploy has not deployed a daemon yet.")
            return
        self.route = route
        if not self.counted:
            self.counted = True
            table.request_started(route.boot_id)
        self.attempts += 1
        up = None if self.upgrade else table.pools.take(route.boot_id)
        if up is not None:
            self.attach(up)
        else:
            table.loop.create_task(self._connect(route))

    async def _connect(self, route: Route) -> None:
        table = self.client.table
        try:
            _, up = await table.loop.create_connection(
                lambda: Upstream(route.boot_id, table), "127.0.0.1", route.port
            )
        except OSError as e:
            table.upstream_error(route.boot_id, "connect")
            if self.done or self.client.closed:
                return
            if self.attempts < 2:
                # Refused before any byte was sent: try once more on the route of *now*.
                self._move_count()
                self.start()
                return
            self.fail(502, f"Upstream boot {route.boot_id} is unreachable ({e.strerror or e}).")
            return
        if self.done or self.client.closed:
            up.close()
            return
        self.attach(up)

    def _move_count(self) -> None:
        """Before a retry: the request may go to another boot now."""
        if self.counted and self.route is not None:
            self.client.table.request_finished(self.route.boot_id)
            self.counted = False

    def attach(self, up: Upstream) -> None:
        self.upstream = up
        up.exchange = self
        up.uses += 1
        pending = self.pending
        if pending:
            self.pending = None
            self.pending_size = 0
            up.write(b"".join([self.head, *pending]))
            self.client.resume_reading()
        else:
            up.write(self.head)

    def request_body(self, data: bytes) -> None:
        if self.chunked_request:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._send(data)

    def request_done(self) -> None:
        self.request_complete = True
        if self.chunked_request:
            self._send(b"0\r\n\r\n")

    def _send(self, data: bytes) -> None:
        if self.retry_size <= RETRY_BUFFER_LIMIT:
            if self.retry_buffer is None:
                self.retry_buffer = []
            self.retry_buffer.append(data)
            self.retry_size += len(data)
            if self.retry_size > RETRY_BUFFER_LIMIT:
                self.retry_buffer = None  # too big to resend: a failure now is a 502
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > HIGH_WATER:
                self.client.pause_reading()

    # -- response side ----------------------------------------------------------------------

    def response_head(
        self,
        up: Upstream,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        upstream_keep_alive: bool,
    ) -> None:
        client = self.client
        if 100 <= status < 200 and status != 101:
            self.interim = True  # e.g. 100 Continue: relay it, the real answer follows
            client.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))
            return
        self.interim = False
        self.response_started = True
        up.keep_alive = upstream_keep_alive
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
            elif kind == _LENGTH:
                content_length = value
            elif kind == _TE:
                te_chunked = b"chunked" in value.lower()
            elif kind == _UPGRADE and status == 101:
                append(name + b": " + value + b"\r\n")
        if status == 101 or status == 204 or status == 304:
            self.bodyless = True
        if status == 101:
            pass
        elif content_length is not None and not te_chunked:
            append(b"Content-Length: " + content_length + b"\r\n")
        elif not self.bodyless:
            if client.http11:
                self.chunk_response = True
                append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True
        if status != 101:
            if self.close_after:
                append(b"Connection: close\r\n")
            elif not client.http11:
                append(b"Connection: keep-alive\r\n")
        append(up.boot_line)
        client.write(b"".join(lines))
        client.table.count_status(up.boot_id, status)
        if status == 101:
            client.become_tunnel(up)

    def response_complete(self, up: Upstream) -> None:
        if self.interim:
            self.interim = False
            return
        client = self.client
        if self.chunk_response:
            client.write(b"0\r\n\r\n")
        self.done = True
        up.exchange = None
        self.upstream = None
        self._release_count()
        table = client.table
        if self.request_complete and up.keep_alive and table.is_active(up.boot_id):
            table.pools.give_back(up)
        else:
            up.close()
        client.exchange_finished(self)

    # -- failures --------------------------------------------------------------------------

    def upstream_lost(self, up: Upstream) -> None:
        if self.done:
            return
        table = self.client.table
        if up.tunnel:
            self.done = True
            self._release_count()
            self.client.close()
            return
        # A reused keep-alive connection closed before any answer: the boot closed it
        # while idle (typically while draining). Resend on a fresh connection if we can.
        if (
            not self.got_response_bytes
            and up.uses > 1
            and self.retry_size <= RETRY_BUFFER_LIMIT
            and self.attempts < 3
        ):
            table.upstream_error(up.boot_id, "reused_connection_closed")
            self.upstream = None
            self.pending = list(self.retry_buffer or ())
            self.pending_size = self.retry_size
            self._move_count()
            self.start()
            return
        table.upstream_error(up.boot_id, "connection_lost")
        self.upstream_failed(up, "a closed connection")

    def upstream_failed(self, up: Upstream, what: str) -> None:
        if self.done:
            return
        up.close()
        if self.response_started:
            self.done = True
            self._release_count()
            self.client.close()  # mid-response: the only honest signal left is to close
        else:
            self.fail(502, f"Upstream boot {up.boot_id} answered with {what}.")

    def fail(self, status: int, text: str) -> None:
        if self.done:
            return
        self.done = True
        self._release_count()
        self.client.table.count_status(self.route.boot_id if self.route else "-", status)
        self.client.write(simple_response(status, text))
        self.client.close_after_write()

    def _release_count(self) -> None:
        if self.counted and self.route is not None:
            self.counted = False
            self.client.table.request_finished(self.route.boot_id)

    def abandon(self) -> None:
        """The client went away: stop the exchange and do not reuse its connection."""
        if self.done:
            return
        self.done = True
        self._release_count()
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.close()


class ClientConnection(asyncio.Protocol):
    """One downstream connection: parses requests, runs exchanges in order."""

    def __init__(self, table: RouteTable, limits: Limits) -> None:
        self.table = table
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.current: Exchange | None = None  # being parsed (request side)
        self.active: Exchange | None = None  # being answered
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self.tunnel_to: Upstream | None = None
        self.http11 = True
        self.peer = b"127.0.0.1"
        self._forwarded = b""  # the X-Forwarded-* lines after the client's own X-Forwarded-For
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._partial = False  # httptools holds part of a request
        self._body_left = 0  # bytes still due of a fast request's body
        self._batch: list[bytes] | None = None
        self._paused = False
        self._closing = False
        self.last_activity = table.clock
        self.head_started: float | None = None

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        self._forwarded = self.peer + b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.head_started = self.table.clock  # the first head is due within header_timeout
        if not self.table.connection_opened(self):
            self.transport.write(simple_response(503, "Too many open connections."))
            self.close_after_write()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.table.clock
        if self.tunnel_to is not None:
            self.tunnel_to.write(data)
            return
        if self._closing:
            return
        left = self._body_left
        if left:  # the rest of a fast request's Content-Length body
            body, data = data[:left], data[left:]
            self._body_left = left - len(body)
            ex = self.current
            if ex is not None:
                ex.request_body(body)
                if not self._body_left:
                    self.current = None
                    ex.request_done()
            if not data:
                return
            # a pipelined request follows: the slow path queues it
        elif self.active is None and not self._partial and self._fast_request(data):
            return
        if self.head_started is not None:  # still reading a head: bound what we buffer
            size = self._head_bytes + len(data)
            if size > self.limits.max_head:
                end = data.find(b"\r\n\r\n")  # the body that may follow the head is not head
                if end >= 0:
                    size -= len(data) - end
                if size > self.limits.max_head:
                    self._reject(431, "Request head too large.")
                    return
            self._head_bytes = size
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            rest = data[e.args[0] :]
            if rest and self.active is not None:
                self.active._send(rest)  # early frames go right after the upgrade request
            self.pause_reading()  # until the upstream answers 101 (or not)
        except HttpParserError as e:
            self._reject(400, f"Malformed request: {e}.")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.table.connection_closed(self)
        if self.active is not None:
            self.active.abandon()
        if self.tunnel_to is not None:
            self.tunnel_to.close()
        for ex in self.queue:
            ex.abandon()
        self.queue.clear()

    def pause_writing(self) -> None:
        up = self.active.upstream if self.active else self.tunnel_to
        if up is not None and up.transport is not None and not up.closed:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.active.upstream if self.active else self.tunnel_to
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    def _fast_request(self, data: bytes) -> bool:
        """Forward a plain request (see FAST_REQUEST) without httptools; False if not one."""
        plain = plain_request(data, self.limits.max_head)
        if plain is None:
            return False
        head, length, host, end = plain
        body = len(data) - end - 4
        if body > length:
            return False  # a pipelined request: the slow path queues it
        head += b"\r\nX-Forwarded-For: " + self._forwarded + host + b"\r\n\r\n"
        if body:
            head += data[end + 4 :]
        self.head_started = None
        self._head_bytes = 0
        self.http11 = True
        ex = Exchange(self, data[: data.find(b" ")], head, False, True, False)
        self.active = ex
        if body < length:
            self._body_left = length - body
            self.current = ex
        else:
            ex.request_done()
        ex.start()
        return True

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._partial = True
        if self.head_started is None:
            self.head_started = self.table.clock

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_started = None
        self._head_bytes = 0
        headers, url = self._headers, self._url
        self._headers, self._url = [], b""
        p = self.parser
        method = p.get_method()
        self.http11 = p.get_http_version() == "1.1"
        upgrade = p.should_upgrade()
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
            elif kind == _HOST:
                host = value
                append(name + b": " + value + b"\r\n")
            elif kind == _LENGTH:
                if has_length:
                    raise HttpParserError("duplicate Content-Length")
                has_length = True
                append(name + b": " + value + b"\r\n")
            elif kind == _XFF:
                forwarded_for = value + b", "
            elif kind == _TE:
                chunked = True
            elif kind == _UPGRADE:
                upgrade_value = value
        if chunked:
            append(b"Transfer-Encoding: chunked\r\n")
        if upgrade:
            append(b"Connection: Upgrade\r\nUpgrade: " + upgrade_value + b"\r\n")
        append(b"X-Forwarded-For: " + forwarded_for + self._forwarded + host + b"\r\n\r\n")
        ex = Exchange(self, method, b"".join(lines), chunked, p.should_keep_alive(), upgrade)
        self.current = ex
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.request_body(body)

    def on_message_complete(self) -> None:
        self._partial = False
        ex = self.current
        if ex is not None:
            self.current = None
            ex.request_done()

    # ours
    def write(self, data: bytes) -> None:
        if self._batch is not None:
            self._batch.append(data)
        elif not self.closed and self.transport is not None:
            self.transport.write(data)

    def hold(self) -> bool:
        """Collect writes until flush(): a response head and body go out in one syscall."""
        if self._batch is not None:
            return False
        self._batch = []
        return True

    def flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch and not self.closed and self.transport is not None:
            self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def exchange_finished(self, ex: Exchange) -> None:
        if ex is not self.active:
            return
        self.active = None
        self.last_activity = self.table.clock
        if ex.close_after or not ex.request_complete:
            self.close_after_write()
            return
        if self.queue:
            self.active = self.queue.popleft()
            self.active.start()
        if self._paused:
            self.resume_reading()

    def become_tunnel(self, up: Upstream) -> None:
        """After 101: bytes flow both ways untouched until either side closes."""
        self.tunnel_to = up
        self.resume_reading()

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            if self.active is not None and self.active.pending_size > HIGH_WATER:
                return
            self._paused = False
            self.transport.resume_reading()

    def _reject(self, status: int, text: str) -> None:
        self._closing = True
        self.table.count_status("-", status)
        if self.active is not None and self.active.response_started:
            self.close()
            return
        if self.active is not None:
            self.active.abandon()
        self.write(simple_response(status, text))
        self.close_after_write()

    def close_after_write(self) -> None:
        self._closing = True
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()  # asyncio flushes the write buffer first

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def is_idle(self) -> bool:
        return self.active is None and self.tunnel_to is None and self.current is None

    def sweep(self, now: float) -> None:
        """Called about once a second: cut slow and idle clients."""
        if self.closed:
            return
        if self.head_started is not None and now - self.head_started > self.limits.header_timeout:
            self._reject(408, "Request head not received in time.")
        elif self.is_idle() and now - self.last_activity > self.limits.idle_timeout:
            self.close()
