"""The ``pytest-modelreg`` command: baselines list/show/diff/accept, import of lm-eval's own
output, history and compare on a real MLflow store. Baselines come from real plugin sessions
(pytester), the lm-eval output from the real ``python -m lm_eval`` CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_modelreg import cli
from pytest_modelreg.baselines import Baseline, BaselineStore
from tests.conftest import TinyWorld, dedent
from tests.mlflow_server import free_port

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
TWO_TESTS = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
    def test_qa():
        pass

    @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"])
    def test_qa2():
        pass
""")
ONE_TEST = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
    def test_qa():
        pass
""")
PAIRED = {"mcnemar-exact", "paired-z", "paired-clustered", "bootstrap"}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1, err
    return lines[0]


def report_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


@pytest.fixture(scope="module")
def lm_eval_output(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lm_eval --output_path OUT --log_samples`` on the tiny good model, 30 docs of tiny_qa:
    the results file (the samples file lies beside it)."""
    folder = tmp_path_factory.mktemp("lm-eval-cli")
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={tiny.good}", "--tasks", "tiny_qa", "--include_path", str(tiny.tasks),
         "--limit", "30", "--device", "cpu", "--output_path", str(folder / "out"),
         "--log_samples"],
        cwd=folder, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300,
        check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted((folder / "out").rglob("results_*.json"))
    assert len(results) == 1 and list(results[0].parent.glob("samples_tiny_qa_*.jsonl"))
    return results[0]


def test_help_in_a_subprocess_and_usage_errors(capsys, tmp_path):
    script = Path(sys.executable).with_name("pytest-modelreg")
    start = time.perf_counter()
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - start < 10  # nothing heavy is imported for --help
    for command in ("baselines", "import", "history", "compare", "sync", "exit codes"):
        assert command in done.stdout
    code, out, _ = run_cli(capsys, "baselines", "accept", "--help")
    assert code == 0 and "No model is loaded" in " ".join(out.split()) and "--cache-dir" in out
    assert run_cli(capsys, "baselines")[0] == 2  # no action
    assert run_cli(capsys, "frobnicate")[0] == 2
    code, _, err = run_cli(capsys, "history", "acc")
    assert code == 2 and "'acc' is not TASK/METRIC" in one_line_error(err)
    code, _, err = run_cli(capsys, "baselines", "show", "nope", "--dir", tmp_path)
    assert code == 2 and f"no baseline 'nope' in {tmp_path}" in one_line_error(err)
    code, _, err = run_cli(capsys, "baselines", "diff", "x", "--docs", "0")
    assert code == 2 and "--docs" in one_line_error(err)


