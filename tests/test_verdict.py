"""Verdicts are pure functions: thresholds, tolerance, direction, missing and incomparable."""

import math

import pytest

from pytest_modelreg.spec import MetricCheck, Tolerance
from pytest_modelreg.verdict import (
    INCOMPARABLE,
    INVALID,
    NO_BASELINE,
    OUT_OF_BOUNDS,
    PASS,
    RECORDED,
    REGRESSED,
    judge_metric,
)


def judge(current, baseline, *, check=None, higher=True, mismatch=None, update=False):
    return judge_metric("t", check or MetricCheck("acc"), current, higher_is_better=higher,
                        baseline=baseline, mismatch=mismatch, update=update, record_hint="HINT")


def test_equal_is_pass_and_drop_is_regression():
    assert judge(0.6, 0.6).verdict == PASS
    result = judge(0.55, 0.6)
    assert result.verdict == REGRESSED and result.failed
    assert result.delta == pytest.approx(-0.05)
    assert "fell from 0.6000 to 0.5500" in result.message and "missed by 0.0500" in result.message


def test_improvement_passes():
    assert judge(0.7, 0.6).verdict == PASS


def test_tolerance_absolute_and_relative():
    assert judge(0.59, 0.6, check=MetricCheck("acc", tolerance=Tolerance(0.01))).verdict == PASS
    assert judge(0.58, 0.6, check=MetricCheck("acc", tolerance=Tolerance(0.01))).verdict == REGRESSED
    rel = MetricCheck("acc", tolerance=Tolerance(0.05, relative=True))  # 5% of 0.6 = 0.03
    assert judge(0.575, 0.6, check=rel).verdict == PASS
    assert judge(0.565, 0.6, check=rel).verdict == REGRESSED


def test_lower_is_better_metrics_regress_upwards():
    assert judge(11.0, 10.0, higher=False).verdict == REGRESSED
    assert judge(9.0, 10.0, higher=False).verdict == PASS


def test_bounds():
    result = judge(0.4, 0.4, check=MetricCheck("acc", min=0.5))
    assert result.verdict == OUT_OF_BOUNDS
    assert "expected >= 0.5000" in result.message and "missed by 0.1000" in result.message
    assert judge(0.9, 0.9, check=MetricCheck("acc", max=0.8)).verdict == OUT_OF_BOUNDS


def test_missing_baseline_fails_with_the_record_command():
    result = judge(0.5, None)
    assert result.verdict == NO_BASELINE and result.failed and "HINT" in result.message


def test_incomparable_lists_the_fields():
    result = judge(0.5, 0.5, mismatch=["limit: 10 -> 20"])
    assert result.verdict == INCOMPARABLE and "limit: 10 -> 20" in result.message


def test_update_mode_records_but_still_checks_bounds():
    assert judge(0.5, None, update=True).verdict == RECORDED
    assert judge(0.5, None, update=True, check=MetricCheck("acc", min=0.6)).verdict == OUT_OF_BOUNDS


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_is_never_a_pass(value):
    assert judge(value, 0.5).verdict == INVALID
