#!/usr/bin/env python3
"""Keep-alive clients that log every request's start, end and outcome, so that a
test can say what a kill cost: the requests in flight at the kill, the ones that
failed, the gap until a new boot served, and the requests held meanwhile.

Four clients send GET /slow?ms=20 and one sends POST /echo (a random body that
must come back). Bounded in time and count.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
from dataclasses import dataclass, field

SLOW_GET = "/slow?ms=20"
PID = re.compile(rb'"pid": (\d+)')


@dataclass
class Req:
    method: str
    start: float
    end: float | None = None
    status: int | None = None  # None: an exception instead of an answer
    boot: str | None = None
    pid: int | None = None  # the daemon process that answered (a replica of the boot)
    error: str | None = None


@dataclass
class KillFigures:
    at: float
    killed: str
    in_flight: int
    failed: int
    failed_get: int
    gap_s: float | None
    held: int
    held_answered: int
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        gap = f"{self.gap_s * 1000:.0f} ms" if self.gap_s is not None else "never"
        return (
            f"in flight {self.in_flight}, failed {self.failed} (GET {self.failed_get}), "
            f"served again after {gap}, held then answered {self.held_answered}/{self.held}"
        )


class CrashLoad:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        gets: int = 4,
        posts: int = 1,
        seconds: float = 120.0,
        max_requests: int = 200_000,
    ) -> None:
        self.host, self.port = host, port
        self.kinds = ["GET"] * gets + ["POST"] * posts
        self.deadline = time.monotonic() + seconds
        self.max_requests = max_requests
        self.log: list[Req] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(kind,), daemon=True) for kind in self.kinds
        ]

    def start(self) -> CrashLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def answered_by(self, after: float = 0.0) -> dict[int, int]:
        """GETs answered 200 since ``after``, by the daemon process that answered."""
        counts: dict[int, int] = {}
        with self.lock:
            for r in self.log:
                if r.status == 200 and r.pid is not None and r.start > after:
                    counts[r.pid] = counts.get(r.pid, 0) + 1
        return counts

    def failures(self, after: float = 0.0) -> list[Req]:
        with self.lock:
            return [
                r for r in self.log if r.end is not None and r.status != 200 and r.start > after
            ]

    def in_flight(self, at: float) -> int:
        with self.lock:
            return sum(1 for r in self.log if r.start <= at and (r.end is None or r.end > at))

    def served_by(self, boot: str, after: float) -> bool:
        with self.lock:
            return any(r.boot == boot and r.status == 200 and r.start > after for r in self.log)

    def figures(self, at: float, killed: str, until: float) -> KillFigures:
        """What the kill at ``at`` of boot ``killed`` cost, looking at requests that
        ended after it and by ``until`` (the next kill, or the end: a request still
        running then belongs to the next kill)."""
        with self.lock:
            reqs = [r for r in self.log if r.end is not None and at < r.end <= until]
        in_flight = sum(1 for r in reqs if r.start <= at)
        failed = [r for r in reqs if r.status != 200]
        served = sorted(
            r.end for r in reqs if r.status == 200 and r.boot != killed and r.end is not None
        )
        gap = served[0] - at if served else None
        back = at + gap if gap is not None else until
        # Held: started after the kill and before the new boot first answered, or a GET
        # in flight at the kill (it is resent): each must be answered by a new boot.
        held = [
            r
            for r in reqs
            if at < r.start < back or (r.method == "GET" and r.start <= at and r.boot != killed)
        ]
        return KillFigures(
            at=at,
            killed=killed,
            in_flight=in_flight,
            failed=len(failed),
            failed_get=sum(1 for r in failed if r.method == "GET"),
            gap_s=gap,
            held=len(held),
            held_answered=sum(1 for r in held if r.status == 200 and r.boot != killed),
            errors=[f"{r.method} {r.status} {r.error or ''}"[:200] for r in failed][:10],
        )

    def _client(self, kind: str) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        i = 0
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            i += 1
            with self.lock:
                if len(self.log) >= self.max_requests:
                    break
                req = Req(kind, time.monotonic())
                self.log.append(req)
            try:
                if kind == "POST":
                    body = os.urandom(64 + (i * 37) % 4000)
                    conn.request("POST", "/echo", body=body)
                    resp = conn.getresponse()
                    got = resp.read()
                    ok = got == body
                else:
                    conn.request("GET", SLOW_GET)
                    resp = conn.getresponse()
                    got = resp.read()
                    ok = b'"version"' in got or resp.status != 200
                req.boot = resp.getheader("X-Bgdeploy-Boot")
                if kind == "GET" and (m := PID.search(got)) is not None:
                    req.pid = int(m.group(1))
                req.status = resp.status if ok else -1
                if resp.status != 200:
                    req.error = got[:120].decode(errors="replace")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as e:
                req.error = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            req.end = time.monotonic()
        conn.close()
