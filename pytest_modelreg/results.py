"""The result of one evaluation, and the checks a test makes on it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import CheckFailed, ModelregUsageError
from .spec import EvalSpec, MetricCheck, Tolerance, parse_threshold, parse_tolerance, suggest
from .verdict import INVALID, OUT_OF_BOUNDS, PASS, Verdict, check_bounds, not_finite_message


@dataclass(frozen=True)
class SampleOutcome:
    """One doc's outcome: its identity (id and content hashes) and its per-sample metric values."""

    doc_id: int | str
    doc_hash: str
    prompt_hash: str
    target_hash: str
    values: dict[str, float]
    prompt: str = ""  # the start of the prompt, so a person can find the doc in a diff
    # Per-doc items of corpus metrics (F1, MCC, BLEU: lm-eval logs (gold, prediction) pairs).
    items: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"doc_id": self.doc_id, "doc_hash": self.doc_hash, "prompt_hash": self.prompt_hash,
                "target_hash": self.target_hash, "values": self.values, "prompt": self.prompt}
        if self.items:
            data["items"] = self.items
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleOutcome:
        return cls(data["doc_id"], data["doc_hash"], data["prompt_hash"], data["target_hash"],
                   {k: float(v) for k, v in data["values"].items()}, str(data.get("prompt", "")),
                   dict(data.get("items", {})))


def samples_jsonl(samples: list[SampleOutcome]) -> str:
    """Per-sample outcomes as JSON lines: one doc a line, so a diff shows which docs changed."""
    return "".join(json.dumps(s.to_dict(), sort_keys=True) + "\n" for s in samples)


@dataclass(frozen=True)
class DocChanges:
    """How the docs of two evaluations differ, joined on doc id: their text (the doc's hash),
    their prompt or target (same doc, other rendering), or docs on one side only."""

    total: int  # distinct doc ids on either side
    text: int = 0
    prompt: int = 0
    new: int = 0
    missing: int = 0

    @property
    def differ(self) -> int:
        return self.text + self.prompt + self.new + self.missing

    def summary(self) -> str:
        return (f"{self.differ} of {self.total} docs differ from the baseline: {self.text} "
                f"changed text, {self.prompt} changed prompt, {self.new} new, "
                f"{self.missing} missing")


def doc_changes(before: list[SampleOutcome] | None, after: list[SampleOutcome]
                ) -> DocChanges | None:
    """The docs that differ, or None when a side has no per-sample hashes to tell."""
    if not before or not after or not all(s.doc_hash for s in (*before, *after)):
        return None
    old = {s.doc_id: s for s in before}
    new = {s.doc_id: s for s in after}
    text = prompt = 0
    for doc_id in old.keys() & new.keys():
        a, b = old[doc_id], new[doc_id]
        if a.doc_hash != b.doc_hash:
            text += 1
        elif (a.prompt_hash, a.target_hash) != (b.prompt_hash, b.target_hash):
            prompt += 1
    return DocChanges(len(old.keys() | new.keys()), text, prompt, len(new.keys() - old.keys()),
                      len(old.keys() - new.keys()))


def non_finite_samples(samples: list[SampleOutcome] | None, metric: str) -> str | None:
    """A sentence naming the docs whose value of ``metric`` is NaN or infinite, else None."""
    with_metric = [s for s in samples or [] if metric in s.values]
    bad = [s for s in with_metric if not math.isfinite(s.values[metric])]
    if not bad:
        return None
    return (f"{metric} is {bad[0].values[metric]} on {len(bad)} of {len(with_metric)} docs "
            f"(e.g. doc id {bad[0].doc_id!r})")


BaselineJudge = Callable[["EvalResult", MetricCheck], Verdict]
Recorder = Callable[[Verdict], None]


