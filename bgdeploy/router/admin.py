"""The read-only admin listener: /api/status, /api/route, /api/router, /api/traffic, /metrics,
the dashboard.

It runs on the router supervisor's event loop. Each answer sums the workers'
counters (router/stats.py), asked over their unix sockets in a thread, as is
anything that reads the registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from bgdeploy.router.routes import LATENCY_BOUNDS
from bgdeploy.router.series import Series
from bgdeploy.router.stats import RouterStats

log = logging.getLogger("bgdeploy.router.admin")

STATUS_CACHE_S = 0.1
# Answers one connection may owe at once; a client that pipelines more is cut off.
PIPELINE_LIMIT = 32
TEXT = b"text/plain"
JSON = b"application/json"
METRICS = b"text/plain; version=0.0.4; charset=utf-8"
HTML = b"text/html; charset=utf-8"
ALLOW = b"Allow: GET, HEAD\r\n"


class MetricsSnapshot:
    """The workers' counters, summed. Series labelled by boot are shown for the boots in
    ``live`` (and whatever still routes or has requests in flight) only, so that /metrics
    does not grow with every boot ever started; the lifetime totals stay, unlabelled."""

    def __init__(self, stats: RouterStats, live: set[str] | None = None) -> None:
        self.stats = stats
        self.requests_by_code: dict[int, int] = {}
        for (_boot, code), n in stats.requests.items():
            self.requests_by_code[code] = self.requests_by_code.get(code, 0) + n
        self.errors_by_kind: dict[str, int] = {}
        for (_boot, kind), n in stats.upstream_errors.items():
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + n
        if live is not None:
            live = live | {b for b, n in stats.inflight.items() if n}
            live |= {r[0] for r in (stats.route, stats.preview) if r is not None}
        self.requests = {k: n for k, n in stats.requests.items() if live is None or k[0] in live}
        self.inflight = {b: n for b, n in stats.inflight.items() if live is None or b in live}
        self.upstream_errors = {
            k: n for k, n in stats.upstream_errors.items() if live is None or k[0] in live
        }
        self.latency = {b: c for b, c in stats.latency.items() if live is None or b in live}
        self.replicas = {k: c for k, c in stats.replicas.items() if live is None or k[0] in live}
        self.switches = stats.switches
        self.route_age = time.time() - stats.route_changed_at
        self.connections = stats.connections
        self.active = stats.route
        self.preview = stats.preview
        self.paused = stats.paused
        self.held = stats.held
        self.maintenance = stats.maintenance

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
        latency = HistogramMetricFamily(
            "bgdeploy_response_seconds",
            "Seconds from a request's head to its answer's head, by boot.",
            labels=["boot"],
        )
        for boot, counts in sorted(self.latency.items()):
            latency.add_metric([boot], histogram_buckets(counts), None)
        yield latency
        answered = CounterMetricFamily(
            "bgdeploy_replica_requests",
            "Responses sent, by replica: its boot and port (a boot of one process has one).",
            labels=["boot", "port"],
        )
        failed = CounterMetricFamily(
            "bgdeploy_replica_upstream_errors",
            "Failed upstream connections, by replica: its boot and port.",
            labels=["boot", "port"],
        )
        outstanding = GaugeMetricFamily(
            "bgdeploy_replica_outstanding_requests",
            "Requests sent to a replica (boot and port) and not yet answered.",
            labels=["boot", "port"],
        )
        for (boot, port), (answers, errors, out) in sorted(self.replicas.items()):
            answered.add_metric([boot, str(port)], answers)
            failed.add_metric([boot, str(port)], errors)
            outstanding.add_metric([boot, str(port)], out)
        yield answered
        yield failed
        yield outstanding
        served = CounterMetricFamily(
            "bgdeploy_router_requests",
            "Responses sent since the router started, by status (every boot, stopped ones too).",
            labels=["code"],
        )
        for code, n in sorted(self.requests_by_code.items()):
            served.add_metric([str(code)], n)
        yield served
        failed = CounterMetricFamily(
            "bgdeploy_router_upstream_errors",
            "Failed upstream connections since the router started, by kind (every boot).",
            labels=["kind"],
        )
        for kind, n in sorted(self.errors_by_kind.items()):
            failed.add_metric([kind], n)
        yield failed
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
            active.add_metric([self.active[0], str(self.active[1])], 1)
        yield active
        preview = GaugeMetricFamily(
            "bgdeploy_preview_boot_info",
            "The candidate held at ready that preview requests go to.",
            labels=["boot", "generation"],
        )
        if self.preview is not None:
            preview.add_metric([self.preview[0], str(self.preview[1])], 1)
        yield preview
        yield GaugeMetricFamily(
            "bgdeploy_paused", "1 while new requests are held (bgdeploy pause).", value=self.paused
        )
        yield GaugeMetricFamily(
            "bgdeploy_held_requests", "Requests waiting for bgdeploy resume.", value=self.held
        )
        yield GaugeMetricFamily(
            "bgdeploy_maintenance",
            "1 while every new request gets the maintenance answer.",
            value=self.maintenance,
        )
        workers = self.stats.workers_info()
        conns = GaugeMetricFamily(
            "bgdeploy_worker_open_connections",
            "Open client connections, by worker.",
            labels=["pid"],
        )
        served = CounterMetricFamily(
            "bgdeploy_worker_requests", "Responses sent, by worker.", labels=["pid"]
        )
        for w in workers:
            conns.add_metric([str(w["pid"])], w["connections"])
            served.add_metric([str(w["pid"])], w["requests"])
        yield conns
        yield served


def histogram_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, "le" each bound, then +Inf) of a latency histogram."""
    out, total = [], 0
    for bound, n in zip((*LATENCY_BOUNDS, float("inf")), counts, strict=False):
        total += n
        out.append(("+Inf" if bound == float("inf") else f"{bound:g}", total))
    return out


