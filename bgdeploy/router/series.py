"""What each boot's users saw over the last minutes: the dashboard chart and traffic windows.

Once a second the supervisor adds up the workers' counters (router/stats.py) and
hands the totals to ``Series.sample``, which keeps, per boot, the cumulative
answers, answers by status class, upstream errors by kind and the latency
histogram, for ``SERIES_SECONDS``. A sample costs one pass over the counters (a
few keys), not one write per request; everything else is a difference between
two samples:

- ``as_dict`` (``/api/series``, the dashboard chart): answers per second and
  non-2xx answers per second, per interval between two samples;
- ``window`` (``/api/traffic``, the traffic analysis and the canary verdicts): the
  answers, error ratio, upstream errors and p50/p99 latency of each boot over the
  last N seconds (or the N seconds before a given time).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgdeploy.router.routes import LATENCY_BOUNDS

SERIES_SECONDS = 300
CLASSES = ("2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class Totals:
    """One boot's cumulative counters at one sample."""

    answers: int = 0
    by_class: tuple[int, int, int, int] = (0, 0, 0, 0)  # 2xx, 3xx, 4xx, 5xx
    upstream_errors: Mapping[str, int] = field(default_factory=dict)
    latency: tuple[int, ...] = ()  # counts per LATENCY_BOUNDS bucket, then +inf


ZERO = Totals()


@dataclass(frozen=True)
class Figures:
    """One boot's traffic between two samples."""

    answers: int
    by_class: dict[str, int]
    errors: int  # 5xx answers, the router's own 502/504 for the boot included
    error_ratio: float | None  # errors / answers; None without answers
    upstream_errors: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "by_class": dict(self.by_class),
            "errors": self.errors,
            "error_ratio": self.error_ratio,
            "upstream_errors": dict(self.upstream_errors),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def quantile_ms(
    counts: Sequence[int], q: float, bounds: Sequence[float] = LATENCY_BOUNDS
) -> float | None:
    """The q-quantile of a latency histogram, in milliseconds: found in the bucket where
    the cumulative count reaches q of the total, linearly interpolated inside it (from 0
    for the first bucket). In the last, unbounded bucket it is that bucket's lower bound,
    the largest bound: "at least this". None for an empty histogram."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n > 0 and below + n >= rank:
            if i >= len(bounds):
                return round(bounds[-1] * 1000, 3)
            low = bounds[i - 1] if i > 0 else 0.0
            return round((low + (bounds[i] - low) * (rank - below) / n) * 1000, 3)
        below += n
    return round(bounds[-1] * 1000, 3)  # not reached: counts sum to total


def figures(before: Totals, after: Totals) -> Figures:
    """The differences between two samples of one boot's totals (never negative)."""
    answers = max(0, after.answers - before.answers)
    by_class = {
        name: max(0, a - b)
        for name, a, b in zip(CLASSES, after.by_class, before.by_class, strict=True)
    }
    errors = by_class["5xx"]
    kinds = {
        kind: n - before.upstream_errors.get(kind, 0) for kind, n in after.upstream_errors.items()
    }
    old = before.latency or (0,) * len(after.latency)
    latency = (
        [max(0, a - b) for a, b in zip(after.latency, old, strict=True)]
        if len(old) == len(after.latency)
        else []
    )
    return Figures(
        answers=answers,
        by_class=by_class,
        errors=errors,
        error_ratio=round(errors / answers, 6) if answers else None,
        upstream_errors={k: n for k, n in sorted(kinds.items()) if n > 0},
        p50_ms=quantile_ms(latency, 0.50) if answers else None,
        p99_ms=quantile_ms(latency, 0.99) if answers else None,
    )


