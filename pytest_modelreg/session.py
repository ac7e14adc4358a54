"""The session object: evaluations shared between tests, baselines, verdicts.

One instance lives in ``config.stash``; it never sees pytest objects, so it is tested alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .baselines import Baseline, BaselineStore, PendingBaselines
from .cache import ResultCache
from .errors import BaselineError, ModelregError
from .fingerprint import diff_fingerprints
from .results import EvalResult, SampleOutcome, doc_changes, non_finite_samples
from .runner import Evaluator, NullProgress, Progress
from .settings import Settings
from .spec import EvalSpec, MetricCheck, function_name
from .verdict import (
    CANNOT_COMPARE,
    INCONCLUSIVE,
    PASS,
    REGRESSED,
    SUSPICIOUS_GAIN,
    Verdict,
    finite_or_none,
    fmt,
    judge_metric,
    not_finite_message,
)

if TYPE_CHECKING:  # scipy-backed statistics load when the first comparison is made
    from .stats import Comparison

EvaluatorFactory = Callable[[Settings, Progress, "ResultCache | None"], Evaluator]
BOOTSTRAP_RESAMPLES = 10_000


def lm_eval_factory(settings: Settings, progress: Progress, cache: ResultCache | None
                    ) -> Evaluator:
    from .runner.lm_eval_runner import LmEvalRunner

    return LmEvalRunner(settings.include_paths, settings.rootdir, progress, cache)


class ModelregSession:
    def __init__(self, settings: Settings, *, progress: Progress | None = None,
                 evaluator_factory: EvaluatorFactory = lm_eval_factory,
                 default_cache_dir: Callable[[], Path] | None = None) -> None:
        self.settings = settings
        self._default_cache_dir = default_cache_dir
        self.store = BaselineStore(settings.baseline_dir)
        self.progress: Progress = progress or NullProgress()
        self._factory = evaluator_factory
        self._evaluator: Evaluator | None = None
        self._function_evaluator: Evaluator | None = None  # for spec.evaluator (custom.py)
        self._results: dict[EvalSpec, EvalResult | ModelregError] = {}
        self._baselines: dict[str, Baseline | None] = {}
        self._fingerprints: dict[str, dict[str, object]] = {}  # baseline name -> claimed by
        self.recorded: set[str] = set()  # baseline names recorded in this session
        # Recording is staged: a test's baselines are approved when it ends cleanly
        # (end_test), wait in pending_dir, and are written when the session ends, unless it
        # was interrupted (see write_pending_baselines).
        self._staged: dict[str, Baseline] = {}
        self.pending_dir: Path | None = None  # set by the plugin; a temp folder otherwise
        self._withheld: set[str] = set()  # inconclusive updates: not written this session
        self.not_updated: list[tuple[str, str]] = []  # (baseline name, why)
        self.artifact_dir: Path | None = None  # set by the plugin when a tracker wants files
        self.planned_checks = 1  # baseline checks in the session, counted at collection

    @property
    def test_alpha(self) -> float:
        """The level each check is decided at while the session runs.

        With Holm, a check whose p-value is below alpha/m is a rejection whatever the other
        p-values are (it passes Holm's first step), so deciding at alpha/m never rejects more
        than Holm would; the full step-down is applied to all p-values in the summary.
        """
        if self.settings.correction == "holm":
            return self.settings.alpha / max(self.planned_checks, 1)
        return self.settings.alpha

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = self._factory(self.settings, self.progress, self.result_cache())
        return self._evaluator

    def cache_dir(self) -> Path | None:
        """Where results are cached: the option, else pytest's cache folder; None when off."""
        if not self.settings.cache:
            return None
        return self.state_dir()

    def state_dir(self) -> Path | None:
        """The cache folder, also with the cache off: the session manifest lives there."""
        if self.settings.cache_dir is not None:
            return self.settings.cache_dir
        return self._default_cache_dir() if self._default_cache_dir is not None else None

    def result_cache(self) -> ResultCache | None:
        folder = self.cache_dir()
        return None if folder is None else ResultCache(folder, self.settings.cache_endpoints)

    def close(self) -> None:
        for evaluator in (self._evaluator, self._function_evaluator):
            if evaluator is not None:
                evaluator.close()
        self._evaluator = self._function_evaluator = None

    # -- evaluations -----------------------------------------------------------------------
    def evaluate(self, spec: EvalSpec) -> tuple[EvalResult, bool]:
        """The result for ``spec`` and whether it was computed now (False: shared)."""
        if spec in self._results:
            cached = self._results[spec]
            if isinstance(cached, ModelregError):
                raise cached
            return cached, False
        try:
            result = self._evaluate_now(spec)
        except ModelregError as exc:
            self._results[spec] = exc
            raise
        self._results[spec] = result
        return result, True

    def _evaluate_now(self, spec: EvalSpec) -> EvalResult:
        if spec.evaluator is not None:  # the user's own function, not lm-eval
            if self._function_evaluator is None:
                from .custom import FunctionEvaluator

                self._function_evaluator = FunctionEvaluator(self.settings, self.progress,
                                                             self.result_cache())
            return self._function_evaluator.evaluate(spec)
        return self.evaluator.evaluate(spec)

    def _claim_baseline_name(self, result: EvalResult) -> None:
        """Two evaluations with different settings must not share one baseline file."""
        name = result.spec.baseline_name
        claimed = self._fingerprints.setdefault(name, result.fingerprint)
        if claimed != result.fingerprint:
            differences = "; ".join(diff_fingerprints(claimed, result.fingerprint))
            raise ModelregError(
                f"baseline {name!r} is used by two evaluations with different settings "
                f"({differences}); give one of them its own name with baseline='...'")

    # -- baselines -------------------------------------------------------------------------
    def _should_record(self, name: str) -> bool:
        if name in self._withheld:
            return False
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
        """Stage ``result`` as its baseline (judge has refused non-finite values already)."""
        name = result.spec.baseline_name
        self.baseline(name)  # keep the old values for the deltas shown in this session
        self._staged[name] = baseline_from_result(result)
        self.recorded.add(name)

    def end_test(self, completed: bool, why: str = "") -> None:
        """The running test ended. Its recorded baselines are approved when it completed
        (passed, or failed only modelreg's own checks); otherwise the old ones stay."""
        if completed and self._staged:
            pending = PendingBaselines(self._pending_dir())
            for name, baseline in self._staged.items():
                pending.add(baseline, self.store.read_digests.get(name))
        elif not completed:
            self.not_updated.extend((name, why) for name in self._staged)
            self.recorded.difference_update(self._staged)  # a later test may record it
        self._staged.clear()

    def _pending_dir(self) -> Path:
        if self.pending_dir is None:
            import tempfile

            self.pending_dir = Path(tempfile.mkdtemp(prefix="modelreg-pending-")) / "main"
        return self.pending_dir

    def not_updated_lines(self) -> list[str]:
        return [f"baseline {name} was not updated: {why}" for name, why in self.not_updated]

    # -- verdicts --------------------------------------------------------------------------
    def judge(self, result: EvalResult, check: MetricCheck, record_hint: str) -> Verdict:
        """The verdict of one metric against its baseline, recording the baseline first when
        asked to (--modelreg-update, or --modelreg-record-missing and none exists)."""
        name = result.spec.baseline_name
        self._claim_baseline_name(result)
        baseline = self.baseline(name)
        if name not in self.recorded and self._should_record(name):
            if (problem := result.invalid()) is not None:  # NaN anywhere: never a baseline
                raise ModelregError(f"{result.task}: {problem}, not a valid number; the baseline "
                                    "was not recorded")
            self._record(result)
        recorded_now = name in self.recorded and name not in self._withheld
        if recorded_now and baseline is not None \
                and self._withhold_if_inconclusive(result, baseline, check):
            recorded_now = False  # judged against the old baseline, which stays
        invalid = None if (problem := result.invalid(check.metric)) is None \
            else not_finite_message(problem)
        mismatch, changes = None, None
        if baseline is not None and not recorded_now:
            mismatch = diff_fingerprints(baseline.fingerprint, result.fingerprint) or None
            changes = doc_changes(baseline.samples, result.samples)
            if invalid is None and (bad := non_finite_samples(baseline.samples,
                                                              check.metric)) is not None:
                invalid = (f"the baseline of {name} is damaged: {bad}; re-record it with "
                           f"{record_hint}")
        docs_differ = changes.summary() if changes is not None and changes.differ else None
        comparison = None
        if baseline is not None and not recorded_now and not mismatch and not docs_differ \
                and invalid is None and baseline.value(check.metric) is not None:
            comparison = compare_with_baseline(result, baseline, check, self.test_alpha)
        verdict = judge_metric(
            result.task, check, result.metrics[check.metric],
            baseline=None if baseline is None else baseline.value(check.metric),
            mismatch=mismatch, update=recorded_now, record_hint=record_hint,
            compared=None if comparison is None else describe(comparison, result, baseline, check,
                                                             self.test_alpha),
            strict=self.settings.strict, invalid=invalid, docs_differ=docs_differ)
        verdict = replace(verdict, stderr=finite_or_none(result.stderr.get(check.metric)))
        if comparison is not None:
            verdict = replace(verdict, ci_low=finite_or_none(comparison.ci[0]),
                              ci_high=finite_or_none(comparison.ci[1]),
                              p_value=finite_or_none(comparison.p_value), n=comparison.n,
                              mde=finite_or_none(comparison.mde),
                              method=comparison.method, underpowered=comparison.underpowered,
                              docs_needed=comparison.docs_needed)
            if verdict.verdict == REGRESSED and comparison.paired and baseline is not None:
                verdict = replace(verdict, flipped=worse_samples(result, baseline, check.metric))
        return verdict

    def _withhold_if_inconclusive(self, result: EvalResult, baseline: Baseline,
                                  check: MetricCheck) -> bool:
        """--modelreg-update first compares with the old baseline: an inconclusive difference is
        no evidence of a change, and accepting one after another would let a baseline drift down
        unnoticed, so the old baseline stays (``baselines accept`` records it anyway)."""
        changes = doc_changes(baseline.samples, result.samples)
        if diff_fingerprints(baseline.fingerprint, result.fingerprint) \
                or (changes is not None and changes.differ) \
                or baseline.value(check.metric) is None or result.invalid(check.metric):
            return False  # re-recording under new settings or data is what the update is for
        try:
            comparison = compare_with_baseline(result, baseline, check, self.test_alpha)
        except ValueError:
            return False
        if comparison.verdict != "inconclusive":
            return False
        name = result.spec.baseline_name
        self._staged.pop(name, None)
        self._withheld.add(name)
        if self.pending_dir is not None:  # approved by an earlier test of this session
            PendingBaselines(self.pending_dir).discard(name)
        self.not_updated.append((name, (
            f"{check.metric} differs from the old baseline by an inconclusive amount "
            f"({comparison.summary()}); evaluate more docs, or accept it anyway with: "
            f"pytest-modelreg baselines accept {name}")))
        return True

    def checks_for(self, result: EvalResult, checks: list[MetricCheck] | None,
                   defaults: dict[str, object]) -> list[MetricCheck]:
        """The marker's checks with names resolved; None means every metric of the task."""
        if checks is None:
            from .spec import parse_checks

            checks = parse_checks(sorted(result.metrics), defaults, result.task) or []
        return [MetricCheck(result.resolve_metric(c.metric), c.min, c.max, c.tolerance, c.max_gain)
                for c in checks]


def write_pending_baselines(root: Path, store: BaselineStore, interrupted: bool
                            ) -> tuple[list[str], list[str], bool]:
    """At the session's end: write the approved baselines of every process (none when the
    session was interrupted). Returns the names written, the summary lines for the others,
    and whether a write was refused. ``root`` is removed unless something is left in it."""
    import shutil

    if interrupted:
        names = PendingBaselines.names_under(root)
        shutil.rmtree(root, ignore_errors=True)
        return [], ([f"{len(names)} baseline(s) not written because the session was "
                     f"interrupted: {', '.join(names)}; nothing was changed"] if names else []), False
    written, refusals, safe = PendingBaselines.commit_all(root, store)
    if safe:
        shutil.rmtree(root, ignore_errors=True)
    return written, refusals, bool(refusals)


def baseline_from_result(result: EvalResult) -> Baseline:
    spec = result.spec
    settings = {k: v for k, v in asdict(spec).items()
                if k not in ("seeds", "baseline_name", "evaluator")}
    if spec.evaluator is not None:
        settings["evaluator"] = function_name(spec.evaluator)
    settings["model_args"] = result.provenance.get("model", {}).get("model_args", "")
    return Baseline(
        name=spec.baseline_name, task=spec.task,
        metrics={m: {"value": v, "stderr": result.stderr.get(m),
                     "higher_is_better": result.higher_is_better.get(m, True)}
                 for m, v in sorted(result.metrics.items())},
        fingerprint=result.fingerprint, n_samples=result.n_samples, settings=settings,
        provenance=result.provenance, samples=result.samples,
    )


def doc_key(sample: SampleOutcome) -> str:
    """Docs are joined on their content (doc, prompt and target), not on their id alone."""
    return f"{sample.doc_hash}:{sample.prompt_hash}:{sample.target_hash}"


def compare_with_baseline(result: EvalResult, baseline: Baseline, check: MetricCheck,
                          alpha: float) -> Comparison:
    """Paired on the same docs when both sides have per-sample values whose mean is the metric;
    otherwise unpaired on the aggregates and their standard errors."""
    from .stats import compare_aggregates, compare_samples

    metric = check.metric
    higher = result.higher_is_better.get(metric, True)
    base_value = baseline.value(metric) or 0.0
    tolerance = check.tolerance.allowed_drop(base_value)
    aggregate = result.aggregators.get(metric)
    if aggregate is not None:  # a corpus metric (F1, MCC, BLEU): paired bootstrap over docs
        base_items = {doc_key(s): s.items[metric] for s in baseline.samples or []
                      if metric in s.items}
        cand_items = {doc_key(s): s.items[metric] for s in result.samples if metric in s.items}
        if set(base_items) & set(cand_items):
            return compare_samples(base_items, cand_items, higher_is_better=higher,
                                   tolerance=tolerance, alpha=alpha, max_gain=check.max_gain,
                                   aggregate=lambda items: float(aggregate(list(items))),
                                   resamples=BOOTSTRAP_RESAMPLES, seed=0)
    base = {doc_key(s): s.values[metric] for s in baseline.samples or [] if metric in s.values}
    cand = {doc_key(s): s.values[metric] for s in result.samples if metric in s.values}
    if base and cand and _is_mean_of(cand, result.metrics[metric]) \
            and _is_mean_of(base, base_value) and set(base) & set(cand):
        return compare_samples(base, cand, higher_is_better=higher, tolerance=tolerance,
                               alpha=alpha, clusters=subtask_clusters(result.samples),
                               max_gain=check.max_gain)
    # Aggregates only (lm-eval's stderr, "N/A" with bootstrap_iters=0, is None): a clear
    # "cannot compare" when either side has no standard error; n = 0 is an unknown n.
    return compare_aggregates(base_value, baseline.metrics[metric].get("stderr"),
                              result.metrics[metric], result.stderr.get(metric),
                              n=result.n_samples if result.n_samples >= 1 else None,
                              higher_is_better=higher, tolerance=tolerance, alpha=alpha,
                              max_gain=check.max_gain)


def subtask_clusters(samples: list[SampleOutcome]) -> dict[str, str] | None:
    """Docs of a group task (MMLU subjects, say) are clustered by subtask: ``subtask/doc_id``."""
    clusters = {doc_key(s): str(s.doc_id).rsplit("/", 1)[0] for s in samples
                if isinstance(s.doc_id, str) and "/" in s.doc_id}
    return clusters if len(set(clusters.values())) > 1 else None


def _is_mean_of(values: dict[str, float], aggregate: float) -> bool:
    """Corpus metrics (BLEU, F1) are not the mean of their per-sample values."""
    return abs(sum(values.values()) / len(values) - aggregate) < 1e-9


_VERDICTS = {"pass": PASS, "regressed": REGRESSED, "inconclusive": INCONCLUSIVE,
             "suspicious gain": SUSPICIOUS_GAIN, "cannot compare": CANNOT_COMPARE}


def describe(comparison: Comparison, result: EvalResult, baseline: Baseline,
             check: MetricCheck, alpha: float) -> tuple[str, str]:
    """(verdict, sentence) for the table and the failure message."""
    metric = check.metric
    verdict = _VERDICTS[comparison.verdict]
    before, after = baseline.value(metric) or 0.0, result.metrics[metric]
    details = comparison.summary().removeprefix(f"{comparison.verdict}: ")
    text = f"{metric} {fmt(before)} -> {fmt(after)}: {details}"
    if verdict == REGRESSED:
        direction = "fell" if result.higher_is_better.get(metric, True) else "rose"
        text = (f"{metric} {direction} from {fmt(before)} to {fmt(after)}, more than the tolerated "
                f"{check.tolerance} at alpha={alpha:g}: {details}")
        text += flipped_samples(result, baseline, metric)
    elif verdict == INCONCLUSIVE:
        text += ("; too few docs to tell a drop from noise: evaluate more docs or set a "
                 "tolerance (--modelreg-strict fails on this)")
    same_model = baseline.provenance.get("model", {}).get("sha256")
    if same_model and same_model == result.provenance.get("model", {}).get("sha256") \
            and comparison.discordant and sum(comparison.discordant):
        text += ("; the model's weights are unchanged yet samples flipped: the evaluation is "
                 "nondeterministic here")
    return verdict, text


def worse_samples(result: EvalResult, baseline: Baseline, metric: str) -> list[dict[str, object]]:
    """Every doc (joined on content) whose value got worse: right before, wrong now."""
    before = {doc_key(s): s.values.get(metric) for s in baseline.samples or []}
    higher = result.higher_is_better.get(metric, True)
    return [{"doc_id": s.doc_id, "prompt": s.prompt, "before": old, "after": s.values[metric]}
            for s in result.samples
            if (old := before.get(doc_key(s))) is not None and metric in s.values
            and (s.values[metric] < old if higher else s.values[metric] > old)]


def flipped_samples(result: EvalResult, baseline: Baseline, metric: str, shown: int = 5) -> str:
    """A few docs that were right in the baseline and are wrong now (all go to the reports)."""
    worse = worse_samples(result, baseline, metric)
    if not worse:
        return ""
    listed = ", ".join(f"{w['doc_id']} ({w['prompt']!r})" if w["prompt"] else str(w["doc_id"])
                       for w in worse[:shown])
    return f"; worse on {len(worse)} docs, e.g. doc ids {listed}"


def count_planned_checks(tests: Iterable[tuple[list[object], bool]]) -> int:
    """The session's baseline checks, from each test's marker ``metrics`` and fixture use.

    A marker without ``metrics=`` counts one check per marker and a fixture test one, as the
    task's metrics are only known once it has run.
    """
    total = 0
    for markers, uses_fixture in tests:
        for metrics in markers:
            total += len(metrics) if isinstance(metrics, (list, tuple, dict)) and metrics else 1
        if uses_fixture and not markers:
            total += 1
    return max(total, 1)