def traffic_dict(series: Series, window: float, end: float | None = None) -> dict[str, Any]:
    """The body of ``/api/traffic``: each boot's answers, answers by status class, 5xx
    answers and their ratio, upstream errors and p50/p99 latency over the ``window``
    seconds up to ``end`` (unix time; now when None; see Series.window); ``span`` is the
    time between the two samples compared (0 when there are not two yet). ValueError for
    a window that is not positive or an end that is not a time."""
    end = time.time() if end is None else end
    if not (0 < window < float("inf")) or not (0 <= end < float("inf")):
        raise ValueError("window must be positive and end a unix time")
    edges = series.bounds(window, end)
    return {
        "window": window,
        "end": end,
        "span": round(edges[1] - edges[0], 3) if edges else 0.0,
        "boots": {boot: f.as_dict() for boot, f in series.window(window, end).items()},
    }


def traffic_json(series: Series, query: bytes) -> tuple[int, bytes]:
    """``/api/traffic?window=SECONDS[&end=UNIX]`` (see traffic_dict); 400 for a bad query."""
    args = dict(p.partition(b"=")[::2] for p in query.split(b"&") if p)
    try:
        window = float(args.get(b"window", b"30"))
        end = float(args[b"end"]) if args.get(b"end") else None
    except ValueError:
        return 400, b"window and end must be numbers (seconds, unix time)\n"
    try:
        body = traffic_dict(series, window, end)
    except ValueError as e:
        return 400, f"{e}\n".encode()
    return 200, json.dumps(body).encode()


def metrics_text(stats: RouterStats, live: set[str] | None = None) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MetricsSnapshot(stats, live))
    return generate_latest(reg)


