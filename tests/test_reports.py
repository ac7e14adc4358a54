"""Reports people read: JSON, markdown, the GitHub step summary, JUnit XML properties, the docs
that flipped, and baselines no test uses any more."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_modelreg.tracking import TestRecord, flipped_files
from tests.conftest import TinyWorld, dedent
from tests.test_plugin import MARKED, run


@pytest.fixture
def regressed(project: pytest.Pytester, tiny: TinyWorld) -> pytest.Pytester:
    """A project whose baseline was recorded on the good model and which now runs the degraded."""
    project.makepyfile(test_quality=MARKED)
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    project.makefile(".ini", pytest=tiny.ini(tiny.degraded))
    return project


def test_json_markdown_and_github_step_summary(regressed: pytest.Pytester,
                                              monkeypatch: pytest.MonkeyPatch):
    summary = regressed.path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run(regressed, "--modelreg-json=out/report.json", "--modelreg-markdown=out/report.md")
    result.assert_outcomes(failed=1)

    report = json.loads((regressed.path / "out" / "report.json").read_text())
    [row] = report["rows"]
    assert row["verdict"] == "regressed" and row["test"] == "test_quality.py::test_qa"
    assert row["flipped"] and all(f["before"] == 1.0 and f["after"] == 0.0 for f in row["flipped"])
    assert len(row["flipped"]) == row["n"] - round(row["current"] * row["n"])  # every one of them
    assert row["flipped"][0]["prompt"].startswith("the ")
    assert report["evaluations"][0]["task"] == "tiny_qa" and report["exitstatus"] == 1
    assert any("Holm-Bonferroni" in note for note in report["notes"])

    markdown = (regressed.path / "out" / "report.md").read_text()
    assert "| test_quality.py::test_qa | tiny_qa | acc |" in markdown
    assert "**regressed**" in markdown and "docs got worse" in markdown
    assert summary.read_text().startswith("earlier step\n")  # appended, never overwritten
    assert summary.read_text().count("## pytest-modelreg") == 1


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_junit_xml_has_flat_properties(regressed: pytest.Pytester, args: tuple[str, ...]):
    result = run(regressed, "--junitxml=junit.xml", *args)
    result.assert_outcomes(failed=1)
    case = ET.parse(regressed.path / "junit.xml").getroot().find(".//testcase")
    assert case is not None
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["modelreg.tiny_qa.acc.verdict"] == "regressed"
    assert float(properties["modelreg.tiny_qa.acc.baseline"]) == 1.0
    assert float(properties["modelreg.tiny_qa.acc.current"]) < 1.0
    assert float(properties["modelreg.tiny_qa.acc.p_value"]) < 0.01
    assert properties["modelreg.tiny_qa.n_samples"] == "60"
    assert not any(value.startswith("{") for value in properties.values())  # no str(dict)


def test_unused_baselines_are_listed_after_a_full_session_only(project: pytest.Pytester):
    project.makepyfile(test_quality=MARKED, test_old=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"])
        def test_old():
            pass
    """))
    run(project, "--modelreg-update").assert_outcomes(passed=2)
    (project.path / "test_old.py").unlink()  # the test went away; its baseline stayed

    full = run(project)
    full.assert_outcomes(passed=1)
    full.stdout.fnmatch_lines(["*modelreg: 1 baseline(s) in * no test used: tiny_qa2 (delete "
                               "them, or see: pytest-modelreg baselines list --unused)*"])
    for selected in (["-k", "test_qa"], ["test_quality.py"]):
        assert "no test used" not in run(project, *selected).stdout.str()


def test_flipped_docs_become_one_file_per_metric():
    record = TestRecord("t.py::test", verdicts=[
        {"task": "tiny_qa", "metric": "acc", "flipped": [{"doc_id": 3, "prompt": "the colour",
                                                          "before": 1.0, "after": 0.0}]},
        {"task": "tiny_qa", "metric": "acc_norm", "flipped": None}])
    files = flipped_files(record)
    assert list(files) == ["tiny_qa--acc.jsonl"]
    assert json.loads(files["tiny_qa--acc.jsonl"]) == {"after": 0.0, "before": 1.0, "doc_id": 3,
                                                       "prompt": "the colour"}


def test_slow_drift_against_the_median_of_recent_sessions(project: pytest.Pytester,
                                                          tiny: TinyWorld, tmp_path):
    """Baselines refreshed along the way hide a slide; the median of the sessions does not."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project.makepyfile(test_quality=MARKED)
    for _ in range(3):
        project.makefile(".ini", pytest=tiny.ini(mlflow=True, mlflow_tracking_uri=uri))
        steady = project.runpytest("--modelreg-update", "--modelreg-drift-window=3")
        steady.assert_outcomes(passed=1)
        assert "slow drift" not in steady.stdout.str()

    project.makefile(".ini", pytest=tiny.ini(tiny.degraded, mlflow=True, mlflow_tracking_uri=uri))
    slid = project.runpytest("--modelreg-update", "--modelreg-drift-window=3")
    slid.assert_outcomes(passed=1)  # the refreshed baseline alone would never fail it
    slid.stdout.fnmatch_lines(["*modelreg: WARNING: slow drift: tiny_qa/acc = 0.* is 0.* below "
                               "the median 1.0000 of the last 3 sessions (more than 2 SE = *)*"])
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "pytest-modelreg"]
    sessions = [r for r in client.search_runs([experiment.experiment_id],
                                              order_by=["attributes.start_time DESC"])
                if "mlflow.parentRunId" not in r.data.tags]
    latest = sessions[0]
    names = [a.path for a in client.list_artifacts(latest.info.run_id)]
    assert "trend--tiny_qa--acc.png" in names
