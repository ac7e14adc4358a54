"""Issue 7, evaluation faults: NaN metrics (9), data or prompt changed under the baseline (12),
no standard error / n = 1 (13) and degenerate statistics (15). Unit tests on constructed
results, then end to end on the tiny world and a user's evaluator function."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelreg.baselines import Baseline, BaselineStore
from pytest_modelreg.errors import CheckFailed, ModelregError
from pytest_modelreg.results import EvalResult, SampleOutcome, doc_changes
from pytest_modelreg.session import ModelregSession
from pytest_modelreg.settings import Settings
from pytest_modelreg.spec import EvalSpec, MetricCheck
from pytest_modelreg.stats import (
    CANNOT_COMPARE,
    INCONCLUSIVE,
    PAIRED_EXACT,
    PASS,
    REGRESSED,
    VERDICTS,
    compare_samples,
)
from pytest_modelreg.verdict import INCOMPARABLE, INVALID, Verdict
from tests.conftest import TinyWorld, dedent
from tests.test_bad_input import failure_section

SPEC = EvalSpec(task="t", model="hf", model_args="", baseline_name="t")
HINT = "pytest --modelreg-update x"


def samples(values: list[float], *, text: str = "d", prompt: str = "p") -> list[SampleOutcome]:
    return [SampleOutcome(i, f"{text}{i}", f"{prompt}{i}", "t", {"acc": v})
            for i, v in enumerate(values)]


def result(values: list[float], *, metric: float | None = None, stderr: float | None = 0.05,
           with_samples: bool = True, **hashes: str) -> EvalResult:
    outcomes = samples(values, **hashes)
    mean = math.fsum(values) / len(values) if values else math.nan
    return EvalResult(spec=SPEC, metrics={"acc": mean if metric is None else metric},
                      stderr={"acc": stderr}, higher_is_better={"acc": True},
                      samples=outcomes if with_samples else [], fingerprint={"limit": None},
                      provenance={}, n_samples=len(values))


def save_baseline(folder: Path, values: list[float], *, stderr: float | None = 0.05,
                  with_samples: bool = True, value: float | None = None, **hashes: str) -> None:
    mean = math.fsum(values) / len(values) if value is None else value
    BaselineStore(folder).save(Baseline(
        name="t", task="t", fingerprint={"limit": None}, n_samples=len(values),
        metrics={"acc": {"value": mean, "stderr": stderr, "higher_is_better": True}},
        samples=samples(values, **hashes) if with_samples else None))


def judge(folder: Path, current: EvalResult, **options: object) -> Verdict:
    made = ModelregSession(Settings(baseline_dir=folder, **options))  # type: ignore[arg-type]
    return made.judge(current, MetricCheck("acc"), HINT)


# -- 9: NaN or infinite metrics -------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_nan_metric_is_invalid_against_a_baseline(tmp_path: Path, value: float):
    save_baseline(tmp_path, [1.0] * 10)
    verdict = judge(tmp_path, result([1.0] * 10, metric=value))
    assert verdict.verdict == INVALID and verdict.failed
    assert f"acc is {value}" in verdict.message and "never a pass" in verdict.message
    assert verdict.to_dict()["delta"] is None


def test_a_nan_metric_is_never_recorded(tmp_path: Path):
    for options in ({"update": True}, {"record_missing": True}):
        made = ModelregSession(Settings(baseline_dir=tmp_path, **options))  # type: ignore[arg-type]
        with pytest.raises(ModelregError, match=r"^t: acc is nan, not a valid number; the "
                                                r"baseline was not recorded$"):
            made.judge(result([1.0, math.nan]), MetricCheck("acc"), HINT)
        assert not made.recorded
    assert not list(tmp_path.rglob("*.json"))


def test_a_nan_per_sample_value_under_a_finite_metric_is_never_recorded(tmp_path: Path):
    made = ModelregSession(Settings(baseline_dir=tmp_path, update=True))
    with pytest.raises(ModelregError, match=r"acc is nan on 1 of 3 docs \(e\.g\. doc id 2\)"):
        made.judge(result([1.0, 1.0, math.nan], metric=1.0), MetricCheck("acc"), HINT)


def test_a_nan_per_sample_value_on_the_comparison_path_is_invalid(tmp_path: Path):
    # The user's evaluator gave the metric itself (finite) and a NaN outcome on one doc: no
    # unpaired fallback on the aggregate, an invalid verdict naming the doc.
    save_baseline(tmp_path, [1.0] * 10)
    verdict = judge(tmp_path, result([1.0] * 9 + [math.nan], metric=1.0))
    assert verdict.verdict == INVALID and verdict.failed
    assert "acc is nan on 1 of 10 docs (e.g. doc id 9)" in verdict.message


def test_a_baseline_with_a_nan_per_sample_value_is_invalid_not_a_crash(tmp_path: Path):
    save_baseline(tmp_path, [1.0] * 9 + [math.inf], value=1.0)
    verdict = judge(tmp_path, result([1.0] * 10))
    assert verdict.verdict == INVALID and verdict.failed
    assert "the baseline of t is damaged: acc is inf on 1 of 10 docs" in verdict.message
    assert HINT in verdict.message


@pytest.mark.parametrize("bounds", [{}, {"min": 0.5}, {"max": 0.5}])
def test_check_never_passes_a_nan_metric(bounds: dict[str, float]):
    recorded: list[Verdict] = []
    nan = result([1.0, math.nan])
    nan.recorder = recorded.append
    with pytest.raises(CheckFailed, match=r"^t: acc is nan; a NaN or infinite metric is never"):
        nan.check("acc", **bounds)
    assert [v.verdict for v in recorded] == [INVALID]


def test_verdict_dicts_hold_no_nan_statistics():
    verdict = Verdict("t", "acc", "cannot compare", 0.5, 0.5, 0.0, "x", ci_low=math.nan,
                      ci_high=math.nan, p_value=math.nan, mde=math.inf, stderr=math.nan)
    data = verdict.to_dict()
    assert [data[k] for k in ("ci_low", "ci_high", "p_value", "mde", "stderr")] == [None] * 5
    json.dumps(data, allow_nan=False)  # strict JSON


# -- 12: data or prompt changed under the baseline ------------------------------------------


def test_doc_changes_are_counted_by_doc_id():
    before = samples([1.0] * 6)
    after = [*samples([1.0] * 2),  # unchanged 0, 1
             SampleOutcome(2, "other", "p2", "t", {"acc": 1.0}),  # changed text
             SampleOutcome(3, "d3", "other", "t", {"acc": 1.0}),  # changed prompt
             SampleOutcome(4, "d4", "p4", "other", {"acc": 1.0}),  # changed target: prompt
             SampleOutcome(9, "d9", "p9", "t", {"acc": 1.0})]  # new; 5 is missing
    changes = doc_changes(before, after)
    assert changes is not None
    assert changes.summary() == ("5 of 7 docs differ from the baseline: 1 changed text, "
                                 "2 changed prompt, 1 new, 1 missing")
    assert doc_changes(before, samples([0.0] * 6)).differ == 0  # outcomes are no change
    assert doc_changes(None, after) is None
    no_hash = [SampleOutcome(0, "", "", "", {"acc": 1.0})]
    assert doc_changes(no_hash, after) is None


def test_changed_docs_are_incomparable_not_an_unpaired_comparison(tmp_path: Path):
    # Same fingerprint (a baseline that predates the doc hashes in it), other docs: before,
    # the docs did not overlap and the aggregates were compared unpaired.
    save_baseline(tmp_path, [1.0] * 60)
    current = samples([1.0] * 60)
    current[:10] = samples([1.0] * 10, text="new")
    current[10:12] = samples([1.0] * 12, prompt="new")[10:12]
    changed = result([1.0] * 60)
    changed.samples = current
    verdict = judge(tmp_path, changed)
    assert verdict.verdict == INCOMPARABLE and verdict.failed and verdict.method is None
    assert verdict.message == (
        "12 of 60 docs differ from the baseline: 10 changed text, 2 changed prompt, 0 new, "
        f"0 missing; re-record it with {HINT} if the change is intended")


def test_a_fingerprint_mismatch_also_counts_the_docs(tmp_path: Path):
    save_baseline(tmp_path, [1.0] * 20)
    longer = result([1.0] * 30)
    longer.fingerprint = {"limit": 30}
    verdict = judge(tmp_path, longer)
    assert verdict.verdict == INCOMPARABLE
    assert ("recorded under other settings (limit: null -> 30); 10 of 30 docs differ from the "
            "baseline: 0 changed text, 0 changed prompt, 10 new, 0 missing") in verdict.message


# -- 13: no standard error, n = 1 ---------------------------------------------------------


def test_no_stderr_is_compared_on_the_samples(tmp_path: Path):
    save_baseline(tmp_path, [1.0] * 50, stderr=None)
    verdict = judge(tmp_path, result([1.0] * 20 + [0.0] * 30, stderr=None))
    assert verdict.verdict == REGRESSED and verdict.method is not None
    assert verdict.stderr is None and verdict.n == 50


def test_no_stderr_and_no_samples_cannot_compare_clearly(tmp_path: Path):
    save_baseline(tmp_path, [1.0] * 50, stderr=None, with_samples=False)
    verdict = judge(tmp_path, result([1.0] * 50, stderr=None, with_samples=False))
    assert verdict.verdict == CANNOT_COMPARE and not verdict.failed
    assert "has no standard error and no per-sample outcomes" in verdict.message
    assert verdict.ci_low is None and verdict.p_value is None  # "-" in the table, not nan
    strict = judge(tmp_path, result([1.0] * 50, stderr=None, with_samples=False), strict=True)
    assert strict.failed


def test_zero_docs_without_samples_is_no_crash(tmp_path: Path):
    save_baseline(tmp_path, [1.0] * 5, with_samples=False)
    empty = result([1.0] * 5, with_samples=False)
    empty.n_samples = 0
    verdict = judge(tmp_path, empty)  # unpaired with an unknown n, not a ValueError
    assert verdict.verdict == INCONCLUSIVE and verdict.n is None


@pytest.mark.parametrize(("before", "after", "expected"), [
    ([1.0], [1.0], PASS), ([1.0], [0.0], INCONCLUSIVE), ([0.0], [1.0], INCONCLUSIVE),
    ([0.3], [0.7], CANNOT_COMPARE)])
def test_one_doc(tmp_path: Path, before: list[float], after: list[float], expected: str):
    save_baseline(tmp_path, before, stderr=None)
    verdict = judge(tmp_path, result(after, stderr=None))
    assert verdict.verdict == expected and verdict.n == 1 and not verdict.failed


# -- 15: degenerate statistics --------------------------------------------------------------


@pytest.mark.parametrize("tolerance", [0.0, 0.02])
def test_every_doc_flipped_one_way_is_decided_exactly(tolerance: float):
    # All 100 docs lost: sd of the differences is 0, yet this is the clearest regression.
    base, cand = {i: 1.0 for i in range(100)}, {i: 0.0 for i in range(100)}
    lost = compare_samples(base, cand, tolerance=tolerance)
    assert lost.verdict == REGRESSED and lost.method == PAIRED_EXACT and lost.p_value < 1e-5
    assert lost.discordant == (100, 0) and lost.ci[0] <= -1 + 1e-9 < lost.ci[1] < -0.9
    gained = compare_samples(cand, base, tolerance=tolerance, max_gain=0.1)
    assert gained.verdict == "suspicious gain" and gained.method == PAIRED_EXACT
    assert compare_samples(cand, base, tolerance=tolerance).verdict == PASS


def test_few_docs_flipped_one_way_are_inconclusive_not_cannot_compare():
    verdict = compare_samples({0: 1.0, 1: 1.0}, {0: 0.0, 1: 0.0}, tolerance=0.05)
    assert verdict.verdict == INCONCLUSIVE and verdict.method == PAIRED_EXACT
    assert 0 < verdict.p_value <= 1 and verdict.underpowered


binary = st.lists(st.sampled_from([0.0, 1.0]), max_size=5)


@settings(max_examples=400, deadline=None, database=None)
@given(binary, binary, st.booleans(), st.sampled_from([0.0, 0.01, 0.5]),
       st.none() | st.sampled_from([0.0, 0.1]), st.sampled_from([0.001, 0.01, 0.2]))
def test_tiny_binary_outcomes_never_raise_or_give_nan(before, after, higher, tolerance,
                                                      max_gain, alpha):
    base, cand = dict(enumerate(before)), dict(enumerate(after))
    try:
        comparison = compare_samples(base, cand, higher_is_better=higher, tolerance=tolerance,
                                     max_gain=max_gain, alpha=alpha)
    except ValueError:
        assert not base or not cand  # the only ValueError here: an empty side
        return
    assert comparison.verdict in VERDICTS and comparison.verdict != CANNOT_COMPARE
    numbers = [comparison.delta, *comparison.ci, comparison.p_value, comparison.se]
    assert all(math.isfinite(x) for x in numbers), comparison
    assert 0 <= comparison.p_value <= 1
    if comparison.verdict == PASS:
        assert comparison.delta * (1 if higher else -1) >= -tolerance or comparison.n == 0
    if all(v == before[0] for v in before + after) and comparison.n:
        assert comparison.verdict == PASS and comparison.delta == 0  # all equal: a pass


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(1, 5), st.sampled_from([0.0, 1.0, 0.5]), st.sampled_from([0.0, 0.01]))
def test_all_equal_values_pass_without_division_by_zero(n, value, tolerance):
    same = {i: value for i in range(n)}
    comparison = compare_samples(same, dict(same), tolerance=tolerance)
    assert comparison.verdict == PASS and comparison.se == 0 and comparison.p_value == 1.0
    assert math.isfinite(comparison.mde)


# -- end to end ------------------------------------------------------------------------------

NAN_TESTS = dedent("""
    import pytest
    from pytest_modelreg.custom import FunctionOutput


    def nan_eval(limit):
        return FunctionOutput(samples={i: {"acc": float("nan") if i == 2 else 1.0}
                                       for i in range(5)})


    @pytest.mark.modelreg(task="nan_task", evaluator=nan_eval, metrics=["acc"])
    def test_marker():
        pass


    def test_fixture_check(modelreg):
        modelreg.evaluate("nan_task", evaluator=nan_eval).check("acc", min=0.5)


    def test_fixture_baseline(modelreg):
        modelreg.evaluate("nan_task", evaluator=nan_eval).check_baseline("acc")
