"""The ``modelreg`` fixture object and the marker's checks, both writing verdicts onto the test
item's ``user_properties`` so they reach the controller under xdist (as junitxml's do)."""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from .errors import CheckFailed
from .results import EvalResult
from .session import ModelregSession
from .spec import EvalSpec, MetricCheck, build_spec
from .verdict import Verdict

VERDICT_PROPERTY = "modelreg_verdict"
EVALUATION_PROPERTY = "modelreg_evaluation"


def record_hint(nodeid: str) -> str:
    return f"pytest --modelreg-update {shlex.quote(nodeid)}"


def note_evaluation(item: Any, result: EvalResult, fresh: bool) -> None:
    item.user_properties.append((EVALUATION_PROPERTY, {
        "task": result.task,
        "model": result.spec.model,
        "model_args": result.provenance.get("model", {}).get("model_args", ""),
        "baseline": result.spec.baseline_name,
        "n_samples": result.n_samples,
        "seconds": round(result.seconds, 3),
        "model_load_seconds": round(result.model_load_seconds, 3),
        "fresh": fresh,
    }))


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

    def evaluate(self, task: str, **settings: Any) -> EvalResult:
        result, fresh = self._session.evaluate(self.spec(task, **settings))
        note_evaluation(self._item, result, fresh)
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
        note_evaluation(item, result, fresh)
        for check in session.checks_for(result, checks, defaults):
            verdict = session.judge(result, check, record_hint(item.nodeid))
            note_verdict(item, verdict)
            if verdict.failed:
                failures.append(f"{result.task}: {verdict.message}")
    if failures:
        raise CheckFailed("\n".join(failures))
