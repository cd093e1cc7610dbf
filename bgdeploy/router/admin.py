"""The read-only admin listener: /api/status, /metrics and the dashboard page.

It runs on the router's event loop; anything that reads the registry runs in
a worker thread so that it never stalls forwarding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bgdeploy.router.routes import RouteTable

log = logging.getLogger("bgdeploy.router.admin")

STATUS_CACHE_S = 0.1


class MetricsSnapshot:
    """A copy of the route table's counters, taken on the loop thread."""

    def __init__(self, table: RouteTable) -> None:
        self.requests = dict(table.requests)
        self.inflight = dict(table.inflight)
        self.upstream_errors = dict(table.upstream_errors)
        self.switches = table.switches
        self.route_age = time.time() - table.route_changed_at
        self.connections = len(table.connections)
        self.active = table.active

    def collect(self):  # noqa: ANN201 - prometheus-client collector protocol
        req = CounterMetricFamily(
            "bgdeploy_requests", "Responses sent, by boot and status.", labels=["boot", "code"]
        )
        for (boot, code), n in sorted(self.requests.items()):
            req.add_metric([boot, str(code)], n)
        yield req
        inflight = GaugeMetricFamily(
            "bgdeploy_inflight_requests",
            "Requests and upgraded connections in flight, by boot.",
            labels=["boot"],
        )
        for boot, n in sorted(self.inflight.items()):
            inflight.add_metric([boot], n)
        yield inflight
        errors = CounterMetricFamily(
            "bgdeploy_upstream_errors",
            "Failed upstream connections, by boot and kind.",
            labels=["boot", "kind"],
        )
        for (boot, kind), n in sorted(self.upstream_errors.items()):
            errors.add_metric([boot, kind], n)
        yield errors
        yield CounterMetricFamily(
            "bgdeploy_switches",
            "Route changes from one boot to another since the router started.",
            value=self.switches,
        )
        yield GaugeMetricFamily(
            "bgdeploy_route_age_seconds",
            "Seconds since the route last changed.",
            value=self.route_age,
        )
        yield GaugeMetricFamily(
            "bgdeploy_open_connections", "Open client connections.", value=self.connections
        )
        active = GaugeMetricFamily(
            "bgdeploy_active_boot_info",
            "The boot new requests go to.",
            labels=["boot", "generation"],
        )
        if self.active is not None:
            active.add_metric([self.active.boot_id, str(self.active.generation)], 1)
        yield active


def metrics_text(table: RouteTable) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MetricsSnapshot(table))
    return generate_latest(reg)


def dashboard_page() -> bytes:
    return resources.files("bgdeploy.ui").joinpath("dashboard.html").read_bytes()


class Admin:
    """Shared by all admin connections: caches the status object briefly."""

    def __init__(
        self,
        table: RouteTable,
        status: Callable[[dict[str, int]], dict[str, Any]],
        history: Callable[[], list[dict[str, Any]]],
    ):
        self.table = table
        self.status = status
        self.history = history
        self._cache: tuple[float, bytes] | None = None

    async def status_json(self) -> bytes:
        now = time.monotonic()
        if self._cache and now - self._cache[0] < STATUS_CACHE_S:
            return self._cache[1]
        inflight = dict(self.table.inflight)
        body = json.dumps(
            await asyncio.get_running_loop().run_in_executor(None, self.status, inflight)
        ).encode()
        self._cache = (now, body)
        return body

    async def history_json(self) -> bytes:
        events = await asyncio.get_running_loop().run_in_executor(None, self.history)
        return json.dumps(events).encode()


class AdminConnection(asyncio.Protocol):
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"text/plain", b"bad request\n", close=True)

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = httptools.parse_url(self.url).path.decode(errors="replace")
        keep = self.parser.should_keep_alive()
        if method not in (b"GET", b"HEAD"):
            self._send(
                405,
                b"text/plain",
                b"read-only: GET only\n",
                close=not keep,
                extra=b"Allow: GET, HEAD\r\n",
            )
        elif path == "/api/status":
            asyncio.get_running_loop().create_task(self._json(self.admin.status_json, keep))
        elif path == "/api/history":
            asyncio.get_running_loop().create_task(self._json(self.admin.history_json, keep))
        elif path == "/api/route":
            route = self.admin.table.active
            body = json.dumps(
                {
                    "boot_id": route.boot_id if route else None,
                    "generation": route.generation if route else None,
                    "inflight": dict(self.admin.table.inflight),
                    "requests_total": sum(self.admin.table.requests.values()),
                }
            ).encode()
            self._send(200, b"application/json", body, close=not keep)
        elif path == "/metrics":
            self._send(
                200,
                b"text/plain; version=0.0.4; charset=utf-8",
                metrics_text(self.admin.table),
                close=not keep,
            )
        elif path in ("/", "/index.html"):
            self._send(200, b"text/html; charset=utf-8", dashboard_page(), close=not keep)
        else:
            self._send(404, b"text/plain", b"not found\n", close=not keep)

    async def _json(self, produce: Callable[[], Any], keep: bool) -> None:
        try:
            body = await produce()
        except Exception as e:  # noqa: BLE001 - the admin page reports, never crashes
            log.warning("status failed: %s", e)
            self._send(
                503, b"application/json", json.dumps({"error": str(e)}).encode(), close=not keep
            )
            return
        self._send(200, b"application/json", body, close=not keep)

    def _send(
        self, status: int, ctype: bytes, body: bytes, *, close: bool, extra: bytes = b""
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n%s"
            % (status, _REASON.get(status, b"OK"), ctype, len(body), extra)
        )
        if close:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if close:
            self.transport.close()


_REASON = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    503: b"Service Unavailable",
}