def test_list_show_accept_diff_on_plugin_sessions(project: pytest.Pytester, tiny: TinyWorld,
                                                  capsys, tmp_path):
    project.makepyfile(test_quality=TWO_TESTS)
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run([*git, "init", "-q"], cwd=project.path, check=True)
    project.runpytest("--modelreg-update").assert_outcomes(passed=2)

    code, out, _ = run_cli(capsys, "baselines", "list")  # --dir from the project's pytest.ini
    assert code == 0
    assert re.search(r"^tiny_qa\s+tiny_qa\s+60\s+60\s+acc=1\.0000 acc_norm=1\.0000", out, re.M), out
    assert re.search(r"^tiny_qa2\s+tiny_qa2\s+40\s+40\s+acc=1\.0000", out, re.M), out
    BaselineStore(project.path / "baselines").save(Baseline(
        "retired", "tiny_qa", {"acc": {"value": 0.5, "stderr": 0.1}}, fingerprint={}))
    code, out, _ = run_cli(capsys, "baselines", "list", "--unused", "--check")
    assert code == 1
    assert "1 of 3 baseline(s)" in out and "not used by the last full session" in out
    assert re.search(r"^retired\s", out, re.M) and not re.search(r"^tiny_qa", out, re.M)
    code, out, _ = run_cli(capsys, "baselines", "list", "--unused", "--json")
    assert code == 0 and json.loads(out)["unused"] == ["retired"]

    code, out, _ = run_cli(capsys, "baselines", "show", "tiny_qa")
    assert code == 0
    assert "per-sample outcomes: 60 docs" in out and "acc: mean 1.0000 over 60 docs" in out
    sha = json.loads((project.path / "baselines" / "tiny_qa.json").read_text())[
        "provenance"]["model"]["sha256"]
    assert "fingerprint" in out and sha in out and "doc 0: acc=1" in out

    subprocess.run([*git, "add", "baselines"], cwd=project.path, check=True)
    subprocess.run([*git, "commit", "-qm", "baselines"], cwd=project.path, check=True)
    code, out, _ = run_cli(capsys, "baselines", "diff", "tiny_qa")  # against HEAD
    assert code == 0 and "same results" in out

    # The degraded model regresses; accept its results without evaluating again.
    project.makefile(".ini", pytest=tiny.ini(tiny.degraded))
    report = project.path / "report.json"
    project.runpytest(f"--modelreg-json={report}").assert_outcomes(failed=2)
    measured = {r["task"]: r["current"] for r in report_rows(report)}
    assert {r["verdict"] for r in report_rows(report)} == {"regressed"}
    code, out, _ = run_cli(capsys, "baselines", "accept", "test_quality.py::test_qa", "--dry-run")
    assert code == 0 and "would accept tiny_qa2" not in out and "would accept tiny_qa (" in out
    code, out, _ = run_cli(capsys, "baselines", "accept", "tiny_qa")
    assert code == 0, out
    assert f"acc 1.0000 -> {measured['tiny_qa']:.4f}" in out and "1 baseline(s) accepted" in out
    accepted = json.loads((project.path / "baselines" / "tiny_qa.json").read_text())
    assert accepted["metrics"]["acc"]["value"] == measured["tiny_qa"]
    assert accepted["provenance"]["model"]["sha256"] != sha  # the degraded model's
    assert accepted["provenance"]["accepted"]["nodeid"] == "test_quality.py::test_qa"
    untouched = json.loads((project.path / "baselines" / "tiny_qa2.json").read_text())
    assert untouched["metrics"]["acc"]["value"] == 1.0

    code, out, _ = run_cli(capsys, "baselines", "diff", "tiny_qa")
    assert code == 1
    assert re.search(r"^acc\s+1\.0000\s+0\.\d{4}\s+-0\.\d{4}\s+regressed: .*McNemar exact", out, re.M), out
    lost = round((1 - measured["tiny_qa"]) * 60)
    assert f"acc: worse on {lost} doc(s), better on 0" in out
    assert re.search(r"worse: doc \d+ \('the \w+ of the \w+ is'\): 1 -> 0", out), out
    committed = tmp_path / "committed.json"
    subprocess.run(["git", "show", "HEAD:baselines/tiny_qa.json"], cwd=project.path, check=True,
                   stdout=committed.open("w"))
    code, _, err = run_cli(capsys, "baselines", "diff", "tiny_qa", "--against", committed)
    assert code == 3 and "missing" in one_line_error(err)  # its samples file is not beside it
    code, out, _ = run_cli(capsys, "baselines", "diff", "tiny_qa", "--against", "HEAD~5")
    assert code == 2

    # The accepted baseline now passes (paired, identical), served from the result cache.
    again = project.runpytest(f"--modelreg-json={report}")
    again.assert_outcomes(passed=1, failed=1)
    verdicts = {r["task"]: r["verdict"] for r in report_rows(report)}
    assert verdicts == {"tiny_qa": "pass", "tiny_qa2": "regressed"}

    # A partial session does not hide what the last full session used.
    project.runpytest("-k", "test_qa2")
    code, out, _ = run_cli(capsys, "baselines", "list", "--unused", "--json")
    assert code == 0 and json.loads(out)["unused"] == ["retired"]
    assert "last full session" in json.loads(out)["manifest"]

    code, _, err = run_cli(capsys, "baselines", "accept", "no_such_task")
    assert code == 2 and "no evaluation of the last session matches 'no_such_task'" in err
    code, _, err = run_cli(capsys, "baselines", "accept", "--cache-dir", tmp_path / "empty")
    assert code == 3 and "no session manifest" in one_line_error(err)

    (project.path / "baselines" / "broken.json").write_text("{")
    code, out, err = run_cli(capsys, "baselines", "list")
    assert code == 3 and "tiny_qa2" in out
    assert "broken.json is corrupt" in one_line_error(err) and "--modelreg-update" in err
    code, _, err = run_cli(capsys, "baselines", "show", "broken")
    assert code == 3 and "restore it from version control" in one_line_error(err)


def test_import_of_lm_eval_output_compares_paired(project: pytest.Pytester, tiny: TinyWorld,
                                                  lm_eval_output: Path, capsys):
    code, out, _ = run_cli(capsys, "import", lm_eval_output)
    assert code == 0, out
    assert "as baseline tiny_qa: acc=1.0000 acc_norm=1.0000 (30 docs)" in out
    assert "per-sample outcomes of 30 docs from samples_tiny_qa_" in out
    code, _, err = run_cli(capsys, "import", lm_eval_output)
    assert code == 2 and "--force" in one_line_error(err)

    # The same model, task and limit in the plugin: a paired pass, not "incomparable".
    project.makefile(".ini", pytest=tiny.ini(modelreg_limit="30"))
    project.makepyfile(test_quality=ONE_TEST)
    report = project.path / "report.json"
    project.runpytest(f"--modelreg-json={report}").assert_outcomes(passed=1)
    [row] = report_rows(report)
    assert row["verdict"] == "pass" and row["method"] in PAIRED and row["n"] == 30, row

    # What the plugin itself records for that evaluation is what the import wrote.
    project.runpytest("--modelreg-baseline-dir=recorded", "--modelreg-update").assert_outcomes(
        passed=1)
    imported = json.loads((project.path / "baselines" / "tiny_qa.json").read_text())
    recorded = json.loads((project.path / "recorded" / "tiny_qa.json").read_text())
    for key in ("fingerprint", "metrics", "n_samples", "settings"):
        assert imported[key] == recorded[key], key
    assert imported["provenance"]["model"]["sha256"] == recorded["provenance"]["model"]["sha256"]
    assert (project.path / "baselines" / "tiny_qa.samples.jsonl").read_text() == \
        (project.path / "recorded" / "tiny_qa.samples.jsonl").read_text()
    code, out, _ = run_cli(capsys, "baselines", "diff", "baselines/tiny_qa.json",
                           "recorded/tiny_qa.json")
    assert code == 0 and "same results (re-recorded)" in out

    # The degraded model against the imported baseline: regressed, paired.
    project.makefile(".ini", pytest=tiny.ini(tiny.degraded, modelreg_limit="30"))
    project.runpytest(f"--modelreg-json={report}").assert_outcomes(failed=1)
    [row] = report_rows(report)
    assert row["verdict"] == "regressed" and row["method"] in PAIRED, row

    # Aggregates only: said so, and no samples file.
    code, out, _ = run_cli(capsys, "import", lm_eval_output, "--no-samples", "--dir", "agg")
    assert code == 0 and "aggregates only" in out and "unpaired" in out
    stored = json.loads((project.path / "agg" / "tiny_qa.json").read_text())
    assert "samples_file" not in stored and stored["n_samples"] == 30

    code, _, err = run_cli(capsys, "import", project.path / "nothing.json")
    assert code == 2 and "does not exist" in one_line_error(err)
    (project.path / "other.json").write_text('{"hello": 1}')
    code, _, err = run_cli(capsys, "import", project.path / "other.json")
    assert code == 3 and "not an lm-eval results file" in one_line_error(err)


