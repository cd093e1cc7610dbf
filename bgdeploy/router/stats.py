"""The router's counters, summed over its workers (each counts its own; see worker.stats).

The supervisor asks every worker for its counters over the worker's unix socket
and adds them up here, with the last counters of workers that have exited, so
that request totals do not go back when a worker is replaced. Nothing on the
request path writes anywhere but the worker's own memory.
"""

from __future__ import annotations

import time
from typing import Any

# The latency histogram's buckets (seconds from a request's parsed head to its answer's
# head): an answer of t seconds counts in bucket bisect_right(LATENCY_BOUNDS, t), the
# last bucket being everything past the last bound. Here, in a module that imports
# nothing of the router, so that the request path (exchange) can import it without
# importing routes (which imports upstream: a circle in the compiled build).
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouterStats:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        # Per boot, answers by latency bucket (LATENCY_BOUNDS, then +inf).
        self.latency: dict[str, list[int]] = {}
        self.inflight: dict[str, int] = {}
        # Per replica (boot, port): [answers, upstream errors, outstanding requests].
        self.replicas: dict[tuple[str, int], list[int]] = {}
        self.connections = 0
        self.switches = 0
        self.route: tuple[str, int] | None = None
        self.preview: tuple[str, int] | None = None
        self.paused = False
        self.healing = False  # holding new requests while a dead active boot is replaced
        self.held = 0
        self.maintenance = False
        self.canary_weight = 0
        self.route_changed_at = time.time()
        self.workers: list[dict[str, Any]] = []

    @classmethod
    def of(cls, workers: list[dict[str, Any]], retired: RouterStats) -> RouterStats:
        snap = cls()
        snap.add(retired)
        snap.inflight = {}
        for counts in snap.replicas.values():
            counts[2] = 0  # a retired worker has none outstanding
        snap.connections = 0
        for w in workers:
            snap.add(w)
        snap.workers = workers
        serving = [w for w in workers if not w["draining"]] or workers
        # The route all serving workers have: while a switch is on its way, the one
        # behind, so that "the router follows" means every worker does.
        routes = [tuple(w["route"]) if w["route"] else None for w in serving]
        if routes:
            snap.route = min(routes, key=lambda r: -1 if r is None else r[1])  # type: ignore[assignment]
            snap.route_changed_at = max(w["route_changed_at"] for w in serving)
            previews = [tuple(w["preview"]) for w in serving if w.get("preview")]
            snap.preview = previews[0] if previews else None  # type: ignore[assignment]
        snap.paused = any(w.get("paused") for w in workers)
        snap.healing = any(w.get("healing") for w in workers)
        snap.maintenance = any(w.get("maintenance") for w in serving)
        # While a step is on its way, the share all serving workers give at least.
        snap.canary_weight = min((w.get("canary_weight", 0) for w in serving), default=0)
        snap.held = sum(w.get("held", 0) for w in workers)
        return snap

    def add(self, w: dict[str, Any] | RouterStats) -> None:
        """Add one worker's counters (or the retired workers' sum)."""
        if isinstance(w, RouterStats):
            requests, errors = w.requests.items(), w.upstream_errors.items()
            latency = w.latency.items()
            inflight, connections, switches = w.inflight, w.connections, w.switches
            replicas = [(b, p, *counts) for (b, p), counts in w.replicas.items()]
        else:
            requests = (((b, c), n) for b, c, n in w["requests"])
            errors = (((b, k), n) for b, k, n in w["upstream_errors"])
            latency = w.get("latency", ())  # a worker of an older bgdeploy has none
            inflight, connections, switches = w["inflight"], w["connections"], w["switches"]
            replicas = w.get("replicas", ())  # a worker of an older bgdeploy has none
        for key, n in requests:
            self.requests[key] = self.requests.get(key, 0) + n
        for key, n in errors:
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + n
        for boot, counts in latency:
            mine = self.latency.get(boot)
            if mine is None:
                self.latency[boot] = list(counts)
            elif len(mine) == len(counts):  # (buckets of another version: not summed)
                self.latency[boot] = [a + b for a, b in zip(mine, counts, strict=True)]
        for boot, n in inflight.items():
            self.inflight[boot] = self.inflight.get(boot, 0) + n
        for boot, port, answers, errors_, outstanding in replicas:
            mine = self.replicas.get((boot, port))
            if mine is None:
                self.replicas[(boot, port)] = [answers, errors_, outstanding]
            else:
                mine[0] += answers
                mine[1] += errors_
                mine[2] += outstanding
        self.connections += connections
        self.switches = max(self.switches, switches)

    def replicas_of(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per boot, per port (a string: a JSON key), its replica's ``requests`` (answers),
        ``upstream_errors`` and ``outstanding`` requests, summed over the workers."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (boot, port), (answers, errors, outstanding) in sorted(self.replicas.items()):
            out.setdefault(boot, {})[str(port)] = {
                "requests": answers,
                "upstream_errors": errors,
                "outstanding": outstanding,
            }
        return out

    def workers_info(self) -> list[dict[str, Any]]:
        """Per worker: what status, doctor and the dashboard show."""
        return [
            {
                "pid": w["pid"],
                "version": w["version"],
                "build": w.get("build"),  # None from a worker of an older bgdeploy
                "started": w["started"],
                "draining": w["draining"],
                "connections": w["connections"],
                "requests": sum(n for _b, _c, n in w["requests"]),
                "inflight": sum(w["inflight"].values()),
                "route": w["route"][0] if w["route"] else None,
                # What else it was asked (None from a worker of an older bgdeploy).
                "control_requests": w.get("control_requests"),
                "registry_checks": w.get("registry_checks"),
                "registry_reads": w.get("registry_reads"),
            }
            for w in sorted(self.workers, key=lambda w: w["started"])
        ]
