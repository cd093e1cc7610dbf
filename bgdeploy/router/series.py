"""Requests per second and non-2xx answers per boot over the last minutes, for the dashboard.

Once a second the router adds up its response counters per boot; the series keeps
those totals for ``SERIES_SECONDS`` and answers with per-second differences. A
sample costs one pass over the counters (a few keys), not one write per request.
"""

from __future__ import annotations

import time
from collections import deque

SERIES_SECONDS = 300


class Series:
    def __init__(self, seconds: int = SERIES_SECONDS) -> None:
        # (wall-clock time, {boot: (responses, non-2xx responses)}) once a second
        self.samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=seconds + 1)

    def sample(self, requests: dict[tuple[str, int], int], now: float | None = None) -> None:
        totals: dict[str, tuple[int, int]] = {}
        for (boot, status), n in requests.items():
            total, bad = totals.get(boot, (0, 0))
            totals[boot] = (total + n, bad + (0 if 200 <= status < 300 else n))
        self.samples.append((time.time() if now is None else now, totals))

    def as_dict(self) -> dict[str, object]:
        """{"t": [unix seconds...], "boots": {boot: {"rps": [...], "non_2xx": [...]}}}:
        one point per interval between two samples, at its end."""
        samples = list(self.samples)
        times: list[float] = []
        boots: dict[str, dict[str, list[float]]] = {}
        for i, ((t0, before), (t1, after)) in enumerate(zip(samples, samples[1:], strict=False)):
            span = max(t1 - t0, 1e-3)
            times.append(round(t1, 3))
            for boot, (total, bad) in after.items():
                total0, bad0 = before.get(boot, (0, 0))
                line = boots.setdefault(boot, {"rps": [0.0] * i, "non_2xx": [0.0] * i})
                line["rps"].append(round((total - total0) / span, 2))
                line["non_2xx"].append(round((bad - bad0) / span, 2))
            for line in boots.values():  # a boot with no answers in this interval
                if len(line["rps"]) == i:
                    line["rps"].append(0.0)
                    line["non_2xx"].append(0.0)
        return {"t": times, "boots": boots}
