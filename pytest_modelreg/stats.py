"""Paired statistics on per-sample outcomes: is the candidate worse than the baseline on the
SAME questions, by more than the tolerated drop?

Pure functions. numpy and scipy are imported inside them, never when the plugin loads.

Decision rule (one-sided level ``alpha``, tolerance ``T`` = the tolerated drop, in the metric's
worse direction, with "better" deltas positive):

- **regressed**: the upper one-sided confidence bound of the delta is below ``-T``
  (H0 "delta >= -T" rejected at ``alpha``);
- **pass**: the lower bound is at or above ``-T``;
- **inconclusive**: neither; the evaluation is too small to tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

PASS = "pass"
REGRESSED = "regressed"
INCONCLUSIVE = "inconclusive"
SUSPICIOUS_GAIN = "suspicious gain"
CANNOT_COMPARE = "cannot compare"

POWER = 0.8
EXACT_BELOW = 30  # discordant pairs under which McNemar's exact test replaces the normal one
MIN_CLUSTERS = 10  # below this a clustered SE is unreliable; docs are treated as independent
DEFAULT_EFFECT = 0.01  # the drop to size an evaluation for when no tolerance is given (1 point)


@dataclass(frozen=True)
class Comparison:
    verdict: str
    delta: float  # candidate minus baseline, in the metric's own units
    ci: tuple[float, float]  # 95 % two-sided interval of delta, for display
    p_value: float  # one-sided, H0: no drop beyond the tolerance
    n: int
    se: float
    mde: float  # smallest drop detectable with 80 % power at this n and alpha
    method: str
    paired: bool
    discordant: tuple[int, int] | None = None  # (baseline-only right, candidate-only right)
    underpowered: bool = False
    docs_needed: int | None = None
    unmatched: int = 0
    reason: str = ""

    @property
    def regressed(self) -> bool:
        return self.verdict == REGRESSED

    def summary(self) -> str:
        parts = [f"delta {self.delta:+.4f} [95% CI {self.ci[0]:+.4f}, {self.ci[1]:+.4f}]",
                 f"p={self.p_value:.3g}", f"n={self.n}"]
        if self.discordant is not None:
            parts.append(f"b={self.discordant[0]} c={self.discordant[1]}")
        parts.append(f"MDE {self.mde:.4f}")
        text = ", ".join(parts) + f" ({self.method})"
        if self.underpowered and self.docs_needed:
            text += f"; underpowered: about {self.docs_needed} docs needed"
        return text + (f"; {self.reason}" if self.reason else "")


def _z(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def _decide(better: float, lower: float, upper: float, tolerance: float,
            max_gain: float | None) -> str:
    if upper < -tolerance:
        return REGRESSED
    if max_gain is not None and lower > max_gain:
        return SUSPICIOUS_GAIN
    if lower >= -tolerance:
        return PASS
    return INCONCLUSIVE


def _power(se: float, sd: float, tolerance: float, alpha: float) -> tuple[float, bool, int | None]:
    """MDE at 80 % power, whether it exceeds the tolerance, and the docs needed for it."""
    factor = _z(1 - alpha) + _z(POWER)
    mde = factor * se
    target = tolerance if tolerance > 0 else DEFAULT_EFFECT
    underpowered = mde > target
    ratio = factor * sd / target
    # Past ~1e14 docs (a vanishing tolerance) there is no useful number to give.
    needed = math.ceil(ratio ** 2) if underpowered and 0 < ratio < 1e7 else None
    return mde, underpowered, needed


def _normal(better_mean: float, se: float, delta: float, tolerance: float, alpha: float,
            max_gain: float | None) -> tuple[str, tuple[float, float], float]:
    from scipy.stats import norm

    if se == 0:  # every doc moved by the same amount: the delta is exact
        verdict = _decide(better_mean, better_mean, better_mean, tolerance, max_gain)
        return verdict, (delta, delta), 0.0 if better_mean < -tolerance else 1.0
    bound = _z(1 - alpha) * se
    verdict = _decide(better_mean, better_mean - bound, better_mean + bound, tolerance, max_gain)
    half = _z(0.975) * se
    p_value = float(norm.cdf((better_mean + tolerance) / se))
    return verdict, (delta - half, delta + half), p_value


def _clustered_se(diffs: object, groups: Sequence[Hashable]) -> float:
    """Miller (2024): sum the cross terms within each cluster."""
    import numpy as np

    values = np.asarray(diffs, dtype=float)
    centred = values - values.mean()
    totals: dict[Hashable, float] = {}
    for group, value in zip(groups, centred, strict=True):
        totals[group] = totals.get(group, 0.0) + float(value)
    return math.sqrt(sum(t * t for t in totals.values())) / len(values)


def compare_samples(baseline: Mapping[Hashable, float], candidate: Mapping[Hashable, float], *,
                    higher_is_better: bool = True, tolerance: float = 0.0, alpha: float = 0.01,
                    clusters: Mapping[Hashable, Hashable] | None = None,
                    max_gain: float | None = None,
                    aggregate: Callable[[object], float] | None = None,
                    resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Compare per-sample outcomes of the same docs (joined on their keys)."""
    import numpy as np

    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be between 0 and 0.5, got {alpha!r}")
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite drop >= 0, got {tolerance!r}")
    keys = [k for k in baseline if k in candidate]
    unmatched = len(baseline) + len(candidate) - 2 * len(keys)
    if not keys:
        raise ValueError(f"no doc is in both the baseline and the candidate "
                         f"({len(baseline)} and {len(candidate)} docs): nothing to compare")
    base = np.array([float(baseline[k]) for k in keys])
    cand = np.array([float(candidate[k]) for k in keys])
    if not (np.isfinite(base).all() and np.isfinite(cand).all()):
        raise ValueError("per-sample values must be finite numbers")
    sign = 1.0 if higher_is_better else -1.0
    n = len(keys)
    delta = float(cand.mean() - base.mean())
    better = sign * (cand - base)  # positive: the candidate is better on that doc
    if aggregate is not None:
        return _bootstrap(base, cand, aggregate, sign, tolerance, alpha, max_gain, resamples,
                          seed, unmatched)
    binary = bool(np.isin(base, (0.0, 1.0)).all() and np.isin(cand, (0.0, 1.0)).all())
    discordant = (int((better < 0).sum()), int((better > 0).sum())) if binary else None
    sd = float(better.std(ddof=1)) if n > 1 else 0.0
    groups = [clusters.get(k, k) for k in keys] if clusters is not None else []
    if len(set(groups)) >= MIN_CLUSTERS:
        # Never below the independent-docs SE: a smaller one is an artefact of few clusters.
        se = max(_clustered_se(better, groups), sd / math.sqrt(n))
        method = "paired-clustered"
    else:
        clusters = None  # too few clusters for a clustered SE to mean anything
        se = sd / math.sqrt(n) if n > 1 else 0.0
        method = "paired-z"
    mde, underpowered, needed = _power(se, sd, tolerance, alpha)
    if discordant == (0, 0) or (not binary and not better.any()):
        return Comparison(PASS, 0.0, (0.0, 0.0), 1.0, n, 0.0, mde, method, True, discordant,
                          underpowered, needed, unmatched, "identical outcomes on every doc")
    if n < 2 and not binary:
        return Comparison(INCONCLUSIVE, delta, (delta, delta), 1.0, n, 0.0, mde, method, True,
                          None, True, needed, unmatched, "one doc cannot show a spread")
    if discordant is not None and sum(discordant) < EXACT_BELOW and tolerance == 0 \
            and clusters is None:
        return _mcnemar(discordant, n, delta, se, mde, underpowered, needed, alpha, max_gain,
                        unmatched)
    verdict, ci, p_value = _normal(float(better.mean()), se, delta, tolerance, alpha, max_gain)
    return Comparison(verdict, delta, ci, p_value, n, se, mde, method, True, discordant,
                      underpowered, needed, unmatched)


