"""Traffic analysis: judge a boot on what its users saw, not only on its health checks.

The router counts, per boot, its answers by status class and a latency histogram,
and keeps them in one-second samples for five minutes (``router.series``). Its admin
listener answers ``GET /api/traffic?window=S[&end=T]`` with each boot's figures
over a window. The verdicts here are pure functions of those figures and the
``[analysis]`` config, so a table-driven test covers them:

- after a switch (``judge_switched``), the new boot fails when 5xx answers are more
  than ``max_error_ratio`` of its answers, or, with ``max_p99_ratio`` set, when its
  p99 is more than that many times the old boot's p99 in the window before the
  switch;
- at the end of a canary step (``judge_canary``), the candidate is compared with the
  active boot *in the same window*: it fails when its error ratio is over
  ``max_error_ratio`` and also more than ``max_error_ratio`` above the active's (a
  fault both versions share, a database down, is not the candidate's), or when its
  p99 is over ``max_p99_ratio`` times the active's.

With fewer than ``min_requests`` answers there is no verdict (``ok`` is None); the
caller waits, up to ``analysis.max_wait``, then goes on and says so in history.
A p99 under ``P99_FLOOR_MS`` counts as that much: a 1 ms to 3 ms wobble is not a
regression users notice, and the histogram's buckets are coarser than that anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bgdeploy.config import AnalysisConfig

if TYPE_CHECKING:
    from bgdeploy.control.router_api import RouterApi

P99_FLOOR_MS = 10.0


@dataclass(frozen=True)
class Figures:
    """One boot's answers over a window, as the router counted them."""

    answers: int = 0
    errors: int = 0  # 5xx answers, the router's own 502/504 for this boot included
    p99_ms: float | None = None

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.answers if self.answers else None

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Figures:
        if not data:
            return cls()
        return cls(int(data.get("answers", 0)), int(data.get("errors", 0)), data.get("p99_ms"))

    def describe(self) -> str:
        ratio = self.error_ratio
        text = f"5xx ratio {_pct(ratio or 0.0)} over {self.answers} answers"
        if self.p99_ms is not None:
            text += f", p99 {self.p99_ms:.0f} ms"
        return text


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: too few answers to judge yet
    reason: str  # the figure that decided, e.g. "5xx ratio 31% over 212 answers (limit 5%)"


def _pct(ratio: float) -> str:
    value = ratio * 100
    return f"{value:.0f}%" if value >= 10 or value == int(value) else f"{value:.1f}%"


def _too_few(cfg: AnalysisConfig, fig: Figures, who: str) -> Verdict:
    return Verdict(
        None,
        f"{fig.answers} answers from {who}, fewer than analysis.min_requests "
        f"({cfg.min_requests}): no verdict yet",
    )


def _error_rule(
    cfg: AnalysisConfig, fig: Figures, baseline: float, whose: str = "the active boot's"
) -> Verdict | None:
    ratio = fig.error_ratio or 0.0
    limit = cfg.max_error_ratio
    if ratio > limit and ratio > baseline + limit:
        text = f"5xx ratio {_pct(ratio)} over {fig.answers} answers (limit {_pct(limit)})"
        if baseline > 0:
            text += f"; {whose} was {_pct(baseline)}"
        return Verdict(False, text)
    return None


def _latency_rule(cfg: AnalysisConfig, fig: Figures, base: Figures, whose: str) -> Verdict | None:
    limit = cfg.max_p99_ratio
    if limit is None or fig.p99_ms is None or base.p99_ms is None:
        return None
    if base.answers < cfg.min_requests:
        return None  # no baseline to compare with
    floor = max(base.p99_ms, P99_FLOOR_MS)
    ratio = fig.p99_ms / floor
    if ratio > limit:
        return Verdict(
            False,
            f"p99 {fig.p99_ms:.0f} ms, {ratio:.1f}× {whose} {base.p99_ms:.0f} ms "
            f"(limit {limit:g}×)",
        )
    return None


def judge_switched(cfg: AnalysisConfig, new: Figures, old_before: Figures) -> Verdict:
    """The active boot after a switch, over the window; ``old_before``: the old boot
    over the window before the switch (for the latency rule)."""
    if new.answers < cfg.min_requests:
        return _too_few(cfg, new, "the new boot")
    # The margin, as for a canary: a backend error that the old boot met too (before the
    # switch) is not the new version's.
    baseline = old_before.error_ratio if old_before.answers >= cfg.min_requests else None
    failed = _error_rule(cfg, new, baseline or 0.0, "the old boot's") or _latency_rule(
        cfg, new, old_before, "the old boot's"
    )
    return failed or Verdict(True, new.describe())


def judge_canary(cfg: AnalysisConfig, candidate: Figures, active: Figures) -> Verdict:
    """The candidate against the active boot over the same window."""
    if candidate.answers < cfg.min_requests:
        return _too_few(cfg, candidate, "the candidate")
    baseline = active.error_ratio if active.answers >= cfg.min_requests else None
    failed = _error_rule(cfg, candidate, baseline or 0.0) or _latency_rule(
        cfg, candidate, active, "the active boot's"
    )
    return failed or Verdict(True, f"{candidate.describe()} (active: {active.describe()})")


def fetch_traffic(
    router: RouterApi, window: float, end: float | None = None
) -> dict[str, Figures] | None:
    """Each boot's figures over ``window`` seconds ending at ``end`` (unix time; now),
    from the running router; None when no router runs or it did not answer."""
    answer = router.traffic(window, end)
    try:
        return {boot: Figures.of(data) for boot, data in answer["boots"].items()}
    except (KeyError, TypeError, AttributeError):
        return None