""")


def test_a_user_evaluator_producing_nan_fails_and_records_nothing(project: pytest.Pytester):
    project.makepyfile(test_nan=NAN_TESTS)
    for flags in ((), ("--modelreg-update",), ("--modelreg-record-missing",)):
        run = project.runpytest("-p", "no:cacheprovider", "--modelreg-json=report.json", *flags)
        run.assert_outcomes(failed=3)
        # Strict JSON: a NaN metric is null there, not a bare NaN that readers reject.
        report = json.loads((project.path / "report.json").read_text(),
                            parse_constant=lambda name: pytest.fail(f"{name} in the JSON report"))
        assert report["rows"] == [] or all(r["current"] is None for r in report["rows"])
        out = run.stdout.str()
        assert run.ret == 1
        # Count in the failure sections only: the short summary repeats the message in full
        # where pytest sees a CI (the `CI` variable) and cuts it elsewhere.
        failures = failure_section(out)
        if flags:
            assert failures.count("modelreg: nan_task: acc is nan, not a valid number; the "
                                  "baseline was not recorded") == 2, out
        else:
            assert failures.count("modelreg: nan_task: acc is nan; a NaN or infinite metric is "
                                  "never a pass") == 3, out
        assert "Traceback" not in out
        assert not (project.path / "baselines" / "nan_task.json").exists()


MARKED = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], limit=20)
    def test_qa():
        pass
""")