def totals_of(
    requests: Mapping[tuple[str, int], int],
    upstream_errors: Mapping[tuple[str, str], int] | None = None,
    latency: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, Totals]:
    """Per boot, the totals of the router's summed counters (see stats.RouterStats)."""
    answers: dict[str, list[int]] = {}  # boot: [answers, 2xx, 3xx, 4xx, 5xx]
    for (boot, status), n in requests.items():
        line = answers.setdefault(boot, [0, 0, 0, 0, 0])
        line[0] += n
        if 200 <= status < 600:
            line[status // 100 - 1] += n
    errors: dict[str, dict[str, int]] = {}
    for (boot, kind), n in (upstream_errors or {}).items():
        errors.setdefault(boot, {})[kind] = n
    histograms = {boot: tuple(counts) for boot, counts in (latency or {}).items()}
    out = {}
    for boot in answers.keys() | errors.keys() | histograms.keys():
        line = answers.get(boot, [0, 0, 0, 0, 0])
        out[boot] = Totals(
            answers=line[0],
            by_class=(line[1], line[2], line[3], line[4]),
            upstream_errors=errors.get(boot, {}),
            latency=histograms.get(boot, ()),
        )
    return out


def _p99_between(before: Sequence[int], after: Sequence[int]) -> float | None:
    """The p99 of the answers between two cumulative histograms, in ms (None: none)."""
    if not after:
        return None
    delta = [n - (before[i] if i < len(before) else 0) for i, n in enumerate(after)]
    p99 = quantile_ms(delta, 0.99)
    return None if p99 is None else round(p99, 1)


class Series:
    def __init__(self, seconds: int = SERIES_SECONDS) -> None:
        # (wall-clock time, {boot: Totals}) once a second
        self.samples: deque[tuple[float, dict[str, Totals]]] = deque(maxlen=seconds + 1)

    def sample(
        self,
        requests: Mapping[tuple[str, int], int],
        upstream_errors: Mapping[tuple[str, str], int] | None = None,
        latency: Mapping[str, Iterable[int]] | None = None,
        now: float | None = None,
    ) -> None:
        totals = totals_of(requests, upstream_errors, latency)
        self.samples.append((time.time() if now is None else now, totals))

    def as_dict(self) -> dict[str, object]:
        """{"t": [unix seconds...], "boots": {boot: {"rps": [...], "non_2xx": [...],
        "p99_ms": [...]}}}: one point per interval between two samples, at its end
        (p99 is null for an interval without answers)."""
        samples = list(self.samples)
        times: list[float] = []
        boots: dict[str, dict[str, list[float]]] = {}
        for i, ((t0, before), (t1, after)) in enumerate(zip(samples, samples[1:], strict=False)):
            span = max(t1 - t0, 1e-3)
            times.append(round(t1, 3))
            for boot, now in after.items():
                was = before.get(boot, ZERO)
                total = now.answers - was.answers
                good = now.by_class[0] - was.by_class[0]
                if not now.answers and boot not in boots:
                    continue  # upstream errors only, no answer yet: not on the chart
                line = boots.setdefault(
                    boot, {"rps": [0.0] * i, "non_2xx": [0.0] * i, "p99_ms": [None] * i}
                )
                line["rps"].append(round(total / span, 2))
                line["non_2xx"].append(round((total - good) / span, 2))
                line["p99_ms"].append(_p99_between(was.latency, now.latency))
            for line in boots.values():  # a boot with no answers in this interval
                if len(line["rps"]) == i:
                    line["rps"].append(0.0)
                    line["non_2xx"].append(0.0)
                    line["p99_ms"].append(None)
        return {"t": times, "boots": boots}

    def bounds(self, seconds: float, end: float | None = None) -> tuple[float, float] | None:
        """The times of the two samples a window compares: the first at or after
        ``end - seconds`` and the last at or before ``end`` (unix time; default now).
        None when there are not two such samples (too early, or a window in the future
        or older than what is kept)."""
        first, last = self._ends(seconds, end)
        if first is None or last is None:
            return None
        return self.samples[first][0], self.samples[last][0]

    def _ends(self, seconds: float, end: float | None) -> tuple[int | None, int | None]:
        end = time.time() if end is None else end
        start = end - seconds
        samples = self.samples
        last = next((i for i in range(len(samples) - 1, -1, -1) if samples[i][0] <= end), None)
        first = next((i for i, (t, _) in enumerate(samples) if t >= start), None)
        if first is None or last is None or first >= last:
            return None, None
        return first, last

    def window(self, seconds: float, end: float | None = None) -> dict[str, Figures]:
        """Per boot, its traffic between the sample at or after ``end - seconds`` and the
        last sample at or before ``end`` (unix time; default now). Boots with neither
        an answer nor an upstream error in the window are left out; so is everything
        when there are not two such samples (see ``bounds``)."""
        first, last = self._ends(seconds, end)
        if first is None or last is None:
            return {}
        before, after = self.samples[first][1], self.samples[last][1]
        out = {}
        for boot, now in sorted(after.items()):
            f = figures(before.get(boot, ZERO), now)
            if f.answers or f.upstream_errors:
                out[boot] = f
        return out
