"""Is the candidate worse than the baseline, beyond the tolerated drop, or is that just noise?

Pure functions, no I/O. numpy and scipy are imported inside the functions that need them, so
importing this module (and so loading the plugin) costs nothing.

Decision rule, per task and metric, with tolerance ``T`` (the tolerated drop, in the metric's
units) and one-sided level ``alpha``. Internally everything is a *gain*: the change in the
metric's better direction, so a negative gain is a drop whatever the metric's direction.

- ``regressed``: H0 "gain >= -T" is rejected at ``alpha``: the upper one-sided (1 - alpha)
  confidence bound of the gain is below ``-T``.
- ``suspicious gain`` (only with ``max_gain``): the lower bound is above ``+max_gain``.
- ``pass``: the lower bound is at or above ``-T``.
- ``inconclusive``: neither; too few docs to tell a drop from noise.
- ``cannot compare``: no valid standard error (zero, NaN, missing) or no docs in common.

Methods, in order of preference for per-sample outcomes joined on their doc keys:

- ``bootstrap``: a caller-supplied ``aggregate`` (corpus BLEU, F1, MCC): a seeded paired
  bootstrap over docs.
- ``paired-clustered``: ``clusters`` given with at least two clusters: Miller's (2024) clustered
  SE, the paired SE plus the cross terms within each cluster.
- ``mcnemar-exact``: 0/1 outcomes, fewer than 30 discordant pairs and no tolerance: the exact
  one-sided binomial test on the discordant pairs.
- ``paired-z``: otherwise, the normal test on the per-doc differences.
- ``paired-exact``: 0/1 outcomes where the paired z test has no spread (every doc flipped the
  same way, or one doc): exact Clopper-Pearson bounds of the lost and gained rates, combined
  with Bonferroni (conservative, never a division by zero).
- ``unpaired-z`` (``compare_aggregates``): a baseline without samples.

Power: ``mde = (z_{1-alpha} + z_{0.8}) * se``. A check is ``underpowered`` when its MDE exceeds
the drop worth detecting: the tolerance, or ``min_effect`` (default 0.01, one point of a 0-1
metric) when the tolerance is 0, since every check has an MDE above a zero tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: numpy is never imported at load time
    import numpy as np

PASS = "pass"
REGRESSED = "regressed"
INCONCLUSIVE = "inconclusive"
SUSPICIOUS_GAIN = "suspicious gain"
CANNOT_COMPARE = "cannot compare"
VERDICTS = (PASS, REGRESSED, INCONCLUSIVE, SUSPICIOUS_GAIN, CANNOT_COMPARE)

MCNEMAR_EXACT = "mcnemar-exact"
PAIRED_EXACT = "paired-exact"
PAIRED_Z = "paired-z"
PAIRED_CLUSTERED = "paired-clustered"
BOOTSTRAP = "bootstrap"
UNPAIRED_Z = "unpaired-z"
NO_METHOD = "none"  # docs did not overlap: nothing was computed

POWER = 0.8
DISPLAY_LEVEL = 0.95
EXACT_BELOW = 30  # fewer discordant pairs than this: McNemar's exact test, not the normal one
DEFAULT_MIN_EFFECT = 0.01  # the drop worth detecting when the tolerance is 0: one point
MIN_RESAMPLES = 1000  # the alpha tails of a bootstrap need some resamples in them
ROUNDING = 1e-12  # an SE this small relative to the values is rounding noise of an exact shift

_LABELS = {MCNEMAR_EXACT: "paired, McNemar exact", PAIRED_EXACT: "paired, exact bounds",
           PAIRED_Z: "paired z",
           PAIRED_CLUSTERED: "paired, clustered SE", BOOTSTRAP: "paired bootstrap",
           UNPAIRED_Z: "unpaired z", NO_METHOD: "not compared"}
_NAN = float("nan")


@dataclass(frozen=True)
class Comparison:
    """One metric of one task, candidate against baseline."""

    verdict: str
    delta: float  # candidate minus baseline, in the metric's own units and direction
    ci: tuple[float, float]  # two-sided 95 % interval of delta, for display only
    p_value: float  # one-sided, H0: no drop beyond the tolerance
    n: int | None  # matched docs (None: an unpaired comparison with an unknown n)
    se: float  # standard error of delta
    mde: float  # drop detectable with 80 % power at this n and alpha
    method: str
    paired: bool
    discordant: tuple[int, int] | None = None  # 0/1 metrics: (b lost, c gained) by the candidate
    underpowered: bool = False
    docs_needed: int | None = None  # docs for an MDE equal to the drop worth detecting
    unmatched: int = 0  # docs in only one of baseline and candidate
    reason: str = ""
    baseline_score: float = _NAN
    candidate_score: float = _NAN
    tolerance: float = 0.0
    alpha: float = 0.01

    @property
    def regressed(self) -> bool:
        return self.verdict == REGRESSED

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "regressed": self.regressed}

    def mde_at(self, power: float) -> float:
        """The drop detectable with ``power`` (``mde`` is the one at 80 %): a release gate that
        must catch a drop 95 % of the time sizes it with ``mde_at(0.95)``, about 1.25 ``mde``."""
        if not 0 < power < 1:
            raise ValueError(f"power must be between 0 and 1, got {power}")
        return self.mde * (_z(1 - self.alpha) + _z(power)) / (_z(1 - self.alpha) + _z(POWER))

    def summary(self) -> str:
        """One human line: the verdict, the numbers behind it, and how they were computed."""
        if self.verdict == CANNOT_COMPARE:
            return f"cannot compare: {self.reason} (n={self.n}, {self.unmatched} unmatched)"
        parts = [f"{self.verdict}: delta {_num(self.delta)} [95% CI {_num(self.ci[0])}, "
                 f"{_num(self.ci[1])}]", f"p{_p(self.p_value)}", f"n={self.n}"]
        if self.discordant is not None:
            parts.append(f"b={self.discordant[0]} c={self.discordant[1]}")
        parts.append(f"MDE {_num(self.mde)}")
        text = ", ".join(parts) + f" ({_LABELS.get(self.method, self.method)})"
        if self.unmatched:
            text += f"; {self.unmatched} docs unmatched"
        if self.underpowered:
            needed = f"about {self.docs_needed:,} docs needed" if self.docs_needed else "n too small"
            text += f"; underpowered: {needed}"
        return text


@dataclass(frozen=True)
class _Estimate:
    """What a method hands the decision rule: the gain (better direction) and its bounds."""

    gain: float
    se: float
    lower: float  # one-sided (1 - alpha) lower bound of the gain
    upper: float  # one-sided (1 - alpha) upper bound of the gain
    shown: tuple[float, float]  # two-sided 95 % interval of the gain
    p_value: float
    method: str


# --- public API ---------------------------------------------------------------------------


def compare_samples(baseline: Mapping[Hashable, Any], candidate: Mapping[Hashable, Any], *,
                    higher_is_better: bool = True, tolerance: float = 0.0, alpha: float = 0.01,
                    clusters: Mapping[Hashable, Hashable] | None = None,
                    max_gain: float | None = None,
                    aggregate: Callable[[list[Any]], float] | None = None,
                    resamples: int = 10_000, seed: int | None = 0,
                    min_effect: float | None = None) -> Comparison:
    """Paired comparison of per-sample values joined on their doc keys.

    Values are floats, except with ``aggregate``: it receives a list of per-doc values (any type
    it understands, e.g. (prediction, reference) pairs) and returns the metric; the bootstrap
    resamples docs in the baseline's key order with ``seed``.
    Raises ValueError for an empty side, bad settings or a value that is not a number.
    """
    _check_settings(tolerance, alpha, max_gain, min_effect)
    if aggregate is not None and resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples must be at least {MIN_RESAMPLES}, got {resamples}")
    for side, values in (("baseline", baseline), ("candidate", candidate)):
        if not values:
            raise ValueError(f"the {side} has no per-sample values (n = 0): nothing to compare")
    keys = [key for key in baseline if key in candidate]
    context = _Context(len(baseline) + len(candidate) - 2 * len(keys), tolerance, alpha,
                       max_gain, _target_effect(tolerance, min_effect))
    if not keys:
        return context.cannot(f"no doc is in both: {len(baseline)} baseline and {len(candidate)} "
                              f"candidate docs, none shared", n=0, paired=True)
    if aggregate is not None:
        return _compare_bootstrap([baseline[k] for k in keys], [candidate[k] for k in keys],
                                  aggregate, higher_is_better, resamples, seed, context)
    base = _numbers("baseline", baseline, keys)
    cand = _numbers("candidate", candidate, keys)
    return _compare_means(base, cand, _cluster_codes(keys, clusters), higher_is_better, context)


def compare_aggregates(baseline: float, baseline_se: float | None, candidate: float,
                       candidate_se: float | None, *, n: int | None = None,
                       higher_is_better: bool = True, tolerance: float = 0.0,
                       alpha: float = 0.01, max_gain: float | None = None,
                       min_effect: float | None = None) -> Comparison:
    """Unpaired fallback for a baseline without samples: SE = sqrt(se_b^2 + se_c^2)."""
    _check_settings(tolerance, alpha, max_gain, min_effect)
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1 doc, got n = {n}")
    scores = (_number("baseline", baseline), _number("candidate", candidate))
    errors = tuple(None if e is None else _number("stderr", e) for e in (baseline_se, candidate_se))
    context = _Context(0, tolerance, alpha, max_gain, _target_effect(tolerance, min_effect),
                       scores=scores)
    problem = _aggregate_problem(scores, errors)
    if problem:
        return context.cannot(problem, n=n, paired=False, method=UNPAIRED_Z)
    se = math.hypot(*(float(e or 0.0) for e in errors))  # both present, checked just above
    if not math.isfinite(se):
        return context.cannot("the combined standard error overflows", n=n, paired=False,
                              method=UNPAIRED_Z)
    sign = 1.0 if higher_is_better else -1.0
    gain = sign * (scores[1] - scores[0])
    if not math.isfinite(gain):
        return context.cannot("the difference of the scores overflows", n=n, paired=False,
                              method=UNPAIRED_Z)
    estimate = _normal_estimate(gain, se, context, UNPAIRED_Z)
    return context.finish(estimate, sign, n=n, paired=False, sd=se * math.sqrt(n) if n else _NAN)


def holm(p_values: Sequence[float], alpha: float = 0.01) -> list[bool]:
    """Holm-Bonferroni step-down: True where a hypothesis is rejected at family-wise ``alpha``.

    Sorted ascending, the j-th smallest p (1-based) is rejected while p <= alpha / (m - j + 1);
    the first that is not stops the procedure. NaN p-values are never rejected.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    values = [float(p) for p in p_values]
    if any(p < 0 or p > 1 for p in values):  # NaN compares False and passes through
        raise ValueError(f"p-values must lie in [0, 1], got {values}")
    m = len(values)
    order = sorted(range(m), key=lambda i: (math.isnan(values[i]), values[i]))
    rejected = [False] * m
    for rank, index in enumerate(order):
        if not values[index] <= alpha / (m - rank):  # NaN stops here too
            break
        rejected[index] = True
    return rejected