def test_changed_data_or_prompt_is_incomparable_with_counts(project: pytest.Pytester,
                                                            tiny: TinyWorld):
    tasks = project.path / "tasks"
    shutil.copytree(tiny.tasks, tasks)
    config = tasks / "tiny_qa.yaml"
    for path in tasks.glob("*.yaml"):  # point the copies at the copied data
        path.write_text(path.read_text().replace(str(tiny.tasks), str(tasks)))
    project.makefile(".ini", pytest=tiny.ini(modelreg_include_path=str(tasks),
                                             modelreg_no_cache="true"))
    project.makepyfile(test_quality=MARKED)
    project.runpytest("-p", "no:cacheprovider", "--modelreg-record-missing").assert_outcomes(
        passed=1)
    recorded = (project.path / "baselines" / "tiny_qa.json").read_text()

    data = tasks / "tiny_qa.jsonl"
    original = data.read_text()
    docs = [json.loads(line) for line in original.splitlines()]
    for doc in docs[:3]:  # three questions reworded; the answers stay right
        doc["question"] = doc["question"].replace("the ", "this ", 1)
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    text = project.runpytest("-p", "no:cacheprovider")
    text.assert_outcomes(failed=1)
    text.stdout.fnmatch_lines([
        "*modelreg: tiny_qa: the baseline of tiny_qa was recorded under other settings (doc set:*"
        "3 of 20 docs differ from the baseline: 3 changed text, 0 changed prompt, 0 new, "
        "0 missing; re-record it with pytest --modelreg-update*if the change is intended",
        "*test_quality.py::test_qa*tiny_qa*acc*incomparable"])

    data.write_text(original)  # the data back, the prompt template changed
    config.write_text(config.read_text().replace('doc_to_text: "{{question}}"',
                                                 'doc_to_text: "Q: {{question}}"'))
    prompt = project.runpytest("-p", "no:cacheprovider")
    prompt.assert_outcomes(failed=1)
    prompt.stdout.fnmatch_lines([
        "*other settings (task config:*20 of 20 docs differ from the baseline: 0 changed text, "
        "20 changed prompt, 0 new, 0 missing*", "*tiny_qa*acc*incomparable"])
    assert (project.path / "baselines" / "tiny_qa.json").read_text() == recorded