def route_dict(stats: RouterStats) -> dict[str, Any]:
    """The body of ``/api/route``: the route all serving workers have, and the controls."""
    route = stats.route
    return {
        "boot_id": route[0] if route else None,
        "generation": route[1] if route else None,
        "inflight": stats.inflight,
        "requests_total": sum(stats.requests.values()),
        "preview_boot_id": stats.preview[0] if stats.preview else None,
        "paused": stats.paused,
        "healing": stats.healing,
        "held_requests": stats.held,
        "maintenance": stats.maintenance,
        "canary_weight": stats.canary_weight,
        # Per boot, per port: its replica's requests, upstream_errors and outstanding.
        "replicas": stats.replicas_of(),
        "workers": [
            {"pid": w["pid"], "boot_id": w["route"], "draining": w["draining"]}
            for w in stats.workers_info()
        ],
    }


def route_json(stats: RouterStats) -> bytes:
    return json.dumps(route_dict(stats)).encode()


def dashboard_page() -> bytes:
    return resources.files("bgdeploy.ui").joinpath("dashboard.html").read_bytes()


class Admin:
    """Shared by all admin connections: caches the status object briefly."""

    def __init__(
        self,
        snapshot: Callable[[], RouterStats],
        status: Callable[[RouterStats], dict[str, Any]],
        history: Callable[[], list[dict[str, Any]]],
        router: Callable[[RouterStats], dict[str, Any]],
        status_all: Callable[[RouterStats], list[dict[str, Any]]] | None = None,
        live_boots: Callable[[], set[str] | None] = lambda: None,
    ):
        self.snapshot = snapshot
        self.live_boots = live_boots
        self.status = status
        self.history = history
        self.series = Series()
        self.router = router
        self.status_all = status_all
        self._cache: tuple[float, bytes] | None = None
        # Requests answered (in /api/router): the control loop in the supervisor makes none.
        self.requests = 0

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def status_json(self) -> bytes:
        now = time.monotonic()
        if self._cache and now - self._cache[0] < STATUS_CACHE_S:
            return self._cache[1]
        body = json.dumps(await self._in_thread(lambda: self.status(self.snapshot()))).encode()
        self._cache = (now, body)
        return body

    async def status_all_json(self) -> bytes:
        """``/api/status?all=1``: every service of the registry (not cached: rare)."""
        produce = self.status_all or (lambda snap: [self.status(snap)])
        return json.dumps(await self._in_thread(lambda: produce(self.snapshot()))).encode()

    async def route_json(self) -> bytes:
        return route_json(await self._in_thread(self.snapshot))

    async def router_json(self) -> bytes:
        return json.dumps(await self._in_thread(lambda: self.router(self.snapshot()))).encode()

    async def metrics(self) -> bytes:
        return await self._in_thread(lambda: metrics_text(self.snapshot(), self.live_boots()))

    async def history_json(self) -> bytes:
        events = await asyncio.get_running_loop().run_in_executor(None, self.history)
        return json.dumps(events).encode()