def test_history_and_compare_on_real_mlflow(project: pytest.Pytester, tiny: TinyWorld, capsys,
                                            tmp_path):
    from pytest_modelreg.history import drift, metric_history

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    project.makepyfile(test_quality=ONE_TEST)
    run_ids = []
    for model, args in ((tiny.good, ("--modelreg-update",)), (tiny.good, ()), (tiny.degraded, ())):
        project.makefile(".ini", pytest=tiny.ini(model, mlflow=True, mlflow_tracking_uri=uri))
        result = project.runpytest(*args)
        found = re.search(r"modelreg: MLflow run (\w+) in experiment", result.stdout.str())
        assert found, result.stdout.str()
        run_ids.append(found.group(1))

    points = metric_history(uri, "pytest-modelreg", "tiny_qa", "acc", last=10)
    assert [p.run_id for p in points] == run_ids  # oldest first
    assert [p.verdict for p in points] == ["recorded", "pass", "regressed"]
    assert points[0].value == points[1].value == 1.0 > points[2].value
    assert points[0].model_sha == points[1].model_sha != points[2].model_sha
    assert points[2].stderr is not None and points[2].stderr > 0
    median, delta = drift(points[:2], points[2].value, window=5)
    assert median == 1.0 and delta == pytest.approx(points[2].value - 1.0)
    assert drift([], 0.5, 3) is None
    assert len(metric_history(uri, "pytest-modelreg", "tiny_qa", "acc", last=2)) == 2

    plot = tmp_path / "trend.png"
    code, out, _ = run_cli(capsys, "history", "tiny_qa/acc", "--plot", plot)  # URI from the ini
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "tiny_qa/acc in the last 3 session(s) of experiment 'pytest-modelreg':"
    assert [line.split()[-1] for line in lines[3:6]] == ["recorded", "pass", "regressed"]
    assert f"{points[0].model_sha[:12]}" in lines[3] and run_ids[2][:8] in lines[5]
    assert "drift: the latest value" in out and "median 1.0000 of the 2 session(s)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000

    code, out, _ = run_cli(capsys, "compare", run_ids[0], run_ids[1], "--tracking-uri", uri)
    assert code == 0 and "B did not regress against A" in out
    code, out, _ = run_cli(capsys, "compare", run_ids[1], run_ids[2], "--tracking-uri", uri)
    assert code == 1
    assert re.search(r"^tiny_qa/acc\s+1\.0000\s+0\.\d{4}\s+-0\.\d{4}.*pass\s+regressed\s+REGRESSED: "
                     r"B's verdict: regressed; worse by", out, re.M), out

    code, _, err = run_cli(capsys, "history", "tiny_qa/accc", "--tracking-uri", uri)
    assert code == 3 and "did you mean 'tiny_qa/acc'" in one_line_error(err)
    code, _, err = run_cli(capsys, "history", "tiny_qa/acc", "--tracking-uri", uri,
                           "--experiment", "nope")
    assert code == 3 and "no experiment 'nope'" in one_line_error(err)
    code, _, err = run_cli(capsys, "history", "tiny_qa/acc", "--tracking-uri",
                           f"sqlite:///{tmp_path / 'absent.db'}")
    assert code == 3 and "no MLflow database at" in one_line_error(err)
    start = time.monotonic()
    code, _, err = run_cli(capsys, "compare", "a" * 32, "b" * 32, "--tracking-uri",
                           f"http://127.0.0.1:{free_port()}")
    assert code == 3 and "start the server or fix --tracking-uri" in one_line_error(err)
    assert time.monotonic() - start < 30