# --- the shared decision rule -------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """Settings and bookkeeping every method shares when it builds its Comparison."""

    unmatched: int
    tolerance: float
    alpha: float
    max_gain: float | None
    target: float  # the drop worth detecting, for the power report
    scores: tuple[float, float] = (_NAN, _NAN)

    def decide(self, estimate: _Estimate) -> tuple[str, str]:
        """(verdict, reason) from the one-sided bounds of the gain."""
        level = f"{1 - self.alpha:.0%}"
        allowed = f"-{_num(self.tolerance)}" if self.tolerance else "0"
        if estimate.upper < -self.tolerance:
            return REGRESSED, f"upper {level} bound of the gain {_num(estimate.upper)} < {allowed}"
        if self.max_gain is not None and estimate.lower > self.max_gain:
            return SUSPICIOUS_GAIN, (f"lower {level} bound of the gain {_num(estimate.lower)} > "
                                     f"max_gain {_num(self.max_gain)}")
        if estimate.lower >= -self.tolerance:
            return PASS, f"lower {level} bound of the gain {_num(estimate.lower)} >= {allowed}"
        return INCONCLUSIVE, (f"{level} bounds of the gain [{_num(estimate.lower)}, "
                              f"{_num(estimate.upper)}] straddle {allowed}")

    def finish(self, estimate: _Estimate, sign: float, *, n: int | None, paired: bool,
               sd: float, discordant: tuple[int, int] | None = None) -> Comparison:
        """Turn a gain estimate back into the metric's own direction, with its power report."""
        if not math.isfinite(estimate.gain):
            return self.cannot(f"the difference is {estimate.gain} (overflow)", n=n,
                               paired=paired, method=estimate.method, discordant=discordant)
        if estimate.method not in (MCNEMAR_EXACT, PAIRED_EXACT) and not (math.isfinite(estimate.se)
                                                      and estimate.se > 0):
            return self.cannot(f"standard error is {estimate.se}: no valid spread to judge "
                               f"the difference {_num(sign * estimate.gain)} by", n=n,
                               paired=paired, method=estimate.method, discordant=discordant)
        verdict, reason = self.decide(estimate)
        mde, underpowered, needed = _power(estimate.se, sd, self.alpha, self.target)
        low, high = sorted((sign * estimate.shown[0], sign * estimate.shown[1]))
        return Comparison(verdict, sign * estimate.gain, (low, high), estimate.p_value, n,
                          estimate.se, mde, estimate.method, paired, discordant, underpowered,
                          needed, self.unmatched, reason, *self.scores, self.tolerance,
                          self.alpha)

    def identical(self, n: int, method: str, discordant: tuple[int, int] | None,
                  sd_bound: float) -> Comparison:
        """A pass with no difference at all: every doc has the same outcome on both sides.

        ``sd_bound`` sizes the power report, since the observed spread (0) says nothing.
        """
        se = sd_bound / math.sqrt(n)
        mde, underpowered, needed = _power(se, sd_bound, self.alpha, self.target)
        return Comparison(PASS, 0.0, (0.0, 0.0), 1.0, n, 0.0, mde, method, True, discordant,
                          underpowered, needed, self.unmatched,
                          f"identical outcomes on all {n} docs", *self.scores, self.tolerance,
                          self.alpha)

    def cannot(self, reason: str, *, n: int | None, paired: bool, method: str = NO_METHOD,
               discordant: tuple[int, int] | None = None) -> Comparison:
        delta = self.scores[1] - self.scores[0]
        return Comparison(CANNOT_COMPARE, delta, (_NAN, _NAN), _NAN, n, _NAN, _NAN, method, paired,
                          discordant, True, None, self.unmatched, reason, *self.scores,
                          self.tolerance, self.alpha)