class AdminConnection(asyncio.Protocol):
    """One admin client. Answers go out in the order their requests came (HTTP/1.1
    pipelining) although a status answer is produced in a thread while a later
    /metrics answer is ready at once; a HEAD answer is the GET answer's head."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.answers: deque[asyncio.Future[tuple[bytes, bool]]] = deque()  # oldest first
        self.burst = 0  # requests parsed from the current read
        self.done = False  # the last request to answer is parsed: read no more

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for answer in self.answers:
            answer.cancel()
        self.answers.clear()

    # A client that does not read its answers stops being read.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.burst = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # answered as a plain request and closed: see on_message_complete
        except httptools.HttpParserInvalidMethodError:
            # llhttp knows the registered methods only; any other is not one we allow.
            if not self.done:
                self._answer(405, b"read-only: GET only\n", close=True, extra=ALLOW)
        except httptools.HttpParserError:
            if not self.done:
                self._answer(400, b"bad request\n", close=True)

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        if self.done:  # pipelined after a request that closes the connection
            return
        self.burst += 1
        self.admin.requests += 1
        if self.burst + len(self.answers) > PIPELINE_LIMIT:
            self._answer(503, b"too many pipelined requests\n", close=True)
            return
        method = self.parser.get_method()
        head_only = method == b"HEAD"
        # An Upgrade request gets a plain answer, and whatever follows it is not HTTP.
        close = not self.parser.should_keep_alive() or self.parser.should_upgrade()
        if method not in (b"GET", b"HEAD"):
            self._answer(405, b"read-only: GET only\n", close=close, extra=ALLOW)
            return
        parsed = httptools.parse_url(self.url)
        path = parsed.path.decode(errors="replace")
        every = b"all=1" in (parsed.query or b"").split(b"&")
        if path == "/api/status":
            produce = self.admin.status_all_json if every else self.admin.status_json
            self._later(produce, JSON, head_only, close)
        elif path == "/api/history":
            self._later(self.admin.history_json, JSON, head_only, close)
        elif path == "/api/route":
            self._later(self.admin.route_json, JSON, head_only, close)
        elif path == "/api/router":
            self._later(self.admin.router_json, JSON, head_only, close)
        elif path == "/api/series":
            body = json.dumps(self.admin.series.as_dict()).encode()
            self._answer(200, body, JSON, head_only=head_only, close=close)
        elif path == "/api/traffic":
            status, body = traffic_json(self.admin.series, parsed.query or b"")
            ctype = JSON if status == 200 else TEXT
            self._answer(status, body, ctype, head_only=head_only, close=close)
        elif path == "/metrics":
            self._later(self.admin.metrics, METRICS, head_only, close)
        elif path in ("/", "/index.html"):
            self._answer(200, dashboard_page(), HTML, head_only=head_only, close=close)
        else:
            self._answer(404, b"not found\n", head_only=head_only, close=close)

    def _answer(
        self,
        status: int,
        body: bytes,
        ctype: bytes = TEXT,
        *,
        head_only: bool = False,
        close: bool,
        extra: bytes = b"",
    ) -> None:
        """Queue an answer that is ready now."""
        answer = asyncio.get_running_loop().create_future()
        answer.set_result((render(status, ctype, body, head_only, close, extra), close))
        self._queue(answer, close)

    def _later(
        self, produce: Callable[[], Awaitable[bytes]], ctype: bytes, head_only: bool, close: bool
    ) -> None:
        """Queue an answer produced in a worker thread (its place in line is kept)."""

        async def answer() -> tuple[bytes, bool]:
            try:
                body = await produce()
            except Exception as e:  # noqa: BLE001 - the admin page reports, never crashes
                log.warning("admin answer failed: %s", e)
                error = json.dumps({"error": str(e)}).encode()
                return render(503, JSON, error, head_only, close), close
            return render(200, ctype, body, head_only, close), close

        self._queue(asyncio.get_running_loop().create_task(answer()), close)

    def _queue(self, answer: asyncio.Future[tuple[bytes, bool]], close: bool) -> None:
        self.done = close
        self.answers.append(answer)
        if answer.done():
            self._flush()
        else:
            answer.add_done_callback(lambda _: self._flush())

    def _flush(self) -> None:
        """Write every answer that is ready and has no earlier answer still due."""
        while self.answers and self.answers[0].done():
            answer = self.answers.popleft()
            if answer.cancelled() or self.transport.is_closing():
                return
            data, close = answer.result()
            self.transport.write(data)
            if close:
                self.transport.close()
                return


def render(
    status: int, ctype: bytes, body: bytes, head_only: bool, close: bool, extra: bytes = b""
) -> bytes:
    """A whole answer; for HEAD the same head, Content-Length included, and no body."""
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\n%s%s\r\n"
        % (
            status,
            _REASON[status],
            ctype,
            len(body),
            extra,
            b"Connection: close\r\n" if close else b"",
        )
    )
    return head if head_only else head + body


_REASON = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    503: b"Service Unavailable",
}
