"""Statistics of the baseline comparison against hand-computed values, scipy and real outcomes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist, mean, stdev

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelreg.stats import (
    BOOTSTRAP,
    CANNOT_COMPARE,
    INCONCLUSIVE,
    MCNEMAR_EXACT,
    PAIRED_CLUSTERED,
    PAIRED_Z,
    PASS,
    REGRESSED,
    SUSPICIOUS_GAIN,
    UNPAIRED_Z,
    VERDICTS,
    Comparison,
    compare_aggregates,
    compare_samples,
    holm,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED_DATA / "gsm8k" / "example_model_solutions.jsonl"
Z = NormalDist()
Z99, Z80, Z975 = Z.inv_cdf(0.99), Z.inv_cdf(0.8), Z.inv_cdf(0.975)


def outcomes(lost: int, gained: int, both_right: int = 0, both_wrong: int = 0):
    """0/1 baseline and candidate maps with b = lost and c = gained discordant docs."""
    rows = [(1, 0)] * lost + [(0, 1)] * gained + [(1, 1)] * both_right + [(0, 0)] * both_wrong
    return ({f"doc{i}": float(b) for i, (b, _) in enumerate(rows)},
            {f"doc{i}": float(c) for i, (_, c) in enumerate(rows)})


def as_maps(base: list[float], cand: list[float]):
    return dict(enumerate(base)), dict(enumerate(cand))


# --- McNemar exact ------------------------------------------------------------------------


def test_mcnemar_hand_computed_b10_c2():
    # P(X >= 10 | n = 12, 1/2) = (C(12,10) + C(12,11) + C(12,12)) / 2^12 = (66 + 12 + 1) / 4096
    result = compare_samples(*outcomes(10, 2, both_right=60, both_wrong=28))
    assert result.method == MCNEMAR_EXACT and result.paired
    assert result.discordant == (10, 2)
    assert result.p_value == pytest.approx(79 / 4096)
    assert result.delta == pytest.approx(-8 / 100)
    assert result.verdict == INCONCLUSIVE  # 0.0193 > alpha = 0.01 ...
    assert compare_samples(*outcomes(10, 2, 60, 28), alpha=0.05).verdict == REGRESSED  # ... < 0.05


def test_mcnemar_matches_scipy_binomtest():
    from scipy.stats import binomtest

    result = compare_samples(*outcomes(14, 3, both_right=100, both_wrong=20))
    assert result.p_value == pytest.approx(binomtest(14, 17, 0.5, alternative="greater").pvalue)
    assert result.regressed and result.verdict == REGRESSED
    low, high = result.ci
    assert low < result.delta < high < 0


def test_mcnemar_bounds_invert_the_exact_test():
    # The one-sided decision and the exact p-value agree: regressed exactly when p <= alpha.
    for lost in range(0, 25):
        result = compare_samples(*outcomes(lost, 4, both_right=50))
        assert result.method == MCNEMAR_EXACT
        assert result.regressed == (result.p_value <= 0.01), lost


@pytest.mark.parametrize(("lost", "gained"), [(10, 2), (0, 5), (7, 0), (13, 16), (1, 0)])
def test_mcnemar_interval_is_scipys_clopper_pearson(lost, gained):
    from scipy.stats import binomtest

    n = 100
    result = compare_samples(*outcomes(lost, gained, both_right=n - lost - gained))
    shown = binomtest(gained, lost + gained).proportion_ci(0.95, method="exact")
    total = lost + gained
    assert result.ci == pytest.approx(((2 * shown.low - 1) * total / n,
                                       (2 * shown.high - 1) * total / n), abs=1e-9)


def test_mcnemar_pass_needs_a_significant_gain_when_tolerance_is_zero():
    assert compare_samples(*outcomes(0, 12, both_right=50)).verdict == PASS  # p(X>=12)=1/4096
    assert compare_samples(*outcomes(2, 4, both_right=50)).verdict == INCONCLUSIVE


def test_no_discordant_pairs_is_a_pass():
    result = compare_samples(*outcomes(0, 0, both_right=30, both_wrong=20))
    assert result.verdict == PASS and result.delta == 0 and result.discordant == (0, 0)
    assert result.p_value == 1.0 and result.ci == (0.0, 0.0)


def test_all_correct_on_both_sides_never_divides_by_zero():
    for n in (1, 2, 5, 1000):
        result = compare_samples(*outcomes(0, 0, both_right=n))
        assert result.verdict == PASS and result.se == 0
        # Power is sized by the rule-of-three bound 3/n on the discordance rate, not by sd = 0.
        assert result.mde == pytest.approx((Z99 + Z80) * math.sqrt(min(1, 3 / n) / n))
    assert compare_samples(*outcomes(0, 0, both_right=2)).underpowered
    assert not compare_samples(*outcomes(0, 0, both_right=1000)).underpowered


def test_mcnemar_with_a_margin_uses_the_paired_z_test():
    # Design decision: with T > 0 the exact conditional test does not apply (see stats.py);
    # the normal paired test takes the margin directly.
    base, cand = outcomes(6, 1, both_right=80, both_wrong=13)
    result = compare_samples(base, cand, tolerance=0.02)
    d = [cand[k] - base[k] for k in base]
    se = stdev(d) / math.sqrt(len(d))
    assert result.method == PAIRED_Z and result.discordant == (6, 1)
    assert result.p_value == pytest.approx(Z.cdf((mean(d) + 0.02) / se))
    assert result.verdict == INCONCLUSIVE  # -0.05 +- 2.33 * 0.025 straddles -0.02


def test_many_discordant_pairs_use_the_normal_test():
    result = compare_samples(*outcomes(25, 10, both_right=400, both_wrong=65))
    assert result.method == PAIRED_Z and result.discordant == (25, 10)
    se = math.sqrt((35 / 500 - (15 / 500) ** 2) * 500 / 499 / 500)
    assert result.se == pytest.approx(se)
    assert result.p_value == pytest.approx(Z.cdf((-15 / 500) / se))


# --- paired z, clustered, power -----------------------------------------------------------


def test_paired_z_hand_computed():
    base = [0.50, 0.70, 0.20, 0.90, 0.40, 0.60]
    cand = [0.40, 0.70, 0.10, 0.60, 0.50, 0.45]
    d = [-0.10, 0.00, -0.10, -0.30, 0.10, -0.15]
    se = stdev(d) / math.sqrt(6)  # 0.0546...
    result = compare_samples(*as_maps(base, cand))
    assert result.method == PAIRED_Z and result.discordant is None and result.n == 6
    assert result.delta == pytest.approx(mean(d))
    assert result.se == pytest.approx(se)
    assert result.p_value == pytest.approx(Z.cdf(mean(d) / se))
    assert result.ci == pytest.approx((mean(d) - Z975 * se, mean(d) + Z975 * se))
    # upper bound -0.0917 + 2.326 * 0.0546 = +0.035 >= 0, lower bound < 0
    assert result.verdict == INCONCLUSIVE
    assert result.mde == pytest.approx((Z99 + Z80) * se)
    assert result.mde_at(0.95) == pytest.approx((Z99 + Z.inv_cdf(0.95)) * se)
    assert result.mde_at(0.8) == pytest.approx(result.mde)
    with pytest.raises(ValueError, match="power"):
        result.mde_at(1.0)


def test_paired_z_regresses_when_the_upper_bound_is_below_minus_tolerance():
    base = [0.8, 0.6, 0.9, 0.7, 0.5, 0.8, 0.6, 0.9, 0.7, 0.5] * 5
    cand = [b - 0.1 + 0.02 * (i % 3 - 1) for i, b in enumerate(base)]
    assert compare_samples(*as_maps(base, cand)).verdict == REGRESSED
    # The same drop within a tolerance of 0.2 passes: the lower bound is above -0.2.
    assert compare_samples(*as_maps(base, cand), tolerance=0.2).verdict == PASS


def test_clustered_se_hand_computed():
    d = [-1.0, -0.5, 0.0, 0.5, 1.0, -2.0]  # candidate - baseline per doc
    groups = ["a", "a", "a", "b", "b", "c"]
    base = dict(enumerate([0.0] * 6))
    cand = dict(enumerate(d))
    n, m = 6, mean(d)
    e = [x - m for x in d]
    plain = sum(x * x for x in e) / (n * (n - 1))
    cross = 0.0
    for group in set(groups):
        members = [e[i] for i in range(n) if groups[i] == group]
        cross += sum(x * y for i, x in enumerate(members) for j, y in enumerate(members) if i != j)
    expected = math.sqrt(plain + cross / n**2)
    result = compare_samples(base, cand, clusters=dict(enumerate(groups)))
    assert result.method == PAIRED_CLUSTERED
    assert result.se == pytest.approx(expected)
    assert result.se != pytest.approx(stdev(d) / math.sqrt(n))


def test_clustered_se_reduces_to_paired_se_for_singleton_clusters():
    base, cand = as_maps([0.1, 0.5, 0.3, 0.9, 0.2], [0.2, 0.3, 0.3, 0.5, 0.4])
    paired = compare_samples(base, cand)
    singletons = compare_samples(base, cand, clusters={k: k for k in base})
    assert singletons.method == PAIRED_CLUSTERED
    assert singletons.se == pytest.approx(paired.se)
    # Docs missing from the mapping are their own clusters.
    assert compare_samples(base, cand, clusters={0: "x"}).se == pytest.approx(paired.se)


def test_one_cluster_falls_back_to_the_paired_test():
    base, cand = outcomes(8, 1, both_right=40)
    result = compare_samples(base, cand, clusters={k: "abstract_algebra" for k in base})
    assert result.method == MCNEMAR_EXACT


def test_underpowered_and_docs_needed():
    base = [0.3, 0.8, 0.5, 0.6] * 25
    cand = [0.35, 0.7, 0.45, 0.7] * 25
    d = [c - b for b, c in zip(base, cand, strict=True)]
    result = compare_samples(*as_maps(base, cand))
    mde = (Z99 + Z80) * stdev(d) / 10
    assert result.mde == pytest.approx(mde) and mde > 0.01
    # T = 0: sized for a 1-point drop (DEFAULT_MIN_EFFECT).
    assert result.underpowered
    assert result.docs_needed == math.ceil(((Z99 + Z80) * stdev(d) / 0.01) ** 2)
    # T > 0: sized for the tolerance; a loose tolerance makes the check adequately powered.
    with_margin = compare_samples(*as_maps(base, cand), tolerance=0.02)  # MDE 0.025 > 0.02
    assert with_margin.underpowered
    assert with_margin.docs_needed == math.ceil(((Z99 + Z80) * stdev(d) / 0.02) ** 2)
    assert not compare_samples(*as_maps(base, cand), tolerance=0.5).underpowered
    assert compare_samples(*as_maps(base, cand), tolerance=0.5).docs_needed is None
    # The caller may size for another effect when T = 0 (e.g. a metric on another scale).
    assert not compare_samples(*as_maps(base, cand), min_effect=1.0).underpowered


# --- edge cases -----------------------------------------------------------------------------


def test_identical_continuous_outcomes_pass():
    base, cand = as_maps([0.1, 2.5, 3.0], [0.1, 2.5, 3.0])
    result = compare_samples(base, cand)
    assert result.verdict == PASS and result.delta == 0 and "identical" in result.reason


def test_tiny_n_is_inconclusive_not_a_crash():
    assert compare_samples(*outcomes(1, 0, both_right=2)).verdict == INCONCLUSIVE
    assert compare_samples(*outcomes(1, 0)).verdict == INCONCLUSIVE  # n = 1, 0/1
    assert compare_samples(*as_maps([0.5, 0.9], [0.6, 0.5])).verdict == INCONCLUSIVE


def test_one_continuous_doc_cannot_be_compared():
    result = compare_samples({"d": 0.7}, {"d": 0.6})
    assert result.verdict == CANNOT_COMPARE and not result.regressed
    assert "standard error" in result.reason


def test_every_doc_shifted_by_the_same_amount_never_passes():
    # sd(d) = 0 but the outcomes differ: never a pass on SE = 0.
    assert compare_samples(*as_maps([0.25, 0.5, 0.75], [0.5, 0.75, 1.0])).verdict == CANNOT_COMPARE
    # Not even when rounding leaves an SE of 1e-17 (0.3 - 0.2 != 0.2 - 0.1 in floating point).
    rounded = compare_samples(*as_maps([0.1, 0.2, 0.3], [0.2, 0.3, 0.4]))
    assert rounded.verdict == CANNOT_COMPARE and "standard error" in rounded.reason


def test_empty_side_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"baseline.*n = 0"):
        compare_samples({}, {"a": 1.0})
    with pytest.raises(ValueError, match=r"candidate.*n = 0"):
        compare_samples({"a": 1.0}, {})


def test_keys_that_do_not_overlap_are_reported():
    result = compare_samples({"a": 1.0, "b": 0.0}, {"c": 1.0, "d": 1.0, "e": 0.0})
    assert result.verdict == CANNOT_COMPARE and result.n == 0 and result.unmatched == 5
    partial = compare_samples(*outcomes(0, 0, both_right=20))
    assert partial.unmatched == 0
    base, cand = outcomes(3, 0, both_right=20)
    cand["extra"] = 1.0
    del base["doc0"]
    assert compare_samples(base, cand).unmatched == 2
    assert compare_samples(base, cand).n == 22


def test_bad_values_and_settings_are_value_errors():
    with pytest.raises(ValueError, match="NaN or infinite"):
        compare_samples({"a": 1.0, "b": float("nan")}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="not a number"):
        compare_samples({"a": "1"}, {"a": 1.0})
    with pytest.raises(ValueError, match="alpha"):
        compare_samples({"a": 1.0}, {"a": 1.0}, alpha=0.5)
    with pytest.raises(ValueError, match="tolerance"):
        compare_samples({"a": 1.0}, {"a": 1.0}, tolerance=-0.1)
    with pytest.raises(ValueError, match="max_gain"):
        compare_samples({"a": 1.0}, {"a": 1.0}, max_gain=float("nan"))


# --- direction, max_gain, summary -----------------------------------------------------------


def test_lower_is_better():
    base = [2.0, 2.5, 3.0, 2.2, 2.8, 3.1, 2.4, 2.6] * 10  # e.g. per-doc loss
    cand = [b + 0.3 + 0.05 * (i % 4) for i, b in enumerate(base)]
    worse = compare_samples(*as_maps(base, cand), higher_is_better=False)
    assert worse.verdict == REGRESSED and worse.delta > 0  # delta in the metric's own units
    assert worse.ci[0] < worse.delta < worse.ci[1]
    assert compare_samples(*as_maps(cand, base), higher_is_better=False).verdict == PASS
    # 0/1 error indicator: 1 = wrong, so "lost" means baseline 0 and candidate 1.
    errors = compare_samples(*outcomes(0, 12, both_wrong=50), higher_is_better=False)
    assert errors.discordant == (12, 0) and errors.regressed


def test_max_gain_flags_a_suspiciously_large_improvement():
    base, cand = outcomes(5, 60, both_right=200, both_wrong=235)  # gain 0.11
    assert compare_samples(base, cand).verdict == PASS
    flagged = compare_samples(base, cand, max_gain=0.05)
    assert flagged.verdict == SUSPICIOUS_GAIN and not flagged.regressed
    assert compare_samples(base, cand, max_gain=0.2).verdict == PASS


def test_summary_is_one_line_with_the_numbers():
    result = compare_samples(*outcomes(31, 15, both_right=300, both_wrong=154))
    line = result.summary()
    assert "\n" not in line
    for part in ("delta -0.032", "[95% CI", "p=", "n=500", "b=31 c=15", "MDE", "paired z"):
        assert part in line, part
    assert "McNemar exact" in compare_samples(*outcomes(10, 2, 60, 28)).summary()
    assert result.to_dict()["regressed"] is result.regressed


# --- unpaired fallback ----------------------------------------------------------------------


def test_unpaired_z_hand_computed():
    result = compare_aggregates(0.60, 0.015, 0.54, 0.016, n=1000)
    se = math.sqrt(0.015**2 + 0.016**2)
    assert result.method == UNPAIRED_Z and not result.paired
    assert result.se == pytest.approx(se)
    assert result.p_value == pytest.approx(Z.cdf(-0.06 / se))
    assert result.verdict == REGRESSED  # -0.06 + 2.326 * 0.0219 = -0.009 < 0
    assert result.ci == pytest.approx((-0.06 - Z975 * se, -0.06 + Z975 * se))
    assert result.docs_needed == math.ceil(1000 * (result.mde / 0.01) ** 2)
    assert compare_aggregates(0.60, 0.015, 0.58, 0.016).verdict == INCONCLUSIVE


@pytest.mark.parametrize(("base_se", "cand_se"), [
    (float("nan"), 0.01), (0.01, None), (0.0, 0.0), (float("inf"), 0.01), (-0.01, 0.01)])
def test_unpaired_without_a_valid_stderr_cannot_compare(base_se, cand_se):
    for candidate in (0.5, 0.6):  # not even when the scores are equal
        result = compare_aggregates(0.5, base_se, candidate, cand_se)
        assert result.verdict == CANNOT_COMPARE and result.reason and not result.regressed


def test_unpaired_nan_score_cannot_compare():
    assert compare_aggregates(float("nan"), 0.01, 0.5, 0.01).verdict == CANNOT_COMPARE


# --- Holm ---------------------------------------------------------------------------------


def test_holm_worked_example():
    # sorted 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop, 0.04 not rejected either
    assert holm([0.01, 0.04, 0.03, 0.005], alpha=0.05) == [True, False, False, True]
    assert holm([0.01, 0.02, 0.03], alpha=0.1) == [True, True, True]  # thresholds .033 .05 .1
    assert holm([0.02, 0.001], alpha=0.01) == [False, True]
    assert holm([], alpha=0.01) == []
    assert holm([float("nan"), 0.001]) == [False, True]


def test_holm_rejects_no_more_than_bonferroni_steps_allow():
    # ties: thresholds 0.01/3, 0.01/2, 0.01; the smallest decides whether any is rejected
    assert holm([0.003, 0.003, 0.003]) == [True, True, True]
    assert holm([0.004, 0.004, 0.004]) == [False, False, False]
    with pytest.raises(ValueError):
        holm([1.5])


# --- bootstrap ------------------------------------------------------------------------------


def f1(pairs: list[tuple[int, int]]) -> float:
    tp = sum(1 for p, g in pairs if p == g == 1)
    fp = sum(1 for p, g in pairs if p == 1 and g == 0)
    fn = sum(1 for p, g in pairs if p == 0 and g == 1)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def test_bootstrap_is_reproducible_with_a_seed():
    gold = [i % 2 for i in range(200)]
    base = {i: (g if i % 7 else 1 - g, g) for i, g in enumerate(gold)}
    cand = {i: (g if i % 4 else 1 - g, g) for i, g in enumerate(gold)}
    first = compare_samples(base, cand, aggregate=f1, resamples=2000, seed=7)
    again = compare_samples(base, cand, aggregate=f1, resamples=2000, seed=7)
    other = compare_samples(base, cand, aggregate=f1, resamples=2000, seed=8)
    assert first == again
    assert first.method == BOOTSTRAP and first.delta == pytest.approx(f1(list(cand.values()))
                                                                         - f1(list(base.values())))
    assert first.ci != other.ci
    assert first.ci[0] < first.delta < first.ci[1]


def test_bootstrap_of_a_mean_agrees_with_the_paired_z_test():
    base = [0.2 * (i % 5) for i in range(300)]
    cand = [b - 0.05 * ((i * 7) % 3) for i, b in enumerate(base)]
    paired = compare_samples(*as_maps(base, cand))
    boot = compare_samples(*as_maps(base, cand), aggregate=lambda v: sum(v) / len(v),
                           resamples=4000)
    assert boot.verdict == paired.verdict == REGRESSED
    assert boot.se == pytest.approx(paired.se, rel=0.1)
    with pytest.raises(ValueError, match="resamples"):
        compare_samples(*as_maps(base, cand), aggregate=mean, resamples=10)


# --- properties -----------------------------------------------------------------------------

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0])
maps = st.dictionaries(st.integers(0, 12), floats, max_size=12)


@settings(max_examples=300, deadline=None, database=None)
@given(maps, maps, st.booleans(), st.floats(0, 5), st.none() | st.floats(0, 1),
       st.none() | st.dictionaries(st.integers(0, 12), st.integers(0, 3)))
def test_any_float_maps_give_a_comparison_or_a_value_error(base, cand, higher, tolerance,
                                                            max_gain, clusters):
    try:
        result = compare_samples(base, cand, higher_is_better=higher, tolerance=tolerance,
                                 max_gain=max_gain, clusters=clusters)
    except ValueError:
        return
    assert isinstance(result, Comparison) and result.verdict in VERDICTS
    assert result.n == len(set(base) & set(cand))
    assert result.unmatched == len(set(base) ^ set(cand))
    assert result.regressed == (result.verdict == REGRESSED)
    assert isinstance(result.summary(), str)
    if result.verdict == PASS and result.se == 0:
        assert all(base[k] == cand[k] for k in set(base) & set(cand))


@settings(max_examples=200, deadline=None, database=None)
@given(floats, st.none() | floats, floats, st.none() | floats, st.none() | st.integers(1, 10**6))
def test_any_aggregates_give_a_comparison_or_a_value_error(base, base_se, cand, cand_se, n):
    try:
        result = compare_aggregates(base, base_se, cand, cand_se, n=n)
    except ValueError:
        return
    assert result.verdict in VERDICTS
    if result.verdict != CANNOT_COMPARE:
        assert result.se > 0 and math.isfinite(result.se)


# --- import cost and real data --------------------------------------------------------------


def test_importing_stats_loads_neither_numpy_nor_scipy():
    code = ("import sys, pytest_modelreg.stats\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'scipy'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def gsm8k_outcomes(model: str) -> dict[int, float]:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    return {i: float(row[model]["is_correct"]) for i, row in enumerate(rows)}


@pytest.mark.skipif(not GSM8K.exists(), reason=f"real GSM8K outcomes not found at {GSM8K}")
def test_real_gsm8k_175b_verifier_against_6b_verifier():
    big, small = gsm8k_outcomes("175b_verification"), gsm8k_outcomes("6b_verification")
    result = compare_samples(big, small)  # the 6B model as a candidate replacing the 175B one
    assert result.n == 1319 and result.unmatched == 0
    assert result.discordant == (306, 79)  # REFERENCES.md: 306 questions lost, 79 gained
    assert result.verdict == REGRESSED and result.method == PAIRED_Z
    assert result.delta == pytest.approx((79 - 306) / 1319)
    # Pairing pays: the paired SE is well below the unpaired one on the same data.
    unpaired = math.sqrt(0.5625 * 0.4375 / 1319 + 0.3904 * 0.6096 / 1319)
    assert result.se < 0.75 * unpaired
    reverse = compare_samples(small, big)
    assert reverse.discordant == (79, 306) and reverse.verdict == PASS
