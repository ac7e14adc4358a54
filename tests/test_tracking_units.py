"""The tracking modules on their own: context, report collection, spooling."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_modelreg.collect import ReportCollector
from pytest_modelreg.fixture import EVALUATION_PROPERTY, TEST_PROPERTY, VERDICT_PROPERTY
from pytest_modelreg.tracking import SessionRecord, SessionTracker, TestRecord, metrics_of
from pytest_modelreg.tracking.context import model_label, redact_command, session_tags


def test_command_line_secrets_are_masked():
    shown = redact_command(["--modelreg-model-args", "pretrained=x,token=abc", "-k", "t",
                            "--modelreg-model-args=api_key=zzz"])
    assert "abc" not in shown and "zzz" not in shown
    assert "token=***" in shown and "api_key=***" in shown


def test_session_tags_carry_git_and_ci():
    tags = session_tags("s1", "pytest", {"commit": "abc", "branch": "main", "dirty": True},
                        {"GITHUB_RUN_ID": "42", "HOME": "/root"})
    assert tags["mlflow.runType"] == "test" and tags["mlflow.test.session_id"] == "s1"
    assert tags["mlflow.source.git.commit"] == "abc" and tags["git.dirty"] == "true"
    assert tags["ci.github_run_id"] == "42" and not any("home" in k for k in tags)


def test_model_label():
    assert model_label("hf", "pretrained=/ckpts/step-900/,dtype=bfloat16") == "step-900"
    assert model_label("local-completions", "base_url=http://x") == "local-completions"


def verdict(task="t", metric="acc", current=0.5, **extra):
    return {"task": task, "metric": metric, "verdict": "pass", "current": current,
            "baseline": 0.5, "delta": 0.0, "message": "", "stderr": 0.1, **extra}


def test_collector_follows_the_phases():
    done: list[TestRecord] = []
    collector = ReportCollector(done.append)
    props = [(TEST_PROPERTY, True)]
    evaluation = {"task": "t", "fresh": True, "seconds": 1.0, "model_load_seconds": 2.0,
                  "n_samples": 10}
    collector.add("a", "setup", "passed", 0.1, "", props)
    fresh = collector.add("a", "call", "failed", 1.0, "boom",
                          [*props, (VERDICT_PROPERTY, verdict()), (EVALUATION_PROPERTY, evaluation)])
    assert fresh == [evaluation] and not done
    collector.add("a", "teardown", "passed", 0.1, "", props)
    assert [(t.nodeid, t.outcome, t.message) for t in done] == [("a", "failed", "boom")]
    collector.add("b", "setup", "failed", 0.1, "bad marker", props)  # error in setup
    collector.add("c", "???", "failed", 0.0, "worker 'gw0' crashed", props)  # xdist crash
    collector.add("plain", "call", "passed", 0.1, "", [])  # not a modelreg test
    collector.flush()
    assert [(t.nodeid, t.outcome) for t in done] == [("a", "failed"), ("c", "failed"),
                                                     ("b", "error")]
    assert [r["test"] for r in collector.rows] == ["a"]


def test_metrics_are_named_task_slash_metric():
    test = TestRecord("n", verdicts=[verdict(metric="exact_match,strict-match")],
                      evaluations=[{"task": "t", "seconds": 1.5, "model_load_seconds": 0.5,
                                    "n_samples": 3}])
    assert metrics_of(test) == {
        "t/exact_match_strict-match": 0.5, "t/exact_match_strict-match_stderr": 0.1,
        "t/exact_match_strict-match_baseline": 0.5, "t/exact_match_strict-match_delta": 0.0,
        "t/eval_seconds": 1.5, "t/model_load_seconds": 0.5, "t/n_samples": 3.0}


class DeadServer:
    run_id = None

    def start(self, session):
        raise ConnectionError("Connection refused\nmore detail")


def test_a_failing_tracker_warns_once_and_spools_everything(tmp_path: Path):
    artifact = tmp_path / "eval-1" / "results.json"
    artifact.parent.mkdir()
    artifact.write_text("{}")
    warnings: list[str] = []
    tracker = SessionTracker(SessionRecord("s1", 0.0), DeadServer, tmp_path / "spool",
                             warnings.append)
    for name in ("t1", "t2"):
        tracker.log_test(TestRecord(name, evaluations=[{"artifacts": {"results.json": str(artifact)}}]))
    tracker.finish("FINISHED")
    assert len(warnings) == 1 and "ConnectionError: Connection refused" in warnings[0]
    spooled = json.loads((tmp_path / "spool" / "s1" / "session.json").read_text())
    assert [t["nodeid"] for t in spooled["tests"]] == ["t1", "t2"]
    assert spooled["status"] == "FINISHED"
    copied = Path(spooled["tests"][0]["evaluations"][0]["artifacts"]["results.json"])
    assert copied.is_relative_to(tmp_path / "spool" / "s1") and copied.read_text() == "{}"
