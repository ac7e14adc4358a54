"""The session object without pytest or lm-eval: an evaluator that returns fixed outcomes."""

from __future__ import annotations

from pathlib import Path

from pytest_modelreg.results import EvalResult, SampleOutcome
from pytest_modelreg.session import ModelregSession, subtask_clusters, write_pending_baselines
from pytest_modelreg.settings import Settings
from pytest_modelreg.spec import EvalSpec, MetricCheck


class FixedEvaluator:
    """Stands in for lm-eval: outcome i of ``outcomes`` is doc i's accuracy."""

    def __init__(self, outcomes: list[float]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def evaluate(self, spec: EvalSpec) -> EvalResult:
        self.calls += 1
        samples = [SampleOutcome(f"s{i % 12}/{i}", f"d{i}", f"p{i}", "t", {"acc": v})
                   for i, v in enumerate(self.outcomes)]
        mean = sum(self.outcomes) / len(self.outcomes)
        return EvalResult(spec=spec, metrics={"acc": mean}, stderr={"acc": 0.01},
                          higher_is_better={"acc": True}, samples=samples,
                          fingerprint={"docs": "x"}, provenance={}, n_samples=len(samples))

    def close(self) -> None:
        pass


def session(tmp_path: Path, outcomes: list[float], **settings: object) -> tuple:
    evaluator = FixedEvaluator(outcomes)
    made = ModelregSession(Settings(baseline_dir=tmp_path, **settings),  # type: ignore[arg-type]
                           evaluator_factory=lambda s, p, c: evaluator)
    return made, evaluator


SPEC = EvalSpec(task="t", model="hf", model_args="", baseline_name="t")


def record(made: ModelregSession) -> None:
    """What the plugin does when the test ends cleanly and then the session."""
    made.end_test(True)
    assert made.pending_dir is not None
    assert write_pending_baselines(made.pending_dir.parent, made.store, False) == (
        ["t"], [], False)


def test_shared_evaluation_and_paired_verdicts(tmp_path: Path):
    good = [1.0] * 200
    recorder, _ = session(tmp_path, good, update=True)
    result, fresh = recorder.evaluate(SPEC)
    assert fresh and recorder.evaluate(SPEC) == (result, False)
    assert recorder.judge(result, MetricCheck("acc"), "hint").verdict == "recorded"
    record(recorder)

    worse, evaluator = session(tmp_path, [0.0] * 30 + [1.0] * 170)
    result, _ = worse.evaluate(SPEC)
    verdict = worse.judge(result, MetricCheck("acc"), "hint")
    assert verdict.verdict == "regressed" and verdict.method == "paired-clustered"
    assert verdict.p_value is not None and verdict.p_value < 1e-6
    assert "worse on 30 docs, e.g. doc ids s0/0, s1/1" in verdict.message
    assert evaluator.calls == 1

    few, _ = session(tmp_path, [0.0] * 2 + [1.0] * 198)
    result, _ = few.evaluate(SPEC)
    assert few.judge(result, MetricCheck("acc"), "hint").verdict == "inconclusive"
    strict, _ = session(tmp_path, [0.0] * 2 + [1.0] * 198, strict=True)
    result, _ = strict.evaluate(SPEC)
    assert strict.judge(result, MetricCheck("acc"), "hint").failed


def test_subtask_clusters():
    samples = [SampleOutcome(f"s{i % 2}/{i}", f"d{i}", "p", "t", {}) for i in range(4)]
    assert subtask_clusters(samples) == {"d0:p:t": "s0", "d1:p:t": "s1", "d2:p:t": "s0",
                                         "d3:p:t": "s1"}
    assert subtask_clusters([SampleOutcome(1, "d", "p", "t", {})]) is None


def test_suspicious_gain_fails(tmp_path: Path):
    recorder, _ = session(tmp_path, [0.0] * 100 + [1.0] * 100, update=True)
    result, _ = recorder.evaluate(SPEC)
    recorder.judge(result, MetricCheck("acc"), "hint")
    record(recorder)
    better, _ = session(tmp_path, [1.0] * 200)
    result, _ = better.evaluate(SPEC)
    assert better.judge(result, MetricCheck("acc"), "hint").verdict == "pass"
    verdict = better.judge(result, MetricCheck("acc", max_gain=0.1), "hint")
    assert verdict.verdict == "suspicious gain" and verdict.failed
