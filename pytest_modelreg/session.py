"""The session object: evaluations shared between tests, baselines, verdicts.

One instance lives in ``config.stash``; it never sees pytest objects, so it is tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from .baselines import Baseline, BaselineStore
from .errors import BaselineError, ModelregError
from .fingerprint import diff_fingerprints
from .results import EvalResult
from .runner import Evaluator, NullProgress, Progress
from .settings import Settings
from .spec import EvalSpec, MetricCheck
from .verdict import Verdict, judge_metric

EvaluatorFactory = Callable[[Settings, Progress], Evaluator]


def lm_eval_factory(settings: Settings, progress: Progress) -> Evaluator:
    from .runner.lm_eval_runner import LmEvalRunner

    return LmEvalRunner(settings.include_paths, settings.rootdir, progress)


class ModelregSession:
    def __init__(self, settings: Settings, *, progress: Progress | None = None,
                 evaluator_factory: EvaluatorFactory = lm_eval_factory) -> None:
        self.settings = settings
        self.store = BaselineStore(settings.baseline_dir)
        self.progress: Progress = progress or NullProgress()
        self._factory = evaluator_factory
        self._evaluator: Evaluator | None = None
        self._results: dict[EvalSpec, EvalResult | ModelregError] = {}
        self._baselines: dict[str, Baseline | None] = {}
        self._fingerprints: dict[str, tuple[EvalSpec, dict[str, object]]] = {}
        self.recorded: set[str] = set()  # baseline names written in this session
        self.artifact_dir: Path | None = None  # set by the plugin when a tracker wants files

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = self._factory(self.settings, self.progress)
        return self._evaluator

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    # -- evaluations -----------------------------------------------------------------------
    def evaluate(self, spec: EvalSpec) -> tuple[EvalResult, bool]:
        """The result for ``spec`` and whether it was computed now (False: shared)."""
        if spec in self._results:
            cached = self._results[spec]
            if isinstance(cached, ModelregError):
                raise cached
            return cached, False
        try:
            result = self.evaluator.evaluate(spec)
        except ModelregError as exc:
            self._results[spec] = exc
            raise
        self._results[spec] = result
        return result, True

    def _claim_baseline_name(self, result: EvalResult) -> None:
        """Two evaluations with different settings must not share one baseline file."""
        name = result.spec.baseline_name
        claimed = self._fingerprints.setdefault(name, (result.spec, result.fingerprint))
        if claimed[1] != result.fingerprint:
            differences = "; ".join(diff_fingerprints(claimed[1], result.fingerprint))
            raise ModelregError(
                f"baseline {name!r} is used by two evaluations with different settings "
                f"({differences}); give one of them its own name with baseline='...'")

    # -- baselines -------------------------------------------------------------------------
    def _should_record(self, name: str) -> bool:
        return self.settings.update or (self.settings.record_missing and self.baseline(name) is None)

    def baseline(self, name: str) -> Baseline | None:
        """The recorded baseline as it was when the session first asked (cached)."""
        if name not in self._baselines:
            try:
                self._baselines[name] = self.store.load(name)
            except BaselineError:
                if not self.settings.update:
                    raise
                self._baselines[name] = None  # --modelreg-update replaces the damaged file
        return self._baselines[name]

    def _record(self, result: EvalResult) -> None:
        bad = [m for m, v in result.metrics.items() if not math.isfinite(v)]
        if bad:
            raise ModelregError(f"{result.task}: {', '.join(bad)} is not finite; the baseline was "
                                "not recorded")
        name = result.spec.baseline_name
        self.baseline(name)  # keep the old values for the deltas shown in this session
        self.store.save(baseline_from_result(result))
        self.recorded.add(name)

    # -- verdicts --------------------------------------------------------------------------
    def judge(self, result: EvalResult, check: MetricCheck, record_hint: str) -> Verdict:
        """The verdict of one metric against its baseline, recording the baseline first when
        asked to (--modelreg-update, or --modelreg-record-missing and none exists)."""
        name = result.spec.baseline_name
        self._claim_baseline_name(result)
        baseline = self.baseline(name)
        if name not in self.recorded and self._should_record(name):
            self._record(result)
        recorded_now = name in self.recorded
        mismatch = None
        if baseline is not None and not recorded_now:
            mismatch = diff_fingerprints(baseline.fingerprint, result.fingerprint) or None
        verdict = judge_metric(
            result.task, check, result.metrics[check.metric],
            higher_is_better=result.higher_is_better.get(check.metric, True),
            baseline=None if baseline is None else baseline.value(check.metric),
            mismatch=mismatch, update=recorded_now, record_hint=record_hint)
        return replace(verdict, stderr=result.stderr.get(check.metric))

    def checks_for(self, result: EvalResult, checks: list[MetricCheck] | None,
                   defaults: dict[str, object]) -> list[MetricCheck]:
        """The marker's checks with names resolved; None means every metric of the task."""
        if checks is None:
            from .spec import parse_checks

            checks = parse_checks(sorted(result.metrics), defaults, result.task) or []
        return [MetricCheck(result.resolve_metric(c.metric), c.min, c.max, c.tolerance)
                for c in checks]


def baseline_from_result(result: EvalResult) -> Baseline:
    spec = result.spec
    settings = {k: v for k, v in asdict(spec).items() if k not in ("seeds", "baseline_name")}
    settings["model_args"] = result.provenance.get("model", {}).get("model_args", "")
    return Baseline(
        name=spec.baseline_name, task=spec.task,
        metrics={m: {"value": v, "stderr": result.stderr.get(m),
                     "higher_is_better": result.higher_is_better.get(m, True)}
                 for m, v in sorted(result.metrics.items())},
        fingerprint=result.fingerprint, n_samples=result.n_samples, settings=settings,
        provenance=result.provenance, samples=result.samples,
    )
