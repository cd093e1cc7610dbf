"""The dashboard chart's series (per-second rates per boot from cumulative counters) and
the traffic windows (answers, errors and latency per boot between two samples)."""

from __future__ import annotations

import pytest

from bgdeploy.router.routes import LATENCY_BOUNDS
from bgdeploy.router.series import Series, quantile_ms


def test_rates_and_non_2xx_per_boot_between_samples():
    s = Series(seconds=3)
    s.sample({}, now=100.0)
    s.sample({("blue-1", 200): 10, ("blue-1", 503): 2}, now=101.0)
    s.sample({("blue-1", 200): 10, ("blue-1", 503): 2, ("green-2", 200): 8}, now=103.0)
    data = s.as_dict()
    assert data["t"] == [101.0, 103.0]
    blue, green = data["boots"]["blue-1"], data["boots"]["green-2"]
    assert (blue["rps"], blue["non_2xx"]) == ([12.0, 0.0], [2.0, 0.0])
    # A boot that appears later has zeros before it.
    assert (green["rps"], green["non_2xx"]) == ([0.0, 4.0], [0.0, 0.0])
    # No latency was sampled: no p99 to draw.
    assert blue["p99_ms"] == [None, None] and green["p99_ms"] == [None, None]


def test_only_the_last_minutes_are_kept():
    s = Series(seconds=3)
    for i in range(10):
        s.sample({("b", 200): i * 5}, now=float(i))
    data = s.as_dict()
    assert data["t"] == [7.0, 8.0, 9.0]
    assert data["boots"]["b"]["rps"] == [5.0, 5.0, 5.0]


# -- traffic windows ---------------------------------------------------------------------

BUCKETS = len(LATENCY_BOUNDS) + 1


def hist(**at: int) -> list[int]:
    """A latency histogram with counts in the buckets named by their upper bound in ms
    (b1 = up to 1 ms, b2_5, b5, ...; inf = past the last bound)."""
    counts = [0] * BUCKETS
    for name, n in at.items():
        ms = float("inf") if name == "inf" else float(name[1:].replace("_", "."))
        i = BUCKETS - 1 if ms == float("inf") else LATENCY_BOUNDS.index(ms / 1000)
        counts[i] += n
    return counts


def test_a_window_is_the_difference_between_its_two_edge_samples():
    s = Series(seconds=300)
    s.sample({("blue-1", 200): 5}, latency={"blue-1": hist(b1=5)}, now=100.0)
    s.sample(
        {("blue-1", 200): 95, ("blue-1", 404): 5, ("blue-1", 502): 2, ("blue-1", 503): 3},
        {("blue-1", "connect"): 2, ("blue-1", "timeout"): 1},
        {"blue-1": hist(b1=55, b5=50)},
        now=101.0,
    )
    (boot,) = s.window(10, end=101.0).items()
    assert boot[0] == "blue-1"
    f = boot[1]
    assert f.answers == 100
    assert f.by_class == {"2xx": 90, "3xx": 0, "4xx": 5, "5xx": 5}
    assert f.errors == 5 and f.error_ratio == 0.05
    assert f.upstream_errors == {"connect": 2, "timeout": 1}
    # 50 answers up to 1 ms then 50 between 2.5 and 5 ms: p50 is the end of the first
    # bucket, p99 interpolated inside the third.
    assert f.p50_ms == 1.0
    assert f.p99_ms == pytest.approx(2.5 + 2.5 * 49 / 50)
    assert f.as_dict()["by_class"]["5xx"] == 5


def test_the_window_edges_are_the_samples_at_or_after_its_start_and_at_or_before_its_end():
    s = Series(seconds=300)
    for t in range(100, 111):  # one answer a second, one sample a second
        s.sample({("b", 200): t - 100}, now=float(t))
    # [102, 105]: samples 102 and 105 exactly.
    assert s.bounds(3, end=105.0) == (102.0, 105.0)
    assert s.window(3, end=105.0)["b"].answers == 3
    # Between samples: the first sample at or after 101.5 (102), the last at or before 105.5.
    assert s.bounds(4, end=105.5) == (102.0, 105.0)
    assert s.window(4, end=105.5)["b"].answers == 3
    # Default end: now, i.e. after the last sample; a window longer than what is kept
    # starts at the oldest sample.
    assert s.window(1e10)["b"].answers == 10
    assert s.bounds(1e10) == (100.0, 110.0)
    # Fewer than two samples in the window: nothing to compare.
    assert s.window(0.5, end=105.0) == {} and s.bounds(0.5, end=105.0) is None
    assert s.window(10, end=99.0) == {}
    assert s.window(3, end=1000.0) == {}  # starts after the last sample


def test_boots_without_traffic_in_the_window_are_left_out_and_new_boots_count_from_zero():
    s = Series(seconds=300)
    s.sample({("blue-1", 200): 50}, now=100.0)
    s.sample({("blue-1", 200): 50, ("green-2", 500): 4}, {("green-2", "connect"): 1}, now=101.0)
    w = s.window(5, end=101.0)
    assert list(w) == ["green-2"]
    assert w["green-2"].answers == 4 and w["green-2"].error_ratio == 1.0
    assert w["green-2"].upstream_errors == {"connect": 1}
    # Answers but no histogram (e.g. from a worker of an older version): no quantiles.
    assert w["green-2"].p50_ms is None and w["green-2"].p99_ms is None


def test_no_answers_means_no_ratio_and_no_quantiles():
    s = Series(seconds=300)
    s.sample({}, now=100.0)
    s.sample({}, {("b", "connect"): 3}, now=101.0)
    f = s.window(5, end=101.0)["b"]
    assert f.answers == 0 and f.error_ratio is None
    assert f.p50_ms is None and f.p99_ms is None and f.upstream_errors == {"connect": 3}


def test_only_the_last_minutes_are_kept_for_windows_too():
    s = Series(seconds=3)
    for i in range(10):
        s.sample({("b", 200): i * 5}, now=float(i))
    assert s.bounds(100, end=9.0) == (6.0, 9.0)
    assert s.window(100, end=9.0)["b"].answers == 15


def test_quantiles_interpolate_inside_their_bucket():
    assert quantile_ms([0] * BUCKETS, 0.5) is None
    assert quantile_ms(hist(b1=10), 0.5) == 0.5  # from 0 in the first bucket
    assert quantile_ms(hist(b10=4), 0.5) == pytest.approx(7.5)
    assert quantile_ms(hist(b1=99, b100=1), 0.99) == 1.0
    assert quantile_ms(hist(b1=98, b100=2), 0.99) == pytest.approx(75.0)
    # Past the last bound: at least that, reported as the last bound.
    assert quantile_ms(hist(b1=1, inf=9), 0.5) == 10_000.0


def test_the_chart_series_has_each_intervals_p99_per_boot():
    s = Series(seconds=10)
    s.sample({("blue-1", 200): 100}, latency={"blue-1": hist(b1=100)}, now=100.0)
    # The next second: 100 more answers, all between 250 and 500 ms.
    s.sample({("blue-1", 200): 200}, latency={"blue-1": hist(b1=100, b500=100)}, now=101.0)
    s.sample({("blue-1", 200): 200}, latency={"blue-1": hist(b1=100, b500=100)}, now=102.0)
    p99 = s.as_dict()["boots"]["blue-1"]["p99_ms"]
    # Only the interval's answers count (the earlier fast ones do not pull it down); an
    # interval without answers has none.
    assert 250 < p99[0] <= 500 and p99[1] is None