@dataclass
class EvalResult:
    """What one evaluation measured. ``metrics`` keys are lm-eval's names without the filter
    suffix ("acc_norm"), or ``name,filter`` when a task reports one metric under several filters."""

    spec: EvalSpec
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    higher_is_better: dict[str, bool]
    samples: list[SampleOutcome]
    fingerprint: dict[str, Any]
    provenance: dict[str, Any]
    n_samples: int
    seconds: float = 0.0
    model_load_seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    cached: bool = False  # served from the persistent result cache, not evaluated now
    cache_key: str | None = None  # its entry in the result cache (None: not cached)
    # How lm-eval aggregates each corpus metric's items (for the paired bootstrap).
    aggregators: dict[str, Callable[[list[Any]], float]] = field(
        default_factory=dict, repr=False, compare=False)
    # Set by the session: how check_baseline judges, and where verdicts are recorded.
    baseline_judge: BaselineJudge | None = field(default=None, repr=False, compare=False)
    recorder: Recorder | None = field(default=None, repr=False, compare=False)

    @property
    def task(self) -> str:
        return self.spec.task

    def invalid(self, metric: str | None = None) -> str | None:
        """Why ``metric`` (every metric when None) is not a valid number: NaN or infinite, as a
        whole or on some docs. None when it is valid."""
        names = sorted(self.metrics) if metric is None else [metric]
        for name in names:
            value = self.metrics.get(name)
            if value is not None and not math.isfinite(value):
                return f"{name} is {value}"
            if (bad := non_finite_samples(self.samples, name)) is not None:
                return bad
        return None

    def resolve_metric(self, name: str) -> str:
        """The key of ``name`` in ``metrics``; an unknown name lists the task's metrics."""
        if name in self.metrics:
            return name
        base, _, _ = name.partition(",")
        if base != name and base in self.metrics:
            return base  # "exact_match,strict-match" where the task reports one filter only
        with_filter = [k for k in self.metrics if k.split(",", 1)[0] == name]
        if len(with_filter) == 1:
            return with_filter[0]
        known = sorted(self.metrics)
        hint = "name one filter, e.g. " + with_filter[0] if with_filter else (
            f"its metrics are: {', '.join(known)}{suggest(name, known)}")
        raise ModelregUsageError(f"task {self.task!r} has no metric {name!r}; {hint}")

    def _record(self, verdict: Verdict) -> Verdict:
        if self.recorder is not None:
            self.recorder(verdict)
        if verdict.failed:
            raise CheckFailed(f"{self.task}: {verdict.message}")
        return verdict

    def check(self, metric: str, min: float | None = None, max: float | None = None) -> Verdict:
        """Fail the test when ``metric`` is below ``min`` or above ``max``."""
        key = self.resolve_metric(metric)
        where = f"check({metric!r})"
        low, high = parse_threshold("min", min, where), parse_threshold("max", max, where)
        value = self.metrics[key]
        if (problem := self.invalid(key)) is not None:  # NaN fails no bound: never a pass
            return self._record(Verdict(self.task, key, INVALID, value,
                                        message=not_finite_message(problem),
                                        stderr=self.stderr.get(key)))
        miss = check_bounds(key, value, low, high)
        verdict = Verdict(self.task, key, OUT_OF_BOUNDS if miss else PASS, value,
                          message=miss or f"{key} = {value:.4f} within bounds",
                          stderr=self.stderr.get(key))
        return self._record(verdict)

    def check_baseline(self, metric: str, tolerance: float | str | None = None) -> Verdict:
        """Fail the test when ``metric`` dropped against the recorded baseline by more than
        ``tolerance`` (absolute, or relative as "2%")."""
        key = self.resolve_metric(metric)
        tol = parse_tolerance(tolerance, f"check_baseline({metric!r})") if tolerance is not None \
            else Tolerance()
        if self.baseline_judge is None:
            raise ModelregUsageError("check_baseline needs a result from the modelreg fixture")
        return self._record(self.baseline_judge(self, MetricCheck(key, tolerance=tol)))
