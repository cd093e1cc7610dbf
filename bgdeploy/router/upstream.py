"""The upstream side: one connection to a replica of a boot (``Upstream``) and the
keep-alive pools, one per replica (``Replica``: a boot's port); which replica a new
request goes to is ``balancing``'s.

An upstream connection carries one exchange at a time, or, after a 101, a
tunnel. Its answer is read by the fast path when it is plain, else by httptools;
either way the head goes out through ``Exchange.send_head``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from bgdeploy.router.fastpath import plain_response
from bgdeploy.router.flow import FlowControl

if TYPE_CHECKING:
    from bgdeploy.router.client import ClientConnection
    from bgdeploy.router.exchange import Exchange
    from bgdeploy.router.routes import RouteTable


class Replica:
    """One port of a boot (a replica, or the boot's one process), as this worker sees it:
    its idle keep-alive connections and its counts. Made once per (boot, port) and kept,
    so that its counts outlive its connections (see Pools.replica)."""

    __slots__ = (
        "boot_id",
        "port",
        "idle",
        "outstanding",
        "requests",
        "errors",
        "down_until",
    )

    def __init__(self, boot_id: str, port: int) -> None:
        self.boot_id = boot_id
        self.port = port
        self.idle: list[Upstream] = []  # the keep-alive pool of this replica
        self.outstanding = 0  # requests routed here and not yet finished (the balancing)
        self.requests = 0  # answers it sent (their heads)
        self.errors = 0  # failed connections to it (refused, lost, timed out)
        # The route table's clock until which new requests skip it: it refused a connect.
        self.down_until = 0.0

    def take(self) -> Upstream | None:
        """An idle keep-alive connection to this replica that is still open, if any."""
        conns = self.idle
        while conns:
            up = conns.pop()
            if not up.closed:
                return up
        return None

    def give_back(self, up: Upstream) -> None:
        """Keep ``up``, a connection to this replica whose answer is complete, for reuse."""
        if up.closed:
            return
        up.exchange = None
        # Its last answer may have filled a slow client's buffer and paused our reads:
        # an idle connection reads again (the next answer, or the daemon closing it).
        up.resume_reading()
        self.idle.append(up)


class Pools:
    """The replicas of every boot this worker has sent to, by (boot, port): each keeps its
    idle keep-alive connections (Replica.take, Replica.give_back)."""

    def __init__(self) -> None:
        self.replicas: dict[tuple[str, int], Replica] = {}

    def replica(self, boot_id: str, port: int) -> Replica:
        """The (boot, port)'s pool and counts, made on first use."""
        rep = self.replicas.get((boot_id, port))
        if rep is None:
            rep = self.replicas[(boot_id, port)] = Replica(boot_id, port)
        return rep

    def discard(self, up: Upstream) -> None:
        conns = up.replica.idle
        if conns and up in conns:
            conns.remove(up)

    def close_all_but(self, keep: set[tuple[str, int]]) -> None:
        """Drop idle connections of boots that lost the route, so they can drain, and of
        replicas (ports) that left their boot's rotation."""
        for key, rep in self.replicas.items():
            if rep.idle and key not in keep:
                conns, rep.idle = rep.idle, []
                for up in conns:
                    up.close()


class Upstream(FlowControl):
    """One connection to a boot's port (a replica). Carries one exchange at a time, or a
    tunnel."""

    def __init__(self, boot_id: str, table: RouteTable, port: int) -> None:
        super().__init__()
        self.boot_id = boot_id
        self.port = port
        self.replica = table.pools.replica(boot_id, port)  # its pool and counts
        self.boot_line = b"X-Bgdeploy-Boot: " + boot_id.encode() + b"\r\n\r\n"
        self.table = table
        self.latency = table.histogram(boot_id)  # the boot's answers by latency (send_head)
        self.statuses = table.status_counts(boot_id)  # and by status
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.uses = 0
        self.tunnel = False
        self.keep_alive = True  # of the last response
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head_done = False
        self._partial = False  # httptools holds part of an answer
        self._body_left = 0  # bytes still due of a fast answer's body
        self.last_read = 0.0  # the route table's clock at the last byte (for upstream_timeout)

    def feeder(self) -> ClientConnection | None:
        return self.exchange.client if self.exchange is not None else None

    # asyncio
    def data_received(self, data: bytes) -> None:
        self.last_read = self.table.clock
        ex = self.exchange
        if ex is None:
            self.close()  # bytes on an idle connection: the connection is not trustworthy
            return
        if self.tunnel:
            ex.client.write(data)
            return
        if self._body_left:  # the rest of a fast response's Content-Length body
            left = self._body_left
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

    def _fast_response(self, ex: Exchange, data: bytes) -> bool:
        """Relay a plain answer (see fastpath) without httptools; False if not one."""
        if ex.bodyless or not ex.client.http11:
            return False
        plain = plain_response(data)
        if plain is None:
            return False
        head, length, status, end = plain
        body = len(data) - end - 4
        if body > length:
            return False
        ex.send_head(self, status, True, head + b"\r\n", data[end + 4 :])
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
