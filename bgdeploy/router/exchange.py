"""One request and its answer (``Exchange``), pinned to the boot it was routed to.

The request is routed to the active boot *as of its arrival* and runs on one
upstream connection taken from that boot's keep-alive pool, or a new one. Bodies
are never held whole: chunks go on as they arrive. A request refused before any
answer byte (a reused connection closed while idle, a refused connect) is sent
again when it is small enough to have been kept.

A boot of several replicas (Route.targets: one port each) is balanced per
request: the replica with the fewest outstanding requests of this worker, of
two drawn at random (``pick``). A replica that refused a connect is skipped by
new requests for ``DOWN_S`` (unless every one is), and a request it refused, or
an idempotent bodiless one its fresh connection reset before any answer byte, is
sent at once to another replica of the route.

When the active boot has died (its connects are refused, on every replica), a
request is held rather than failed, as a pause holds it, until the control loop
has routed a replacement or ``CRASH_HOLD_S`` has passed without the control loop
saying it restarts the boot. A GET, HEAD or OPTIONS without a body whose fresh
connection was reset before any answer byte is held and resent the same way,
once (with one replica; with more, it goes to another at once).
"""

from __future__ import annotations

from bisect import bisect_right
from time import monotonic
from typing import TYPE_CHECKING

from bgdeploy.router.balancing import DOWN_S, pick
from bgdeploy.router.flow import HIGH_WATER
from bgdeploy.router.http11 import response_fields, simple_response
from bgdeploy.router.stats import LATENCY_BOUNDS
from bgdeploy.router.steering import (
    SET_CANARY_COOKIE,
    answer,
    canary_bucket,
    is_preview,
    wants_json,
)
from bgdeploy.router.upstream import Upstream

if TYPE_CHECKING:
    from bgdeploy.router.client import ClientConnection
    from bgdeploy.router.route_state import Route
    from bgdeploy.router.upstream import Replica

