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
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools
from httptools import HttpParserError, HttpParserUpgrade

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
# Our own framing and forwarding headers replace whatever the client sent.
REQUEST_DROP = HOP_BY_HOP | {b"content-length", b"x-forwarded-proto", b"x-forwarded-host"}
RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"x-bgdeploy-boot"}
BODYLESS_STATUS = frozenset({204, 304})
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
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
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
        ex.got_response_bytes = True
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

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        status = self.parser.get_status_code()
        if status == 101:
            self.tunnel = True
        ex.response_head(self, status, self._reason, self._headers, self.parser.should_keep_alive())
        if ex.method == b"HEAD" and status >= 200:
            self._head_done = True

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
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
        *,
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
        self.pending: list[bytes] = [head]  # bytes waiting for the upstream connection
        self.pending_size = len(head)
        self.request_complete = False
        self.retry_buffer: list[bytes] | None = [head]
        self.retry_size = len(head)
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
        up.write(b"".join(self.pending))
        self.pending = []
        self.pending_size = 0
        self.client.resume_reading()

    def request_body(self, data: bytes) -> None:
        if self.chunked_request:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._send(data)

    def request_done(self) -> None:
        self.request_complete = True
        if self.chunked_request:
            self._send(b"0\r\n\r\n")

    def _send(self, data: bytes) -> None:
        if self.retry_buffer is not None:
            self.retry_buffer.append(data)
            self.retry_size += len(data)
            if self.retry_size > RETRY_BUFFER_LIMIT:
                self.retry_buffer = None
        if self.upstream is not None:
            self.upstream.write(data)
        else:
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
        if 100 <= status < 200 and status != 101:
            self.interim = True  # e.g. 100 Continue: relay it, the real answer follows
            self.client.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))
            return
        self.interim = False
        self.response_started = True
        up.keep_alive = upstream_keep_alive
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        content_length = None
        te_chunked = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                content_length = value
            elif lname == b"transfer-encoding":
                te_chunked = b"chunked" in value.lower()
            if lname in RESPONSE_DROP and not (
                status == 101 and lname in (b"upgrade", b"connection")
            ):
                continue
            lines.append(name + b": " + value + b"\r\n")
        self.bodyless = self.bodyless or status in BODYLESS_STATUS or status == 101
        if status == 101:
            pass
        elif content_length is not None and not te_chunked:
            lines.append(b"Content-Length: " + content_length + b"\r\n")
        elif not self.bodyless:
            if self.client.http11:
                self.chunk_response = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True
        if self.close_after and status != 101:
            lines.append(b"Connection: close\r\n")
        elif not self.client.http11 and status != 101:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"X-Bgdeploy-Boot: " + up.boot_id.encode() + b"\r\n\r\n")
        self.client.write(b"".join(lines))
        self.client.table.count_status(up.boot_id, status)
        if status == 101:
            self.client.become_tunnel(up)

    def response_body(self, data: bytes) -> None:
        if self.chunk_response:
            self.client.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.client.write(data)

    def response_complete(self, up: Upstream) -> None:
        if self.interim:
            self.interim = False
            return
        if self.chunk_response:
            self.client.write(b"0\r\n\r\n")
        self.done = True
        self._release_count()
        reusable = self.request_complete and up.keep_alive
        up.exchange = None
        if reusable and self.route is not None and self.client.table.is_active(up.boot_id):
            self.client.table.pools.give_back(up)
        else:
            up.close()
        self.upstream = None
        self.client.exchange_finished(self)

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
            and self.retry_buffer is not None
            and self.attempts < 3
        ):
            table.upstream_error(up.boot_id, "reused_connection_closed")
            self.upstream = None
            self.pending = list(self.retry_buffer)
            self.pending_size = sum(map(len, self.pending))
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
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_bytes = 0
        self._batch: list[bytes] | None = None
        self._paused = False
        self._closing = False
        self.last_activity = time.monotonic()
        self.head_started: float | None = None

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.head_started = time.monotonic()  # the first head is due within header_timeout
        if not self.table.connection_opened(self):
            self.transport.write(simple_response(503, "Too many open connections."))
            self.close_after_write()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.tunnel_to is not None:
            self.tunnel_to.write(data)
            return
        if self._closing:
            return
        if self.head_started is not None:  # still reading a head: bound what we buffer
            end = data.find(b"\r\n\r\n")  # the body that may follow the head is not head
            self._head_bytes += len(data) if end < 0 else end
            if self._head_bytes > self.limits.max_head + 4096:
                self._reject(431, "Request head too large.")
                return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            rest = data[e.args[0] :]
            if rest and self.active is not None:
                self.active._send(rest)  # early frames go right after the upgrade request
            self.pause_reading()  # until the upstream answers 101 (or not)
        except HttpParserError as e:
            if isinstance(e.__context__, HeadTooLarge):
                self._reject(431, "Request head too large.")
            else:
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

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self.head_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self.limits.max_head:
            raise HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_head:
            raise HeadTooLarge()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_started = None
        self._head_bytes = 0
        p = self.parser
        method = p.get_method()
        self.http11 = p.get_http_version() == "1.1"
        upgrade = p.should_upgrade()
        host = b""
        forwarded_for = b""
        chunked = False
        has_length = False
        lines = [method + b" " + self._url + b" HTTP/1.1\r\n"]
        upgrade_value = b""
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"host":
                host = value
            elif lname == b"x-forwarded-for":
                forwarded_for = value + b", "
                continue
            elif lname == b"transfer-encoding":
                chunked = True
            elif lname == b"content-length":
                if has_length:
                    raise HttpParserError("duplicate Content-Length")
                has_length = True
                lines.append(b"Content-Length: " + value + b"\r\n")
                continue
            elif lname == b"upgrade":
                upgrade_value = value
            if lname in REQUEST_DROP:
                continue
            lines.append(name + b": " + value + b"\r\n")
        if chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if upgrade:
            lines.append(b"Connection: Upgrade\r\nUpgrade: " + upgrade_value + b"\r\n")
        lines.append(
            b"X-Forwarded-For: " + forwarded_for + self.peer + b"\r\n"
            b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: " + host + b"\r\n\r\n"
        )
        ex = Exchange(
            self,
            method,
            b"".join(lines),
            chunked_request=chunked,
            keep_alive=p.should_keep_alive(),
            upgrade=upgrade,
        )
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
        if self.current is not None:
            self.current.request_done()
            self.current = None

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
        self.last_activity = time.monotonic()
        if ex.close_after or not ex.request_complete:
            self.close_after_write()
            return
        if self.queue:
            self.active = self.queue.popleft()
            self.active.start()
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


class HeadTooLarge(Exception):
    pass