def _z(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def _normal_estimate(gain: float, se: float, context: _Context, method: str) -> _Estimate:
    """One-sided z bounds at alpha, a 95 % display interval, p for H0 "gain >= -T"."""
    from scipy.stats import norm

    bound, half = _z(1 - context.alpha) * se, _z(0.5 + DISPLAY_LEVEL / 2) * se
    p_value = float(norm.cdf((gain + context.tolerance) / se)) if se > 0 else _NAN
    return _Estimate(gain, se, gain - bound, gain + bound, (gain - half, gain + half), p_value,
                     method)


def _power(se: float, sd: float, alpha: float, target: float) -> tuple[float, bool, int | None]:
    """(MDE at 80 % power, underpowered, docs needed for an MDE of ``target``)."""
    factor = _z(1 - alpha) + _z(POWER)
    mde = factor * se
    if not math.isfinite(mde):
        return _NAN, True, None
    if mde <= target:
        return mde, False, None
    ratio = factor * sd / target
    needed = ratio * ratio  # a product overflows to inf; a power would raise
    return mde, True, math.ceil(needed) if math.isfinite(needed) else None


# --- per-sample methods -------------------------------------------------------------------


def _compare_means(base: np.ndarray, cand: np.ndarray, codes: list[int] | None,
                   higher_is_better: bool, context: _Context) -> Comparison:
    """Metrics that are the mean of their per-sample values: McNemar, paired z or clustered."""
    import numpy as np

    n = len(base)
    binary = bool(np.isin(base, (0.0, 1.0)).all() and np.isin(cand, (0.0, 1.0)).all())
    sign = 1.0 if higher_is_better else -1.0
    with np.errstate(all="ignore"):  # overflow shows up as inf and is reported below
        context = replace(context, scores=(float(base.mean()), float(cand.mean())))
        gains = sign * (cand - base)  # per doc, positive = the candidate is better there
        mean_gain = float(gains.mean())
    discordant = (int((gains < 0).sum()), int((gains > 0).sum())) if binary else None
    if codes is not None and len(set(codes)) < 2:
        codes = None  # one cluster: nothing to add to the paired SE
    method = _paired_method(discordant, codes, context.tolerance)
    if bool((base == cand).all()):
        # For 0/1, power is sized by the rule-of-three bound (3/n) on the discordance rate.
        return context.identical(n, method, discordant,
                                 math.sqrt(min(1.0, 3 / n)) if binary else 0.0)
    if not np.isfinite(gains).all():
        return context.cannot("the per-doc differences overflow", n=n, paired=True,
                              method=method, discordant=discordant)
    sd = _sd(gains)
    if method == MCNEMAR_EXACT and discordant is not None:
        # One doc has no sd: size the power report as for identical outcomes (rule of three).
        spread = sd if math.isfinite(sd) else math.sqrt(min(1.0, 3 / n))
        estimate = _mcnemar_estimate(*discordant, n, spread / math.sqrt(n), context.alpha)
    else:
        se = _clustered_se(gains, codes) if codes is not None else sd / math.sqrt(n)
        scale = float(max(np.abs(base).max(), np.abs(cand).max()))
        se = _unless_rounding(se, scale)
        if discordant is not None and not (math.isfinite(se) and se > 0):
            # 0/1 outcomes with no spread in the differences (all flipped one way, or n = 1):
            # the z test has nothing to divide by, the exact bounds still decide.
            estimate = _exact_difference_estimate(*discordant, n, context)
            return context.finish(estimate, sign, n=n, paired=True,
                                  sd=estimate.se * math.sqrt(n), discordant=discordant)
        if n < 2:
            return context.cannot("only 1 doc in common: one difference has no standard "
                                  "error to judge it by; evaluate more docs", n=n, paired=True, method=method)
        estimate = _normal_estimate(mean_gain, se, context, method)
    return context.finish(estimate, sign, n=n, paired=True, sd=estimate.se * math.sqrt(n),
                          discordant=discordant)


def _paired_method(discordant: tuple[int, int] | None, codes: list[int] | None,
                   tolerance: float) -> str:
    # Clusters win over McNemar: the exact test assumes independent docs, clustering denies it.
    if codes is not None:
        return PAIRED_CLUSTERED
    # With a margin (T > 0) the normal paired test is used even for few discordant pairs:
    # McNemar conditions on b + c, which fixes only the share c / (b + c); a margin on the
    # difference (c - b) / n also depends on the discordance rate (b + c) / n, a nuisance
    # parameter the conditional exact test cannot absorb. Plugging in the observed rate would be
    # "exact" in name only; the z test estimates the very quantity the margin is defined on.
    if discordant is not None and sum(discordant) < EXACT_BELOW and tolerance == 0:
        return MCNEMAR_EXACT
    return PAIRED_Z


def _unless_rounding(se: float, scale: float) -> float:
    """0 for an SE that is only floating-point noise (every doc shifted by the same amount)."""
    return 0.0 if se <= ROUNDING * scale else se


def _sd(values: np.ndarray) -> float:
    """Sample standard deviation; NaN for one doc rather than a division by zero."""
    import numpy as np

    if len(values) < 2:
        return _NAN
    with np.errstate(all="ignore"):
        return float(values.std(ddof=1))


def _mcnemar_estimate(lost: int, gained: int, n: int, se: float, alpha: float) -> _Estimate:
    """Exact one-sided McNemar: the binomial test of b out of b + c at p = 1/2.

    Bounds come from the Clopper-Pearson interval of c / (b + c), which inverts the same
    exact test, mapped to the gain (c - b) / n = (2 share - 1) (b + c) / n.
    """
    from scipy.stats import binomtest

    total = lost + gained
    p_value = float(binomtest(lost, total, 0.5, alternative="greater").pvalue)
    # Two-sided 1 - 2 alpha: each tail holds alpha, the one-sided bounds of the decision.
    low, high, shown_low, shown_high = (
        (2 * share - 1) * total / n
        for share in _clopper_pearson(gained, total, (1 - 2 * alpha, DISPLAY_LEVEL)))
    return _Estimate((gained - lost) / n, se, low, high, (shown_low, shown_high), p_value,
                     MCNEMAR_EXACT)


def _exact_difference_estimate(lost: int, gained: int, n: int, context: _Context) -> _Estimate:
    """Exact, conservative bounds of the gain (c - b) / n from 0/1 paired outcomes.

    The lost rate b / n and the gained rate c / n each get a one-sided Clopper-Pearson bound at
    alpha / 2 (Bonferroni), so the gain is below ``c_low - b_high`` with probability <= alpha
    whatever the discordance rate: no normal approximation and no spread estimate needed. The
    p-value is the smallest level at which the bound rejects H0 "gain >= -T" (bisection).
    """
    def bounds(level: float) -> tuple[float, float]:
        """(lower, upper) one-sided bounds of the gain, each at ``level``."""
        lost_low, lost_high = _binomial_bounds(lost, n, level / 2)
        gained_low, gained_high = _binomial_bounds(gained, n, level / 2)
        return gained_low - lost_high, gained_high - lost_low

    lower, upper = bounds(context.alpha)
    shown = bounds((1 - DISPLAY_LEVEL) / 2)
    low, high = 0.0, 1.0  # p: where the upper bound crosses -T (monotone in the level)
    if bounds(1.0 - 1e-12)[1] >= -context.tolerance:
        low = high = 1.0
    for _ in range(40):
        if high - low < 1e-6:
            break
        middle = (low + high) / 2
        if bounds(middle)[1] < -context.tolerance:
            high = middle
        else:
            low = middle
    # The SE of a binomial difference at the bounds' spread, only for the power report.
    se = max(upper - lower, 1.0 / n) / (2 * _z(1 - context.alpha))
    return _Estimate((gained - lost) / n, se, lower, upper, shown, high, PAIRED_EXACT)


def _binomial_bounds(successes: int, trials: int, tail: float) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) lower and upper bounds of a proportion, ``tail`` each."""
    from scipy.stats import beta

    low = float(beta.ppf(tail, successes, trials - successes + 1)) if successes else 0.0
    high = (float(beta.ppf(1 - tail, successes + 1, trials - successes))
            if successes < trials else 1.0)
    return low, high


def _clopper_pearson(successes: int, trials: int, levels: tuple[float, float]
                     ) -> tuple[float, float, float, float]:
    """(low, high) of the exact binomial interval at each level, from beta quantiles: the same
    interval binomtest's proportion_ci(method="exact") finds by root search, 10x faster."""
    from scipy.stats import beta

    tails = [(1 - level) / 2 for level in levels]
    lows = beta.ppf(tails, successes, trials - successes + 1) if successes else [0.0, 0.0]
    highs = (beta.ppf([1 - t for t in tails], successes + 1, trials - successes)
             if successes < trials else [1.0, 1.0])
    return float(lows[0]), float(highs[0]), float(lows[1]), float(highs[1])


