#!/usr/bin/env python3
"""Keep-alive load against one address; counts errors and mismatched bodies.

    python tools/loadgen.py --url http://127.0.0.1:47777 --clients 8 --seconds 10

Each client holds one keep-alive connection and alternates GET / with
POST /echo of a random body, which must come back byte for byte. Bounded in
time (--seconds) and count (--max-requests). Prints one JSON line.
Used by the tests, `make demo` and the benchmarks.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadStats:
    requests: int = 0
    failures: int = 0
    mismatches: int = 0
    boots: Counter = field(default_factory=Counter)
    failed_by_boot: Counter = field(default_factory=Counter)  # "?" when no boot answered
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "failed": self.failures,
            "mismatched": self.mismatches,
            "by_boot": dict(self.boots),
            "failed_by_boot": dict(self.failed_by_boot),
            "errors": self.errors[:10],
        }


class LoadGen:
    def __init__(
        self,
        url: str,
        clients: int = 8,
        *,
        max_requests: int = 1_000_000,
        seconds: float = 600.0,
        post_every: int = 2,
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.clients = clients
        self.max_requests = max_requests
        self.seconds = seconds
        self.post_every = post_every
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGen:
        self._deadline = time.monotonic() + self.seconds
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.stats

    def wait(self) -> LoadStats:
        for t in self._threads:
            t.join()
        return self.stats

    def _client(self, n: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        i = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self.stats.lock:
                if self.stats.requests >= self.max_requests:
                    return
                self.stats.requests += 1
            i += 1
            try:
                if i % self.post_every == 0:
                    body = os.urandom(64 + (i * 37) % 4000)
                    conn.request(
                        "POST",
                        "/echo",
                        body=body,
                        headers={"Content-Type": "application/octet-stream"},
                    )
                    resp = conn.getresponse()
                    got = resp.read()
                    ok_body = got == body
                else:
                    conn.request("GET", f"/?client={n}&i={i}")
                    resp = conn.getresponse()
                    got = resp.read()
                    ok_body = b'"version"' in got
                boot = resp.getheader("X-Bgdeploy-Boot", "?")
                with self.stats.lock:
                    self.stats.boots[boot] += 1
                    if resp.status != 200:
                        self.stats.failures += 1
                        self.stats.failed_by_boot[boot] += 1
                        self.stats.errors.append(f"HTTP {resp.status}: {got[:200]!r}")
                    elif not ok_body:
                        self.stats.mismatches += 1
                        self.stats.errors.append(f"body mismatch from {boot}")
            except (OSError, http.client.HTTPException) as e:
                with self.stats.lock:
                    self.stats.failures += 1
                    self.stats.failed_by_boot["?"] += 1
                    self.stats.errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.close()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:47777")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    args = p.parse_args()
    gen = LoadGen(
        args.url, args.clients, max_requests=args.max_requests, seconds=args.seconds
    ).start()
    print(json.dumps(gen.wait().as_dict()))


if __name__ == "__main__":
    main()