def _mcnemar(discordant: tuple[int, int], n: int, delta: float, se: float, mde: float,
             underpowered: bool, needed: int | None, alpha: float, max_gain: float | None,
             unmatched: int) -> Comparison:
    """Exact one-sided McNemar: the binomial test on the discordant pairs.

    Used only without a tolerance: with a margin the null is no longer "p = 1/2" and the
    normal paired test (which takes the margin directly) is used instead.
    """
    from scipy.stats import binomtest

    lost, gained = discordant
    total = lost + gained
    p_worse = float(binomtest(lost, total, 0.5, alternative="greater").pvalue)
    p_better = float(binomtest(gained, total, 0.5, alternative="greater").pvalue)
    if p_worse < alpha:
        verdict = REGRESSED
    elif p_better < alpha:
        verdict = SUSPICIOUS_GAIN if max_gain is not None and delta > max_gain else PASS
    else:
        verdict = INCONCLUSIVE
    half = _z(0.975) * se
    return Comparison(verdict, delta, (delta - half, delta + half), p_worse, n, se, mde,
                      "McNemar exact", True, discordant, underpowered, needed, unmatched)


def _bootstrap(base: object, cand: object, aggregate: Callable[[object], float], sign: float,
               tolerance: float, alpha: float, max_gain: float | None, resamples: int, seed: int,
               unmatched: int) -> Comparison:
    """A seeded paired bootstrap over docs, for metrics that are not means (BLEU, F1, MCC)."""
    import numpy as np

    if resamples < 1000:
        raise ValueError(f"resamples must be at least 1000, got {resamples}")
    base_arr, cand_arr = np.asarray(base), np.asarray(cand)
    n = len(base_arr)
    delta = float(aggregate(cand_arr) - aggregate(base_arr))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        index = rng.integers(0, n, n)
        draws[i] = aggregate(cand_arr[index]) - aggregate(base_arr[index])
    better = sign * draws
    lower, upper = np.quantile(better, [alpha, 1 - alpha])
    verdict = _decide(sign * delta, float(lower), float(upper), tolerance, max_gain)
    se = float(draws.std(ddof=1))
    mde, underpowered, needed = _power(se, se * math.sqrt(n), tolerance, alpha)
    ci = tuple(float(x) for x in np.quantile(draws, [0.025, 0.975]))
    # p: the share of resampled deltas still consistent with "no drop beyond the tolerance".
    p_value = float((better >= -tolerance).mean())
    return Comparison(verdict, delta, (ci[0], ci[1]), p_value, n, se, mde, "paired bootstrap",
                      True, None, underpowered, needed, unmatched)


