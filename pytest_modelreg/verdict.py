"""Verdicts: pure functions from (check, measured value, baseline) to a decision.

Nothing here reads files or knows about pytest. The comparison with the baseline itself is
statistical (``stats.compare_samples`` through ``session.compare_with_baseline``); this module
combines its verdict with the bounds, the update mode and the fingerprint check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .spec import MetricCheck

PASS = "pass"
REGRESSED = "regressed"
OUT_OF_BOUNDS = "out of bounds"
NO_BASELINE = "no baseline"
INCOMPARABLE = "incomparable"
RECORDED = "recorded"
INVALID = "invalid"
INCONCLUSIVE = "inconclusive"
SUSPICIOUS_GAIN = "suspicious gain"
CANNOT_COMPARE = "cannot compare"

FAILING = frozenset({REGRESSED, OUT_OF_BOUNDS, NO_BASELINE, INCOMPARABLE, INVALID,
                     SUSPICIOUS_GAIN})
# Too little evidence to tell: a warning by default, a failure under --modelreg-strict.
STRICT_FAILING = frozenset({INCONCLUSIVE, CANNOT_COMPARE})
# When a metric fails in several ways, the table shows the most fundamental one.
_PRECEDENCE = (INVALID, INCOMPARABLE, OUT_OF_BOUNDS, REGRESSED, SUSPICIOUS_GAIN, NO_BASELINE,
               CANNOT_COMPARE, INCONCLUSIVE, RECORDED, PASS)


@dataclass(frozen=True)
class Verdict:
    task: str
    metric: str
    verdict: str
    current: float
    baseline: float | None = None
    delta: float | None = None
    message: str = ""
    stderr: float | None = None
    # The comparison with the baseline (see stats.compare_samples), when one was made.
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int | None = None
    mde: float | None = None
    method: str | None = None
    underpowered: bool = False
    docs_needed: int | None = None
    strict: bool = False
    # A regression's docs that got worse: doc_id, prompt (its start), before, after.
    flipped: list[dict[str, object]] | None = None

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING or (self.strict and self.verdict in STRICT_FAILING)

    def to_dict(self) -> dict[str, object]:
        """Plain values for reports and trackers: a statistic that is NaN or infinite (no
        comparison made) becomes None, so JSON stays JSON; the measured value is kept."""
        data = asdict(self)
        for key in _STATISTICS:
            value = data.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = None
        return data


_STATISTICS = ("baseline", "delta", "stderr", "ci_low", "ci_high", "p_value", "mde")


def finite_or_none(value: float | None) -> float | None:
    """None for a statistic that was not computed (NaN): the table shows "-", JSON stays JSON."""
    return value if value is not None and math.isfinite(value) else None


def not_finite_message(problem: str) -> str:
    """The failure sentence of a NaN or infinite metric (``problem`` names metric and docs)."""
    return (f"{problem}; a NaN or infinite metric is never a pass: the evaluation produced no "
            "valid number (check the metric and the model's outputs)")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def check_bounds(metric: str, value: float, low: float | None, high: float | None) -> str | None:
    """A failure sentence when ``value`` is outside [low, high], else None."""
    if low is not None and value < low:
        return f"{metric} = {fmt(value)}, expected >= {fmt(low)} (missed by {fmt(low - value)})"
    if high is not None and value > high:
        return f"{metric} = {fmt(value)}, expected <= {fmt(high)} (missed by {fmt(value - high)})"
    return None


def judge_metric(task: str, check: MetricCheck, current: float, *,
                 baseline: float | None, mismatch: list[str] | None, update: bool,
                 record_hint: str, compared: tuple[str, str] | None = None,
                 strict: bool = False, invalid: str | None = None,
                 docs_differ: str | None = None) -> Verdict:
    """One metric's verdict against its absolute bounds and its recorded baseline.

    ``invalid`` is the sentence of a metric that is no valid number (NaN on some docs, or in
    the baseline); ``docs_differ`` counts the docs that differ from the baseline's."""
    if not math.isfinite(current) and invalid is None:
        invalid = not_finite_message(f"{check.metric} is {current}")
    if invalid is not None:
        return Verdict(task, check.metric, INVALID, current, baseline, None, invalid)
    found: list[tuple[str, str]] = []
    if (miss := check_bounds(check.metric, current, check.min, check.max)) is not None:
        found.append((OUT_OF_BOUNDS, miss))
    delta = None if baseline is None else current - baseline
    if update:
        found.append((RECORDED, f"{check.metric} = {fmt(current)} recorded as the baseline"))
    elif mismatch or docs_differ:
        found.append((INCOMPARABLE, incomparable_message(task, mismatch, docs_differ,
                                                         record_hint)))
        delta = None
    elif baseline is None:
        found.append((NO_BASELINE, f"no baseline for {task}/{check.metric}; record it with "
                      f"{record_hint}"))
    elif compared is not None:  # the statistical comparison, made by the caller
        found.append(compared)
    else:  # a baseline value without a comparison: never guess a pass
        found.append((CANNOT_COMPARE, f"{check.metric}: no comparison with the baseline was made"))
    verdict = min((v for v, _ in found), key=_PRECEDENCE.index)
    shown = FAILING | (STRICT_FAILING if strict else frozenset())
    message = "; ".join(text for v, text in found if v in shown) or found[-1][1]
    return Verdict(task, check.metric, verdict, current, baseline, delta, message, strict=strict)


def incomparable_message(task: str, mismatch: list[str] | None, docs_differ: str | None,
                         record_hint: str) -> str:
    """Why the baseline cannot be compared: the settings that differ and the docs that do."""
    parts = []
    if mismatch:
        parts.append(f"the baseline of {task} was recorded under other settings "
                     f"({'; '.join(mismatch)})")
    if docs_differ:
        parts.append(docs_differ)
    return "; ".join(parts) + f"; re-record it with {record_hint} if the change is intended"


def worst(verdicts: list[str]) -> str | None:
    """The most fundamental of several verdicts (None for none)."""
    known = [v for v in verdicts if v in _PRECEDENCE]
    return min(known, key=_PRECEDENCE.index) if known else None
