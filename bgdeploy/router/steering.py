"""Steering on the request path: the operator controls as the workers apply them.

Preview, pause (the requests waiting for resume, or for a dead boot's replacement),
maintenance, the canary's sticky buckets, and the router's own 503 answers.

The registry row carries them (``bgdeploy promote``'s held candidate, ``pause``,
``maintenance on``) and the watcher hands them to the route table with the route,
so every worker follows them and a reloaded router starts with them.

- preview: a request with ``X-Bgdeploy-Preview: 1``, or any request on
  ``router.preview_port``, goes to the candidate held at ready;
- pause: new requests wait in arrival order, unforwarded, until resume (then
  they go to the route of that moment) or until the pause's ``max`` (then 503);
- maintenance: every new request gets 503, ``Retry-After`` and a short page;
- canary: while the held candidate has a canary weight (percent), a new request goes
  to it when its sticky bucket (0-99, see ``canary_bucket``) is below the weight.
  Buckets never move and steps only grow, so a client on the candidate at 10 % is
  still on it at 50 %.
"""

from __future__ import annotations

import html
import json
import zlib
from collections import deque
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING

from bgdeploy.router.http11 import REASONS

if TYPE_CHECKING:
    from bgdeploy.router.exchange import Exchange

PREVIEW_HEADER = b"\r\nx-bgdeploy-preview: 1\r\n"
CANARY_KEY_HEADER = b"\r\nx-bgdeploy-canary-key:"
CANARY_COOKIE = b"bgdeploy_canary"
COOKIE_HEADER = b"\r\ncookie:"
# Added to an answer whose bucket came from the connection: the browser keeps its side.
SET_CANARY_COOKIE = b"Set-Cookie: bgdeploy_canary=%d; Path=/; SameSite=Lax\r\n"


@dataclass(frozen=True)
class Maintenance:
    message: str
    retry_after: int


@dataclass(frozen=True)
class Pause:
    max_s: float
    # False: `bgdeploy pause`; True: the active boot died and a replacement starts
    # (the control loop sets it; new requests wait for the replacement the same way).
    healing: bool = False


def is_preview(head: bytes) -> bool:
    """The head (as forwarded, CRLF lines) asks for the held candidate."""
    return PREVIEW_HEADER in head.lower()


def canary_bucket(head: bytes, peer: bytes) -> tuple[int, bool]:
    """The request's sticky canary bucket (0-99) and whether it came from the connection.

    ``head`` is the forwarded head (CRLF lines). In order: the ``X-Bgdeploy-Canary-Key``
    header (any non-empty value; bucket = crc32(value) % 100), so that an API client
    picks its own stickiness; else the ``bgdeploy_canary=<bucket>`` cookie the router
    set earlier (digits 0-99, anything else is ignored); else ``peer``, the client's
    address *and port*. Every client of a local daemon comes from 127.0.0.1, so a key
    of the address alone would send all of them to one side or none: the port makes it
    one bucket per TCP connection, and the answer then sets the cookie (True) so that
    a browser, which opens several connections, stays on one side.
    """
    h = head.lower()
    i = h.find(CANARY_KEY_HEADER)
    if i >= 0:
        start = i + len(CANARY_KEY_HEADER)
        value = head[start : h.find(b"\r\n", start)].strip(b" \t")
        if value:
            return zlib.crc32(value) % 100, False
    i = h.find(COOKIE_HEADER)
    while i >= 0:
        start = i + len(COOKIE_HEADER)
        end = h.find(b"\r\n", start)
        for pair in head[start:end].split(b";"):
            name, _, value = pair.strip(b" \t").partition(b"=")
            if name == CANARY_COOKIE and value.isdigit() and len(value) <= 2:
                return int(value), False
        i = h.find(COOKIE_HEADER, end)
    return zlib.crc32(peer) % 100, True


def wants_json(head: bytes) -> bool:
    h = head.lower()
    i = h.find(b"\r\naccept:")
    return i >= 0 and b"application/json" in h[i : h.find(b"\r\n", i + 2)]


def answer(status: int, retry_after: int, message: str, as_json: bool) -> bytes:
    """A 503 of ours with Retry-After: a short HTML page, or JSON for API clients."""
    if as_json:
        ctype = b"application/json"
        body = json.dumps({"error": message, "retry_after": retry_after}).encode()
    else:
        ctype = b"text/html; charset=utf-8"
        text = html.escape(message)
        body = (
            "<!doctype html><html><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width'>"
            f"<title>{REASONS[status].decode()}</title></head>"
            "<body style='font-family:system-ui,sans-serif;max-width:36em;margin:4em auto'>"
            f"<h1>{REASONS[status].decode()}</h1><p>{text}</p>"
            f"<p><small>Please retry in {retry_after} s.</small></p></body></html>\n"
        ).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nRetry-After: %d\r\n"
        b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        % (status, REASONS[status], ctype, len(body), retry_after)
        + body
    )


class WaitingRequests:
    """Requests waiting, unforwarded, oldest first, each with its deadline: they arrived
    while paused, or their boot died and its replacement is awaited."""

    def __init__(self) -> None:
        self.queue: deque[tuple[float, Exchange]] = deque()

    def __len__(self) -> int:
        return len(self.queue)

    def add(self, ex: Exchange, deadline: float) -> None:
        self.queue.append((deadline, ex))

    def extend(self, deadline: float) -> None:
        """The control loop now restarts the dead boot: wait for it up to ``deadline``."""
        self.queue = deque((max(d, deadline), ex) for d, ex in self.queue)

    def release(self) -> None:
        """Resume: start every waiting request, in arrival order, on the current route."""
        queue, self.queue = self.queue, deque()
        now = monotonic()
        for _, ex in queue:
            if not (ex.done or ex.client.closed):
                # The wait was the pause's or a restart's, not the boot's: its latency
                # (for the traffic analysis) counts from now.
                ex.started = now
                ex.start()

    def expire(
        self, now: float, retry_after: int, healing: bool = False, unpaused: bool = False
    ) -> None:
        """Waiting past the pause's max: 503 with Retry-After (the oldest expire first).
        ``unpaused``: waiting since their boot died, and nothing restarts it: 502."""
        why = (
            "The service is restarting and this request waited as long as it may."
            if healing
            else "The service is paused and this request waited as long as it may."
        )
        queue = self.queue
        while queue and (queue[0][0] <= now or queue[0][1].done or queue[0][1].client.closed):
            _, ex = queue.popleft()
            if unpaused and not (ex.done or ex.client.closed):
                boot = ex.route.boot_id if ex.route is not None else "-"
                ex.fail(502, f"Upstream boot {boot} is unreachable: it exited, no restart came.")
            elif not (ex.done or ex.client.closed):
                ex.refuse(
                    answer(
                        503,
                        retry_after,
                        why,
                        wants_json(ex.head),
                    )
                )
