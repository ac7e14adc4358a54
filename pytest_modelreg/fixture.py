"""The ``modelreg`` fixture object and the marker's checks, both writing verdicts onto the test
item's ``user_properties`` so they reach the controller under xdist (as junitxml's do)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

from .baselines import safe_name
from .errors import CheckFailed
from .properties import EVALUATION_PROPERTY, TEST_PROPERTY, VERDICT_PROPERTY
from .results import EvalResult, samples_jsonl
from .session import ModelregSession
from .spec import EvalSpec, MetricCheck, build_spec, function_name, short_hash, spec_record
from .verdict import Verdict

__all__ = ["EVALUATION_PROPERTY", "TEST_PROPERTY", "VERDICT_PROPERTY", "ModelregFixture",
           "run_marker_checks"]


def record_hint(nodeid: str) -> str:
    return f"pytest --modelreg-update {shlex.quote(nodeid)}"



def evaluation_summary(result: EvalResult, fresh: bool, artifact_dir: Path | None
                       ) -> dict[str, Any]:
    """What the controller needs to log an evaluation: small, plain and picklable."""
    spec, provenance = result.spec, result.provenance
    settings = {k: v for k, v in dataclasses.asdict(spec).items()
                if k not in ("task", "model", "model_args", "baseline_name", "seeds", "evaluator")}
    if spec.evaluator is not None:
        settings["evaluator"] = function_name(spec.evaluator)
    settings.update(spec.seed_dict())
    settings["device"] = provenance.get("hardware", {}).get("device", spec.device)
    settings["batch_size_used"] = str(provenance.get("batch_size", spec.batch_size))
    return {
        "task": result.task,
        "model": spec.model,
        "model_args": provenance.get("model", {}).get("model_args", ""),
        "model_sha256": provenance.get("model", {}).get("sha256", ""),
        "baseline": spec.baseline_name,
        "n_samples": result.n_samples,
        "seconds": round(result.seconds if fresh else 0.0, 3),
        "model_load_seconds": round(result.model_load_seconds if fresh else 0.0, 3),
        "fresh": fresh,
        "cached": result.cached,
        "cache_key": result.cache_key,
        "spec": spec_record(spec),
        "cached_from": provenance.get("cached_from", {}),
        "settings": {k: "default" if v is None else str(v) for k, v in settings.items()},
        "versions": provenance.get("versions", {}),
        "hardware": {k: str(v) for k, v in provenance.get("hardware", {}).items()},
        "artifacts": write_artifacts(result, artifact_dir) if artifact_dir else {},
    }


def write_artifacts(result: EvalResult, folder: Path) -> dict[str, str]:
    """lm-eval's results JSON and the per-sample outcomes, once per evaluation."""
    target = folder / f"{safe_name(result.spec.baseline_name)}-{short_hash(result.spec)}"
    files = {"results.json": target / "results.json", "samples.jsonl": target / "samples.jsonl"}
    if not files["results.json"].exists():
        target.mkdir(parents=True, exist_ok=True)
        files["samples.jsonl"].write_text(samples_jsonl(result.samples))
        files["results.json"].write_text(json.dumps(result.raw, indent=2, default=str))
    return {name: str(path) for name, path in files.items()}


def note_evaluation(item: Any, result: EvalResult, fresh: bool,
                    artifact_dir: Path | None = None) -> None:
    item.user_properties.append((EVALUATION_PROPERTY,
                                 evaluation_summary(result, fresh, artifact_dir)))


def note_verdict(item: Any, verdict: Verdict) -> None:
    item.user_properties.append((VERDICT_PROPERTY, verdict.to_dict()))


class ModelregFixture:
    """``modelreg.evaluate(task, **settings)`` evaluates a task on the session's model (or the
    one given) and returns a result whose ``check``/``check_baseline`` fail the test."""

    def __init__(self, session: ModelregSession, item: Any) -> None:
        self._session = session
        self._item = item

    @property
    def settings(self) -> Any:
        return self._session.settings

    def spec(self, task: str, **settings: Any) -> EvalSpec:
        return build_spec(task, settings, self._session.settings,
                          f"{self._item.nodeid}: modelreg.evaluate")

    def require_gpu(self, min_memory: float | str | None = None) -> None:
        """Skip the test, saying why, unless a CUDA GPU (with ``min_memory``, e.g. "40GB") is
        visible: the fixture's form of the marker's ``gpu=True`` / ``min_gpu_memory=``."""
        import pytest

        from .gpus import parse_memory, unmet_gpu_requirement

        where = f"{self._item.nodeid}: modelreg.require_gpu"
        least = None if min_memory is None else parse_memory(min_memory, where)
        if (reason := unmet_gpu_requirement(True, least)) is not None:
            pytest.skip(f"modelreg: {reason}")

    def evaluate(self, task: str, **settings: Any) -> EvalResult:
        result, fresh = self._session.evaluate(self.spec(task, **settings))
        note_evaluation(self._item, result, fresh, self._session.artifact_dir)
        hint = record_hint(self._item.nodeid)

        def judge(res: EvalResult, check: MetricCheck) -> Verdict:
            return self._session.judge(res, check, hint)

        # A copy: the cached result is shared with other tests and must not carry this one's hooks.
        return dataclasses.replace(result, baseline_judge=judge,
                                   recorder=lambda v: note_verdict(self._item, v))


def run_marker_checks(session: ModelregSession, item: Any,
                      parsed: list[tuple[EvalSpec, list[MetricCheck] | None, dict[str, object]]]
                      ) -> None:
    """Evaluate each marker's task and check every metric; all failures in one message."""
    failures = []
    for spec, checks, defaults in parsed:
        result, fresh = session.evaluate(spec)
        note_evaluation(item, result, fresh, session.artifact_dir)
        for check in session.checks_for(result, checks, defaults):
            verdict = session.judge(result, check, record_hint(item.nodeid))
            note_verdict(item, verdict)
            if verdict.failed:
                failures.append(f"{result.task}: {verdict.message}")
    if failures:
        raise CheckFailed("\n".join(failures))
