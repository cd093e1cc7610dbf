"""The client side: one downstream connection (``ClientConnection``) and its limits.

A connection parses its requests (the fast path when plain, else httptools),
runs their exchanges one at a time in arrival order, holds back pipelined ones,
and cuts slow or idle clients.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from bgdeploy.config import default
from bgdeploy.router.exchange import Exchange
from bgdeploy.router.fastpath import plain_request
from bgdeploy.router.flow import HIGH_WATER, FlowControl
from bgdeploy.router.http11 import request_head, simple_response

if TYPE_CHECKING:
    from bgdeploy.router.routes import RouteTable
    from bgdeploy.router.upstream import Upstream


XFF = b"\r\nX-Forwarded-For: "
CRLF2 = b"\r\n\r\n"
GET = b"GET"


class Limits:
    """Per-connection limits, from [router] config (the connection cap lives in RouteTable)."""

    def __init__(
        self,
        *,
        max_head: int = 64 * 1024,
        header_timeout: float = default("router", "header_timeout"),
        idle_timeout: float = default("router", "idle_timeout"),
        upstream_timeout: float = default("router", "upstream_timeout"),
        stream_idle_timeout: float = default("router", "stream_idle_timeout"),
        max_body: int = default("router", "max_body"),
    ) -> None:
        self.max_head = max_head
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.upstream_timeout = upstream_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.max_body = max_body


class ClientConnection(FlowControl):
    """One downstream connection: parses requests, runs exchanges in order."""

    def __init__(self, table: RouteTable, limits: Limits, *, preview: bool = False) -> None:
        super().__init__()
        self.table = table
        self.limits = limits
        self.preview = preview  # accepted on router.preview_port: every request previews
        self._body_seen = 0  # bytes of the current chunked request body, against max_body
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None  # being parsed (request side)
        self.active: Exchange | None = None  # being answered
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self.tunnel_to: Upstream | None = None
        self.http11 = True
        self.peer = b"127.0.0.1"
        self.peer_port = 0  # with peer, the canary's sticky key when a request has none
        self._forwarded = b""  # the X-Forwarded-* lines after the client's own X-Forwarded-For
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._partial = False  # httptools holds part of a request
        self._body_left = 0  # bytes still due of a fast request's body
        self._batch: list[bytes] | None = None
        self._closing = False
        self.last_activity = table.clock
        self.head_started: float | None = None

    def feeder(self) -> Upstream | None:
        return self.active.upstream if self.active else self.tunnel_to

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
            self.peer_port = peer[1]
        self._forwarded = self.peer + b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "
        opened = self.table.connection_opened(self)  # (which sets a resting clock)
        self.last_activity = self.table.clock
        self.head_started = self.table.clock  # the first head is due within header_timeout
        if not opened:
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

    def _fast_request(self, data: bytes) -> bool:
        """Forward a plain request (see fastpath) without httptools; False if not one."""
        plain = plain_request(data, self.limits.max_head)
        if plain is None:
            return False
        head, length, host, end = plain
        body = len(data) - end - 4
        if body > length:
            return False  # a pipelined request: the slow path queues it
        if length > self.limits.max_body:
            self._reject(413, f"Request body larger than {self.limits.max_body} bytes.")
            return True
        # One allocation for the forwarded head (and the body bytes that came with it).
        if body:
            head = b"".join((head, XFF, self._forwarded, host, CRLF2, data[end + 4 :]))
        else:
            head = b"".join((head, XFF, self._forwarded, host, CRLF2))
        self.head_started = None
        self._head_bytes = 0
        self.http11 = True
        # The fast path took one of its methods: a G is a GET.
        method = GET if data[0] == 0x47 else data[: data.find(b" ")]
        ex = Exchange(self, method, head, False, True, False)
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
        if self._too_large(headers):
            self._reject(413, f"Request body larger than {self.limits.max_body} bytes.")
            return
        self._body_seen = 0
        head, chunked = request_head(method, url, headers, upgrade, self._forwarded)
        ex = Exchange(self, method, head, chunked, p.should_keep_alive(), upgrade)
        self.current = ex
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self._body_seen += len(body)
            if self._body_seen > self.limits.max_body:  # chunked: no length to check up front
                self._reject(413, f"Request body larger than {self.limits.max_body} bytes.")
                return
            self.current.request_body(body)

    def on_message_complete(self) -> None:
        self._partial = False
        ex = self.current
        if ex is not None:
            self.current = None
            ex.request_done()

    def _too_large(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name.lower() == b"content-length":
                value = value.strip()
                return value.isdigit() and int(value) > self.limits.max_body
        return False

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
        if self.read_paused:
            self.resume_reading()

    def become_tunnel(self, up: Upstream) -> None:
        """After 101: bytes flow both ways untouched until either side closes."""
        self.tunnel_to = up
        self.resume_reading()

    def resume_reading(self) -> None:
        # Not while the exchange still holds too much of this client's body unsent.
        if self.active is not None and self.active.pending_size > HIGH_WATER:
            return
        super().resume_reading()

    def _reject(self, status: int, text: str) -> None:
        if self._closing:
            return
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
        """Called every 0.5 s (the worker's sweep, worker.SWEEP_TICKS): cut slow and idle
        clients."""
        if self.closed:
            return
        if self.head_started is not None and now - self.head_started > self.limits.header_timeout:
            self._reject(408, "Request head not received in time.")
        elif self.is_idle() and now - self.last_activity > self.limits.idle_timeout:
            self.close()
        elif self.active is not None and self.active.upstream is not None:
            self.active.check_upstream(now)