def _clustered_se(gains: np.ndarray, codes: list[int]) -> float:
    """Miller (2024): SE^2 = sd^2 / n + (1 / n^2) * sum over clusters of the cross terms
    e_i e_j (i != j, e = gain - mean). Singleton clusters give back the paired SE exactly."""
    import numpy as np

    n = len(gains)
    if n < 2:
        return _NAN
    with np.errstate(all="ignore"):
        centred = gains - gains.mean()
        squares = float((centred**2).sum())
        per_cluster = np.bincount(np.asarray(codes), weights=centred)
        cross = float((per_cluster**2).sum()) - squares  # (sum e)^2 - sum e^2, per cluster
        variance = squares / (n * (n - 1)) + cross / n**2
    return math.sqrt(variance) if variance >= 0 else _NAN


def _compare_bootstrap(base: list[Any], cand: list[Any], aggregate: Callable[[list[Any]], float],
                       higher_is_better: bool, resamples: int, seed: int | None,
                       context: _Context) -> Comparison:
    """A seeded paired bootstrap over docs, for metrics that are not a mean of per-doc values."""
    import numpy as np

    n = len(base)
    scores = (float(aggregate(base)), float(aggregate(cand)))
    context = replace(context, scores=scores)
    sign = 1.0 if higher_is_better else -1.0
    if all(b == c for b, c in zip(base, cand, strict=True)):
        return context.identical(n, BOOTSTRAP, None, 0.0)
    gain = sign * (scores[1] - scores[0])
    if not math.isfinite(gain):
        return context.cannot(f"the aggregate is not finite: {scores}", n=n, paired=True,
                              method=BOOTSTRAP)
    gains = sign * _resampled_deltas(base, cand, aggregate, resamples, seed)
    if not np.isfinite(gains).all():
        bad = int((~np.isfinite(gains)).sum())
        return context.cannot(f"the aggregate was not finite on {bad} of {resamples} resamples",
                              n=n, paired=True, method=BOOTSTRAP)
    low, high, shown_low, shown_high = np.quantile(
        gains, [context.alpha, 1 - context.alpha, 0.025, 0.975])
    # p: the share of resampled gains still consistent with H0 "gain >= -T" (percentile
    # inversion), +1 so that it is never exactly 0.
    p_value = (1 + int((gains >= -context.tolerance).sum())) / (resamples + 1)
    with np.errstate(all="ignore"):
        se = _unless_rounding(float(gains.std(ddof=1)), max(abs(s) for s in scores))
    estimate = _Estimate(gain, se, float(low), float(high), (float(shown_low), float(shown_high)),
                         min(1.0, p_value), BOOTSTRAP)
    return context.finish(estimate, sign, n=n, paired=True, sd=se * math.sqrt(n))


