"""Paired statistics against hand-computed values, scipy, and real per-question outcomes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelreg import compare_aggregates, compare_samples, holm

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / \
    "example_model_solutions.jsonl"


def pairs(lost: int, gained: int, same_right: int = 0, same_wrong: int = 0):
    """Baseline and candidate 0/1 outcomes with the given discordant counts."""
    rows = [(1, 0)] * lost + [(0, 1)] * gained + [(1, 1)] * same_right + [(0, 0)] * same_wrong
    return ({i: float(b) for i, (b, _) in enumerate(rows)},
            {i: float(c) for i, (_, c) in enumerate(rows)})


def test_mcnemar_exact_hand_computed():
    # b = 10 lost, c = 2 gained: P(X >= 10 | n = 12, 1/2) = (66 + 12 + 1) / 4096
    result = compare_samples(*pairs(10, 2, same_right=50))
    assert result.method == "McNemar exact" and result.discordant == (10, 2)
    assert result.p_value == pytest.approx(79 / 4096)
    assert result.verdict == "inconclusive"  # 0.0193 is not below alpha = 0.01
    assert compare_samples(*pairs(10, 2, same_right=50), alpha=0.05).verdict == "regressed"


def test_mcnemar_matches_scipy():
    from scipy.stats import binomtest

    result = compare_samples(*pairs(14, 3, same_right=100, same_wrong=20))
    assert result.p_value == pytest.approx(binomtest(14, 17, 0.5, alternative="greater").pvalue)
    assert result.regressed


def test_paired_z_hand_computed():
    baseline = {i: v for i, v in enumerate([0.5, 0.7, 0.2, 0.9, 0.4])}
    candidate = {i: v for i, v in enumerate([0.4, 0.7, 0.1, 0.6, 0.5])}
    d = [-0.1, 0.0, -0.1, -0.3, 0.1]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    result = compare_samples(baseline, candidate)
    assert result.method == "paired-z" and result.delta == pytest.approx(mean)
    assert result.se == pytest.approx(sd / math.sqrt(5))
    assert result.ci[0] == pytest.approx(mean - 1.959964 * sd / math.sqrt(5), rel=1e-5)
    assert result.mde == pytest.approx((2.326348 + 0.841621) * sd / math.sqrt(5), rel=1e-5)


def test_clustered_se_hand_computed():
    # 10 clusters of 2 docs; in each the two differences are equal (+1 or -1): perfectly
    # correlated within a cluster, so the clustered SE is larger than the independent one.
    diffs = [1.0, 1.0, -1.0, -1.0] * 5
    baseline = {i: 0.0 for i in range(20)}
    candidate = dict(enumerate(diffs))
    clusters = {i: i // 2 for i in range(20)}
    result = compare_samples(baseline, candidate, clusters=clusters)
    assert result.method == "paired-clustered"
    assert result.se == pytest.approx(math.sqrt(10 * 2.0 ** 2) / 20)  # centred sums: +-2
    iid = compare_samples(baseline, candidate)
    assert iid.method == "paired-z" and iid.se < result.se
    few = compare_samples(baseline, candidate, clusters={i: i % 2 for i in range(20)})
    assert few.method == "paired-z"  # two clusters cannot carry a clustered SE


def test_identical_outcomes_pass_and_tiny_n_is_inconclusive():
    same = {i: float(i % 2) for i in range(20)}
    result = compare_samples(same, dict(same))
    assert result.verdict == "pass" and result.discordant == (0, 0)
    assert compare_samples(*pairs(1, 0)).verdict == "inconclusive"
    assert compare_samples({1: 0.3}, {1: 0.2}).verdict == "inconclusive"


def test_lower_is_better_direction():
    baseline = {i: 10.0 + (i % 3) for i in range(300)}
    worse = {i: v + 1.0 + 0.1 * (i % 2) for i, v in baseline.items()}
    assert compare_samples(baseline, worse, higher_is_better=False).verdict == "regressed"
    assert compare_samples(worse, baseline, higher_is_better=False).verdict == "pass"


def test_tolerance_and_power():
    baseline, candidate = pairs(40, 30, same_right=400, same_wrong=130)  # delta -0.0167
    assert compare_samples(baseline, candidate, tolerance=0.1).verdict == "pass"
    strict = compare_samples(baseline, candidate, tolerance=0.0)
    assert strict.verdict == "inconclusive"
    assert strict.underpowered and strict.docs_needed > len(baseline)
    loose = compare_samples(baseline, candidate, tolerance=0.1)
    assert not loose.underpowered and loose.docs_needed is None


def test_max_gain_flags_a_suspicious_improvement():
    baseline, candidate = pairs(5, 200, same_right=100, same_wrong=100)
    assert compare_samples(baseline, candidate, max_gain=0.1).verdict == "suspicious gain"
    assert compare_samples(baseline, candidate).verdict == "pass"


def test_unpaired_fallback_never_passes_without_an_error_bar():
    assert compare_aggregates(0.6, None, 0.6, 0.01).verdict == "cannot compare"
    assert compare_aggregates(0.6, 0.0, 0.6, 0.0).verdict == "cannot compare"
    assert compare_aggregates(0.6, float("nan"), 0.5, 0.01).verdict == "cannot compare"
    result = compare_aggregates(0.60, 0.01, 0.50, 0.01, n=1000)
    assert result.verdict == "regressed" and not result.paired
    assert result.se == pytest.approx(math.sqrt(2) * 0.01)


def test_bootstrap_is_seeded():
    import numpy as np

    baseline = {i: float(i % 2) for i in range(60)}
    candidate = {i: float((i // 2) % 2) for i in range(60)}
    first = compare_samples(baseline, candidate, aggregate=np.mean, resamples=1000, seed=3)
    again = compare_samples(baseline, candidate, aggregate=np.mean, resamples=1000, seed=3)
    assert first == again and first.method == "paired bootstrap"


def test_holm_worked_example():
    assert holm([0.01, 0.04, 0.03, 0.005], alpha=0.05) == [True, False, False, True]
    assert holm([0.001, 0.002], alpha=0.01) == [True, True]
    assert holm([], alpha=0.01) == []


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="no doc is in both"):
        compare_samples({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match="finite"):
        compare_samples({"a": float("nan")}, {"a": 1.0})
    with pytest.raises(ValueError, match="tolerance"):
        compare_samples({"a": 1.0}, {"a": 1.0}, tolerance=-1)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(0, 30), st.floats(-5, 5), max_size=30),
       st.dictionaries(st.integers(0, 30), st.floats(-5, 5), max_size=30),
       st.floats(0, 1), st.booleans())
def test_any_input_gives_a_comparison_or_a_clear_error(baseline, candidate, tolerance, higher):
    try:
        result = compare_samples(baseline, candidate, tolerance=tolerance, higher_is_better=higher)
    except ValueError as exc:
        assert "no doc" in str(exc)
        return
    assert result.verdict in {"pass", "regressed", "inconclusive", "suspicious gain"}
    assert result.n == len(set(baseline) & set(candidate))


def test_importing_stats_imports_nothing_heavy():
    code = "import sys, pytest_modelreg.stats; print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('scipy', 'numpy')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(not GSM8K.exists(), reason=f"real GSM8K outcomes not found at {GSM8K}")
def test_real_model_pair_from_the_gsm8k_paper():
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]

    def outcomes(model: str) -> dict[int, float]:
        return {i: float(row[model]["is_correct"]) for i, row in enumerate(rows)}

    result = compare_samples(outcomes("175b_verification"), outcomes("6b_verification"))
    assert result.discordant == (306, 79) and result.n == 1319
    assert result.regressed and result.p_value < 1e-20
    assert compare_samples(outcomes("6b_verification"), outcomes("175b_verification")).verdict \
        == "pass"