RETRY_BUFFER_LIMIT = 64 * 1024  # requests up to this size can be resent on a fresh connection
# How long a request refused by a dead boot waits for the control loop to mark the
# deployment healing (which then holds it up to router.hold_timeout): it acts within
# milliseconds of the exit, so this only bounds the wait when nothing will restart
# the boot (then the request gets 502, as it would have at once).
CRASH_HOLD_S = 1.0
IDEMPOTENT = (b"GET", b"HEAD", b"OPTIONS")
FIRST_BOUND = LATENCY_BOUNDS[0]


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
        "streaming",
        "held_once",
        "started",
        "canary_cookie",
        "replica",
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
        # A draining worker ends each keep-alive connection after its current answer.
        self.close_after = not keep_alive or self.client.table.draining
        self.bodyless = method == b"HEAD"
        self.done = False
        self.interim = False
        self.counted = False
        self.streaming = False  # a text/event-stream answer: stream_idle_timeout applies
        self.held_once = False  # held once after its boot died: the next failure is final
        self.started = monotonic()  # the head is parsed: the answer's latency counts from here
        self.canary_cookie: bytes | None = None  # a Set-Cookie line for the answer's head
        self.replica: Replica | None = None  # where it was sent last (its outstanding count)

    # -- request side ---------------------------------------------------------------------

    def start(self) -> None:
        table = self.client.table
        route = table.active
        if self.attempts == 0 and (table.controlled or self.client.preview):
            if self.client.preview or (table.preview is not None and is_preview(self.head)):
                route = table.preview
                if route is None:
                    self.fail(503, "No candidate is held at ready: there is nothing to preview.")
                    return
            elif table.maintenance is not None:
                m = table.maintenance
                self.refuse(answer(503, m.retry_after, m.message, wants_json(self.head)))
                return
            elif table.pause is not None:
                table.waiting.add(self, table.clock + table.pause.max_s)
                return
            elif table.canary_weight and table.preview is not None:
                client = self.client
                bucket, from_peer = canary_bucket(
                    self.head, b"%b:%d" % (client.peer, client.peer_port)
                )
                if bucket < table.canary_weight:
                    route = table.preview
                if from_peer:
                    self.canary_cookie = SET_CANARY_COOKIE % bucket
        if route is None:
            self.fail(503, "No active boot: bgdeploy has not deployed a daemon yet.")
            return
        self.route = route
        reps = table.targets.get(route.boot_id)
        if reps is None:
            reps = table.replicas_of(route)
        rep = reps[0] if len(reps) == 1 else pick(reps, table.clock, self.replica)
        if self.counted:  # (not after a hold or a retry: see _move_count)
            self.replica.outstanding -= 1
        self.counted = True
        self.replica = rep
        self.replica.outstanding += 1  # (the typed field: a C add when compiled)
        self.attempts += 1
        up = None if self.upgrade else self.replica.take()
        if up is not None:
            self.attach(up)
        else:
            table.loop.create_task(self._connect(rep))

    async def _connect(self, rep: Replica) -> None:
        table = self.client.table
        try:
            _, up = await table.loop.create_connection(
                lambda: Upstream(rep.boot_id, table, rep.port), "127.0.0.1", rep.port
            )
        except OSError as e:
            # Skipped by new requests for a moment: the others serve meanwhile.
            rep.down_until = table.clock + DOWN_S
            table.upstream_error(rep, "connect")
            if self.done or self.client.closed:
                return
            if self.attempts < 2 or self._elsewhere(rep):
                # Refused before any byte was sent: try again on the route of *now*.
                self._move_count()
                self.start()
                return
            if not self.held_once:
                self._hold_for_replacement()
                return
            self.fail(502, f"Upstream boot {rep.boot_id} is unreachable ({e.strerror or e}).")
            return
        rep.down_until = 0.0
        if self.done or self.client.closed:
            up.close()
            return
        self.attach(up)

    def _elsewhere(self, failed: Replica) -> bool:
        """Whether the route this request would take now has another replica, not down,
        to send it to at once (a route of one replica never has)."""
        table = self.client.table
        route = table.active
        reps = table.targets.get(route.boot_id) if route is not None else None
        if reps is None or len(reps) < 2 or self.attempts > len(reps):
            return False
        now = table.clock
        return any(r is not failed and r.down_until <= now for r in reps)

    def _move_count(self) -> None:
        """Before a retry: the request may go to another boot, or replica, now."""
        if self.counted:
            self.replica.outstanding -= 1
            self.counted = False

    def attach(self, up: Upstream) -> None:
        self.upstream = up
        up.exchange = self
        up.uses += 1
        up.last_read = self.client.table.clock
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
        if self.upstream is not None:  # the wait for the answer starts now
            self.upstream.last_read = self.client.table.clock
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
        """An answer head that httptools parsed: choose our framing, then send_head."""
        if 100 <= status < 200 and status != 101:
            self.interim = True  # e.g. 100 Continue: relay it, the real answer follows
            self.client.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))
            return
        lines, content_length, te_chunked = response_fields(status, reason, headers)
        self.streaming = any(
            n.lower() == b"content-type" and v.lower().startswith(b"text/event-stream")
            for n, v in headers
        )
        if status == 101 or status == 204 or status == 304:
            self.bodyless = True
        if status != 101 and content_length is not None and not te_chunked:
            lines.append(b"Content-Length: " + content_length + b"\r\n")
        elif not self.bodyless:
            if self.client.http11:
                self.chunk_response = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True
        self.send_head(up, status, upstream_keep_alive, b"".join(lines))
        if status == 101:
            self.client.become_tunnel(up)

    def send_head(
        self, up: Upstream, status: int, upstream_keep_alive: bool, head: bytes, body: bytes = b""
    ) -> None:
        """Send the answer's head, both paths': status line and fields, each ending in CRLF.

        Adds our Connection line, a canary cookie, X-Bgdeploy-Boot, and ``body``, the
        answer's bytes that came in the same read, in the same write. Counts the answer
        by status and in the boot's latency histogram.
        """
        self.interim = False
        self.response_started = True
        up.keep_alive = upstream_keep_alive
        client = self.client
        if status != 101:
            if self.close_after:
                head += b"Connection: close\r\n"
            elif not client.http11:
                head += b"Connection: keep-alive\r\n"
        if self.canary_cookie is not None:
            head += self.canary_cookie
        client.write(head + up.boot_line + body)
        counts = up.statuses  # the boot's answers by status (RouteTable.count_status)
        counts[status] = counts.get(status, 0) + 1
        up.replica.requests += 1
        took = monotonic() - self.started
        # Most answers of a local daemon take less than the first bound: skip the search.
        up.latency[0 if took < FIRST_BOUND else bisect_right(LATENCY_BOUNDS, took)] += 1

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
        if self.request_complete and up.keep_alive and up.replica in table.kept:
            up.replica.give_back(up)
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
            table.upstream_error(up.replica, "reused_connection_closed")
            self.upstream = None
            self.pending = list(self.retry_buffer or ())
            self.pending_size = self.retry_size
            self._move_count()
            self.start()
            return
        table.upstream_error(up.replica, "connection_lost")
        if (
            not self.got_response_bytes
            and not self.held_once
            and self.method in IDEMPOTENT
            and self.request_complete
            and self.retry_size == 0
        ):
            # Reset before any answer byte (its boot, or replica, died): safe to send
            # again: at once to another replica of the route, else once its replacement is.
            up.close()
            self.upstream = None
            if self._elsewhere(up.replica):
                self._move_count()
                self.start()
                return
            self._hold_for_replacement()
            return
        self.upstream_failed(up, "a closed connection")

    def _hold_for_replacement(self) -> None:
        """Wait, as a paused request does, for the boot that replaces a dead one."""
        table = self.client.table
        self._move_count()
        self.held_once = True
        self.attempts = 0
        wait = table.pause.max_s if table.pause is not None else CRASH_HOLD_S
        table.waiting.add(self, table.clock + wait)

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

    def check_upstream(self, now: float) -> None:
        """From the sweep: an answer (or, once started, its body) overdue by the upstream
        timeout gets 504, or its connection closed. Tunnels may idle."""
        up = self.upstream
        if up is None or up.tunnel or not self.request_complete or self.done:
            return
        limits = self.client.limits
        limit = limits.stream_idle_timeout if self.streaming else limits.upstream_timeout
        if now - up.last_read <= limit:
            return
        table = self.client.table
        table.upstream_error(up.replica, "timeout")
        up.exchange, self.upstream = None, None
        up.close()
        if self.response_started:
            self.done = True
            self._release_count()
            self.client.close()  # a body that stopped part-way: closing is the only signal
        else:
            self.fail(504, f"Upstream boot {up.boot_id} sent no answer within {limit:g}s.")

    def fail(self, status: int, text: str) -> None:
        self.refuse(simple_response(status, text), status)

    def refuse(self, answer: bytes, status: int = 503) -> None:
        """Answer with a response of ours and close the connection."""
        if self.done:
            return
        self.done = True
        self._release_count()
        table = self.client.table
        if self.route is not None:
            table.count_status(self.route.boot_id, status)
            table.count_latency(self.route.boot_id, monotonic() - self.started)
        else:
            table.count_status("-", status)
        self.client.write(answer)
        self.client.close_after_write()

    def _release_count(self) -> None:
        if self.counted:
            self.counted = False
            self.replica.outstanding -= 1

    def abandon(self) -> None:
        """The client went away: stop the exchange and do not reuse its connection."""
        if self.done:
            return
        self.done = True
        self._release_count()
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.close()
