"""The crash loop's arithmetic and how the route carries `healing` (no timing here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bgdeploy.control.crashes import CrashLoop, backoff
from bgdeploy.router.route_state import route_state
from bgdeploy.router.steering import Pause


def test_backoff_doubles_from_half_a_second_up_to_thirty():
    assert [backoff(n) for n in range(1, 10)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_the_status_line_names_exits_span_and_next_try():
    since = datetime(2026, 1, 1, tzinfo=UTC)
    loop = CrashLoop(4, since, since + timedelta(seconds=9), "boom")
    assert loop.line(since + timedelta(seconds=7)) == (
        "crash-looping: 4 exits in 7 s, next try in 2.0 s"
    )


ROW = ("blue-1", 47800, 3, None, None, False, None, False, None, None)


def test_healing_holds_like_a_pause_and_a_pause_wins():
    assert route_state((*ROW, False, None)).pause is None
    assert route_state((*ROW, True, 12.5)).pause == Pause(12.5, healing=True)
    # A backoff longer than router.hold_timeout: hold nothing (0), answer 503 at once.
    assert route_state((*ROW, True, 0.0)).pause == Pause(0.0, healing=True)
    paused = (*ROW[:5], True, 30.0, *ROW[7:])
    assert route_state((*paused, True, 12.5)).pause == Pause(30.0)
