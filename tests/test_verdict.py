"""Verdicts combine the statistical comparison with bounds, update mode and fingerprints."""

import math

import pytest

from pytest_modelreg.spec import MetricCheck
from pytest_modelreg.verdict import (
    CANNOT_COMPARE,
    INCOMPARABLE,
    INCONCLUSIVE,
    INVALID,
    NO_BASELINE,
    OUT_OF_BOUNDS,
    PASS,
    RECORDED,
    REGRESSED,
    judge_metric,
)

FELL = (REGRESSED, "acc fell from 0.6000 to 0.5500")
SAME = (PASS, "acc = 0.6000")


def judge(current, baseline, *, check=None, mismatch=None, update=False, compared=SAME,
          strict=False):
    return judge_metric("t", check or MetricCheck("acc"), current, baseline=baseline,
                        mismatch=mismatch, update=update, record_hint="HINT", compared=compared,
                        strict=strict)


def test_the_comparison_decides_against_the_baseline():
    assert judge(0.6, 0.6).verdict == PASS
    result = judge(0.55, 0.6, compared=FELL)
    assert result.verdict == REGRESSED and result.failed
    assert result.delta == pytest.approx(-0.05)
    assert "fell from 0.6000 to 0.5500" in result.message


def test_a_baseline_without_a_comparison_is_never_a_pass():
    result = judge(0.6, 0.6, compared=None)
    assert result.verdict == CANNOT_COMPARE and not result.failed
    assert judge(0.6, 0.6, compared=None, strict=True).failed


def test_inconclusive_fails_only_when_strict():
    unsure = (INCONCLUSIVE, "bounds straddle 0")
    assert not judge(0.59, 0.6, compared=unsure).failed
    assert judge(0.59, 0.6, compared=unsure, strict=True).failed


def test_bounds_win_over_the_comparison():
    result = judge(0.4, 0.4, check=MetricCheck("acc", min=0.5))
    assert result.verdict == OUT_OF_BOUNDS
    assert "expected >= 0.5000" in result.message and "missed by 0.1000" in result.message
    assert judge(0.9, 0.9, check=MetricCheck("acc", max=0.8)).verdict == OUT_OF_BOUNDS
    both = judge(0.4, 0.6, check=MetricCheck("acc", min=0.5), compared=FELL)
    assert both.verdict == OUT_OF_BOUNDS and "fell from" in both.message


def test_missing_baseline_fails_with_the_record_command():
    result = judge(0.5, None, compared=None)
    assert result.verdict == NO_BASELINE and result.failed and "HINT" in result.message


def test_incomparable_lists_the_fields():
    result = judge(0.5, 0.5, mismatch=["limit: 10 -> 20"])
    assert result.verdict == INCOMPARABLE and "limit: 10 -> 20" in result.message
    assert result.delta is None


def test_update_mode_records_but_still_checks_bounds():
    assert judge(0.5, None, update=True).verdict == RECORDED
    assert judge(0.5, None, update=True, check=MetricCheck("acc", min=0.6)).verdict == OUT_OF_BOUNDS


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_is_never_a_pass(value):
    assert judge(value, 0.5).verdict == INVALID
