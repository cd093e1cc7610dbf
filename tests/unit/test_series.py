"""The dashboard chart's series: per-second rates per boot from cumulative counters."""

from __future__ import annotations

from bgdeploy.router.series import Series


def test_rates_and_non_2xx_per_boot_between_samples():
    s = Series(seconds=3)
    s.sample({}, now=100.0)
    s.sample({("blue-1", 200): 10, ("blue-1", 503): 2}, now=101.0)
    s.sample({("blue-1", 200): 10, ("blue-1", 503): 2, ("green-2", 200): 8}, now=103.0)
    data = s.as_dict()
    assert data["t"] == [101.0, 103.0]
    assert data["boots"]["blue-1"] == {"rps": [12.0, 0.0], "non_2xx": [2.0, 0.0]}
    # A boot that appears later has zeros before it.
    assert data["boots"]["green-2"] == {"rps": [0.0, 4.0], "non_2xx": [0.0, 0.0]}


def test_only_the_last_minutes_are_kept():
    s = Series(seconds=3)
    for i in range(10):
        s.sample({("b", 200): i * 5}, now=float(i))
    data = s.as_dict()
    assert data["t"] == [7.0, 8.0, 9.0]
    assert data["boots"]["b"]["rps"] == [5.0, 5.0, 5.0]