def _resampled_deltas(base: list[Any], cand: list[Any], aggregate: Callable[[list[Any]], float],
                      resamples: int, seed: int | None) -> np.ndarray:
    """aggregate(candidate) - aggregate(baseline) on the same resampled docs, per resample."""
    import numpy as np

    n = len(base)
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    rows = max(1, 1_000_000 // n)  # draw indices in blocks: bounded memory, few numpy calls
    for start in range(0, resamples, rows):
        block = rng.integers(0, n, size=(min(rows, resamples - start), n))
        for offset, index in enumerate(block.tolist()):
            deltas[start + offset] = (float(aggregate([cand[i] for i in index]))
                                      - float(aggregate([base[i] for i in index])))
    return deltas


# --- input checks -------------------------------------------------------------------------


def _check_settings(tolerance: float, alpha: float, max_gain: float | None,
                    min_effect: float | None) -> None:
    if not 0 < _number("alpha", alpha) < 0.5:
        raise ValueError(f"alpha must be between 0 and 0.5 (one-sided), got {alpha!r}")
    if not (math.isfinite(_number("tolerance", tolerance)) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite drop >= 0, got {tolerance!r}")
    if max_gain is not None and not (math.isfinite(_number("max_gain", max_gain)) and max_gain >= 0):
        raise ValueError(f"max_gain must be a finite gain >= 0, got {max_gain!r}")
    if min_effect is not None and not (math.isfinite(_number("min_effect", min_effect))
                                       and min_effect > 0):
        raise ValueError(f"min_effect must be a finite effect > 0, got {min_effect!r}")


def _target_effect(tolerance: float, min_effect: float | None) -> float:
    """The drop worth detecting: the tolerance, or ``min_effect`` (1 point) when it is 0."""
    return tolerance if tolerance > 0 else (min_effect or DEFAULT_MIN_EFFECT)


def _number(what: str, value: Any) -> float:
    if isinstance(value, str | bytes):
        raise ValueError(f"{what} value {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"{what} value {value!r} is not a number") from error


def _numbers(side: str, values: Mapping[Hashable, Any], keys: list[Hashable]) -> np.ndarray:
    """The side's values for ``keys`` as floats; NaN or infinite values are a clear error."""
    import numpy as np

    array = np.array([_number(f"{side} doc {key!r}:", values[key]) for key in keys], dtype=float)
    if not np.isfinite(array).all():
        bad = [key for key, v in zip(keys, array, strict=True) if not math.isfinite(v)]
        raise ValueError(f"{side} has {len(bad)} NaN or infinite per-sample values, e.g. doc "
                         f"{bad[0]!r}: per-sample outcomes must be finite")
    return array


def _cluster_codes(keys: list[Hashable], clusters: Mapping[Hashable, Hashable] | None
                   ) -> list[int] | None:
    """A small integer per cluster; a doc without a cluster id is a cluster of its own."""
    if clusters is None:
        return None
    codes: dict[Hashable, int] = {}
    result = []
    for key in keys:
        if key not in clusters:
            result.append(len(codes))
            codes[("unclustered doc", len(codes))] = len(codes)
            continue
        try:
            result.append(codes.setdefault(("cluster", clusters[key]), len(codes)))
        except TypeError as error:
            raise ValueError(f"cluster id {clusters[key]!r} of doc {key!r} is not hashable") \
                from error
    return result


def _aggregate_problem(scores: tuple[float, float], errors: tuple[float | None, ...]) -> str:
    """Why two aggregates cannot be compared, or "" when they can."""
    if not all(math.isfinite(s) for s in scores):
        return f"a score is not finite (baseline {scores[0]}, candidate {scores[1]})"
    names = ("baseline", "candidate")
    for name, error in zip(names, errors, strict=True):
        if error is None:
            return f"the {name} has no standard error and no per-sample outcomes"
        if not math.isfinite(error) or error < 0:
            return f"the {name} standard error is {error}"
    if errors[0] == 0 and errors[1] == 0:
        return ("both standard errors are 0; without per-sample outcomes a zero spread cannot be "
                "told from a missing one")
    return ""


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1000 or abs(value) < 0.001):
        return f"{value:.3g}"
    return f"{value:.3f}"


def _p(value: float) -> str:
    """A p-value with its relation sign: "=0.019", "<0.001"."""
    if math.isnan(value):
        return "=n/a"
    return "<0.001" if value < 0.001 else f"={value:.3f}"