def compare_aggregates(baseline: float, baseline_se: float | None, candidate: float,
                       candidate_se: float | None, *, n: int | None = None,
                       higher_is_better: bool = True, tolerance: float = 0.0,
                       alpha: float = 0.01, max_gain: float | None = None) -> Comparison:
    """Unpaired fallback for a baseline without samples: SE = sqrt(se_b^2 + se_c^2)."""
    delta = candidate - baseline
    errors = (baseline_se, candidate_se)
    if any(e is None or not math.isfinite(e) for e in errors) or not any(errors):
        return Comparison(CANNOT_COMPARE, delta, (delta, delta), float("nan"), n or 0,
                          float("nan"), float("nan"), "unpaired-z", False,
                          reason="a standard error is missing, zero or not a number, and there "
                                 "are no per-sample outcomes to compute one from")
    se = math.sqrt(float(baseline_se) ** 2 + float(candidate_se) ** 2)  # type: ignore[arg-type]
    sign = 1.0 if higher_is_better else -1.0
    verdict, ci, p_value = _normal(sign * delta, se, delta, tolerance, alpha, max_gain)
    mde, underpowered, needed = _power(se, se * math.sqrt(n) if n else 0.0, tolerance, alpha)
    return Comparison(verdict, delta, ci, p_value, n or 0, se, mde, "unpaired-z", False,
                      underpowered=underpowered, docs_needed=needed)


def holm(p_values: Sequence[float], alpha: float = 0.01) -> list[bool]:
    """Holm-Bonferroni: which hypotheses are rejected (True) at family-wise level alpha."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, index in enumerate(order):
        if not p_values[index] <= alpha / (m - rank):
            break
        rejected[index] = True
    return rejected
