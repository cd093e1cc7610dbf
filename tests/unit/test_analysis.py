"""The traffic verdicts (control/analysis.py): the figures and limits that roll back
a switch or fail a canary step, and the reason a person reads in history."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bgdeploy.config import AnalysisConfig
from bgdeploy.control.analysis import Figures, judge_canary, judge_switched

CFG = AnalysisConfig(max_error_ratio=0.05, min_requests=20, max_p99_ratio=None)
LAT = replace(CFG, max_p99_ratio=2.0)
QUIET = Figures()


def test_too_few_answers_is_no_verdict_whatever_they_say():
    v = judge_switched(CFG, Figures(answers=19, errors=19), QUIET)
    assert v.ok is None
    assert "19 answers from the new boot" in v.reason and "min_requests (20)" in v.reason


def test_a_5xx_ratio_over_the_limit_fails_and_names_the_figure():
    v = judge_switched(CFG, Figures(answers=212, errors=66), QUIET)
    assert v.ok is False
    assert v.reason == "5xx ratio 31% over 212 answers (limit 5%)"


def test_a_ratio_at_the_limit_passes():
    v = judge_switched(CFG, Figures(answers=100, errors=5, p99_ms=3.0), QUIET)
    assert v.ok is True
    assert v.reason == "5xx ratio 5% over 100 answers, p99 3 ms"


def test_latency_rule_is_off_unless_configured():
    slow = Figures(answers=100, errors=0, p99_ms=840.0)
    assert judge_switched(CFG, slow, Figures(100, 0, 200.0)).ok is True


def test_p99_over_the_ratio_of_the_old_boot_before_the_switch_fails():
    v = judge_switched(LAT, Figures(answers=100, p99_ms=840.0), Figures(100, 0, 200.0))
    assert v.ok is False
    assert v.reason == "p99 840 ms, 4.2× the old boot's 200 ms (limit 2×)"


def test_a_fast_old_boot_counts_as_the_floor_so_noise_is_no_regression():
    # 1 ms -> 15 ms is 15x, but under the 10 ms floor it is 1.5x: no rollback.
    assert judge_switched(LAT, Figures(100, 0, 15.0), Figures(100, 0, 1.0)).ok is True
    # 1 ms -> 300 ms is 30x the floor: a regression users notice.
    assert judge_switched(LAT, Figures(100, 0, 300.0), Figures(100, 0, 1.0)).ok is False


def test_no_old_baseline_means_no_latency_verdict():
    v = judge_switched(LAT, Figures(100, 0, 900.0), Figures(5, 0, 10.0))
    assert v.ok is True


def test_canary_fails_on_its_own_errors_when_the_active_is_clean():
    v = judge_canary(CFG, Figures(40, 12, 5.0), Figures(400, 0, 5.0))
    assert v.ok is False
    assert v.reason.startswith("5xx ratio 30% over 40 answers (limit 5%)")


@pytest.mark.parametrize(
    ("active_errors", "ok"),
    [
        (0, False),  # 8% against 0%: the candidate's fault
        (40, True),  # 8% against 10%: both fail alike (a shared fault), not the candidate
        (16, True),  # 8% against 4%: within max_error_ratio above the active (the margin)
    ],
)
def test_canary_margin_against_the_active_boot(active_errors: int, ok: bool):
    v = judge_canary(CFG, Figures(100, 8, 5.0), Figures(400, active_errors, 5.0))
    assert v.ok is ok, v.reason


def test_canary_with_thin_active_traffic_is_judged_on_the_limit_alone():
    assert judge_canary(CFG, Figures(100, 8, 5.0), Figures(3, 3, 5.0)).ok is False


def test_canary_latency_is_compared_with_the_active_in_the_same_window():
    v = judge_canary(LAT, Figures(100, 0, 320.0), Figures(400, 0, 12.0))
    assert v.ok is False and "the active boot's 12 ms" in v.reason
    assert judge_canary(LAT, Figures(100, 0, 20.0), Figures(400, 0, 12.0)).ok is True


def test_canary_needs_min_requests_from_the_candidate():
    v = judge_canary(CFG, Figures(10, 10, 5.0), Figures(400, 0, 5.0))
    assert v.ok is None and "from the candidate" in v.reason


def test_after_a_switch_the_old_boots_errors_before_it_are_the_margin():
    # A shared backend failed 40% before the switch too: 42% is not the new version's.
    before = Figures(answers=300, errors=120)
    assert judge_switched(CFG, Figures(answers=200, errors=84), before).ok is True
    # Past the old boot's ratio plus the limit it fails, and says what the old one had.
    v = judge_switched(CFG, Figures(answers=200, errors=100), before)
    assert v.ok is False and v.reason.endswith("; the old boot's was 40%")
    # Too few old answers to trust: no margin.
    assert judge_switched(CFG, Figures(answers=200, errors=84), Figures(10, 4)).ok is False
