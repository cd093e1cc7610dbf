#!/usr/bin/env python3
"""The router's own Python work per request, without sockets: `make bench` runs it per build.

A plain keep-alive GET and its 100-byte answer go through ClientConnection, Exchange
and Upstream (the fast path, a pooled upstream connection) against transports that
only count writes; prints the CPU microseconds per request, best of 5 rounds. What
the kernel, uvloop and the peers cost is left out, so the figure holds on a busy
machine where wrk's do not.
"""

from __future__ import annotations

import time

import uvloop

from bgdeploy.router import build
from bgdeploy.router.client import ClientConnection, Limits
from bgdeploy.router.route_state import Route
from bgdeploy.router.routes import RouteTable
from bgdeploy.router.upstream import Upstream

REQUEST = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 10:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    + b"x"
    * 100
)
ROUNDS, N = 5, 100_000


class CountingTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    table = RouteTable(uvloop.new_event_loop(), max_connections=10)
    table.set_active(Route("blue-1", 1, 1))
    client, upstream = ClientConnection(table, Limits()), Upstream("blue-1", table, 1)
    to_client, to_upstream = CountingTransport(), CountingTransport()
    client.connection_made(to_client)
    upstream.connection_made(to_upstream)
    upstream.replica.give_back(upstream)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(N):
            client.data_received(REQUEST)
            upstream.data_received(ANSWER)
        best = min(best, (time.process_time() - start) / N * 1e6)
    if to_client.writes != to_upstream.writes or client.active is not None:
        raise SystemExit("router_cost: the requests did not all go through")
    print(f"{build()}: {best:.2f} us of router Python per request")


if __name__ == "__main__":
    main()