ONE_DOC = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc", "acc_norm"], limit=1)
    def test_one():
        pass
""")


def test_one_doc_without_stderr_end_to_end(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_one=ONE_DOC)
    report = project.path / "report.json"
    first = project.runpytest("-p", "no:cacheprovider", "--modelreg-record-missing")
    first.assert_outcomes(passed=1)
    stored = json.loads((project.path / "baselines" / "tiny_qa.json").read_text())
    assert stored["n_samples"] == 1 and stored["metrics"]["acc"]["stderr"] is None  # lm-eval: N/A

    project.makefile(".ini", pytest=tiny.ini(tiny.degraded))
    again = project.runpytest("-p", "no:cacheprovider", f"--modelreg-json={report}")
    assert again.ret in (0, 1) and "Traceback" not in again.stdout.str()
    rows = json.loads(report.read_text(), parse_constant=pytest.fail)["rows"]
    assert {r["metric"] for r in rows} == {"acc", "acc_norm"}
    for row in rows:
        assert row["n"] == 1 and row["stderr"] is None and row["method"] is not None
        assert row["verdict"] in (PASS, INCONCLUSIVE), row  # one doc: never a regression


def test_bootstrap_off_gives_no_stderr_and_a_paired_comparison(tiny: TinyWorld, tmp_path: Path,
                                                               heavy_imports: None):
    from pytest_modelreg.runner.lm_eval_runner import LmEvalRunner

    spec = EvalSpec(task="tiny_qa", model="hf", model_args=f"pretrained={tiny.good}",
                    device="cpu", limit=8, bootstrap_iters=0, baseline_name="tiny_qa")
    runner = LmEvalRunner((tiny.tasks,))
    try:
        evaluated = runner.evaluate(spec)
    finally:
        runner.close()
    assert evaluated.stderr["acc"] is None  # lm-eval reports "N/A"
    BaselineStore(tmp_path).save(Baseline(
        name="tiny_qa", task="tiny_qa", fingerprint=evaluated.fingerprint, n_samples=8,
        metrics={"acc": {"value": evaluated.metrics["acc"], "stderr": None,
                         "higher_is_better": True}}, samples=evaluated.samples))
    verdict = judge(tmp_path, evaluated)
    assert verdict.verdict == PASS and verdict.n == 8 and verdict.method == "mcnemar-exact"


def test_bootstrap_off_in_a_marker_stays_off():
    from pytest_modelreg.spec import build_spec

    where = "test_x.py::test_it"
    assert build_spec("t", {"bootstrap_iters": 0}, Settings(), where).bootstrap_iters == 0
    assert build_spec("t", {}, Settings(), where).bootstrap_iters == 100_000
