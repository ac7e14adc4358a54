"""Every pytest session is an MLflow run: real MLflow (local SQLite and a real server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TinyWorld, dedent
from tests.mlflow_server import MlflowServer, free_port

SECRET = "hf_SECRET_do_not_log_42"
SUITE = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], min=0.5)
    def test_good():
        pass

    @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"], min=1.5)
    def test_bad():
        pass

    def test_plain():
        pass
""")


def track(pytester: pytest.Pytester, tiny: TinyWorld, uri: str, model: Path | None = None,
          **extra: str) -> None:
    pytester.makefile(".ini", pytest=tiny.ini(model, mlflow=True, mlflow_tracking_uri=uri,
                                              mlflow_experiment="regressions", **extra))


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs(uri: str, filter_string: str = "") -> list:
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name("regressions")
    return mlflow_client.search_runs([experiment.experiment_id], filter_string=filter_string)


def split(all_runs: list) -> tuple[object, list]:
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def test_session_run_children_tags_params_metrics_artifacts(project: pytest.Pytester, tiny: TinyWorld,
                                                           tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    track(project, tiny, uri, modelreg_model_args=f"pretrained={tiny.good},token={SECRET}")
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")
    result.assert_outcomes(passed=2, failed=1)
    assert "warning" not in result.stdout.lines[-1]  # none of MLflow's own in the summary
    result.stdout.fnmatch_lines([f"modelreg: MLflow tracking at {uri}, experiment 'regressions'",
                                 "modelreg: MLflow run * in experiment 'regressions' at sqlite://*"])
    parent, children = split(runs(uri))
    assert parent.info.status == "FAILED"
    assert parent.data.tags["mlflow.runType"] == "test"
    assert parent.data.tags["mlflow.test.session_id"] == parent.data.tags["modelreg.session_id"]
    assert parent.data.tags["outcome"] == "failed" and "failed" in parent.info.run_name
    assert "pytest.command" in parent.data.tags
    assert parent.data.params["model"] == "hf"
    assert "version.lm_eval" in parent.data.params and "hardware.device" in parent.data.params
    assert parent.data.metrics["tiny_qa/acc"] == 1.0
    assert {c.info.run_name for c in children} == {"test_suite.py::test_good",
                                                   "test_suite.py::test_bad"}
    failed = runs(uri, "tags.failed = 'true'")
    assert [r.info.run_name for r in failed] == ["test_suite.py::test_bad"]
    bad = failed[0]
    assert bad.info.status == "FAILED" and bad.data.tags["verdict"] == "out of bounds"
    assert bad.data.metrics["tiny_qa2/acc"] == 1.0
    assert bad.data.metrics["tiny_qa2/n_samples"] == 40
    assert "tiny_qa2/eval_seconds" in bad.data.metrics
    assert bad.data.metrics["tiny_qa2/acc_stderr"] == 0.0  # all correct: no spread
    assert bad.data.params["tiny_qa2.limit"] == "default"
    assert bad.data.params["tiny_qa2.random_seed"] == "0"
    experiment = client(uri).get_experiment_by_name("regressions")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # Secrets never leave: params, tags and every artifact.
    good = next(c for c in children if c.info.run_name.endswith("test_good"))
    assert "token=***" in good.data.params["model_args"]
    artifacts = Path(client(uri).download_artifacts(good.info.run_id, "", str(tmp_path / "dl")))
    names = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file())
    assert names == ["evaluations/tiny_qa/results.json", "evaluations/tiny_qa/samples.jsonl"]
    parent_files = Path(client(uri).download_artifacts(parent.info.run_id, "", str(tmp_path / "p")))
    assert {p.name for p in parent_files.iterdir()} == {"modelreg-report.json", "modelreg-report.md"}
    assert json.loads((parent_files / "modelreg-report.json").read_text())["status"] == "FAILED"
    everything = [*artifacts.rglob("*"), *parent_files.rglob("*")]
    for run in (parent, *children):
        assert SECRET not in json.dumps([run.data.params, run.data.tags])
    assert not [p for p in everything if p.is_file() and SECRET in p.read_text(errors="ignore")]


def _content(uri: str) -> dict[str, dict[str, float]]:
    _, children = split(runs(uri))
    return {c.info.run_name: {k: v for k, v in c.data.metrics.items() if "seconds" not in k}
            for c in children}


def test_xdist_gives_one_parent_run_identical_in_content(project: pytest.Pytester, tiny: TinyWorld,
                                                         tmp_path: Path):
    project.makepyfile(test_suite=SUITE)
    contents = []
    for name, args in (("plain", ()), ("xdist", ("-n", "2"))):
        uri = f"sqlite:///{tmp_path / name}.db"
        track(project, tiny, uri)
        shutil.rmtree(project.path / "baselines", ignore_errors=True)  # the same start for both
        result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update", *args)
        result.assert_outcomes(passed=2, failed=1)
        contents.append(_content(uri))
    assert contents[0] == contents[1] and len(contents[0]) == 2


def test_no_mlflow_imports_no_mlflow(project: pytest.Pytester, tiny: TinyWorld):
    project.makeconftest("""
        import json, sys

        def pytest_sessionfinish(session):
            with open("modules.json", "w") as handle:
                json.dump(sorted(sys.modules), handle)
    """)
    track(project, tiny, "sqlite:///never.db", no_mlflow="false")
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update",
                                          "--no-mlflow")
    result.assert_outcomes(passed=2, failed=1)
    modules = json.loads((project.path / "modules.json").read_text())
    assert "lm_eval" in modules  # models were evaluated ...
    assert not [m for m in modules if m.split(".")[0] == "mlflow"]  # ... and MLflow never imported
    assert not (project.path / "never.db").exists()


def test_ctrl_c_ends_the_run_killed(project: pytest.Pytester, tiny: TinyWorld, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    track(project, tiny, uri)
    project.makepyfile(test_suite=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
        def test_first():
            pass

        def test_interrupt(modelreg):
            raise KeyboardInterrupt
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    parent, children = split(runs(uri))
    assert parent.info.status == "KILLED" and parent.data.tags["outcome"] == "interrupted"
    assert any(c.info.run_name.endswith("test_first") and c.info.status == "FINISHED"
               for c in children)
    assert all(r.info.status != "RUNNING" for r in (parent, *children))


def test_remote_server_prints_the_run_url(project: pytest.Pytester, tiny: TinyWorld,
                                          server: MlflowServer):
    track(project, tiny, server.uri)
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"modelreg: this session: {server.uri}/#/experiments/*/runs/*",
                                 f"modelreg: all sessions: {server.uri}/#/experiments/*/runs"])


def test_unreachable_server_warns_spools_and_keeps_outcomes(project: pytest.Pytester,
                                                            tiny: TinyWorld):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    track(project, tiny, uri)
    project.makepyfile(test_suite=SUITE)
    start = time.monotonic()
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")
    elapsed = time.monotonic() - start
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["modelreg: WARNING: MLflow tracking failed (*); the rest of this "
                                 "session is spooled to *session.json (replay with: "
                                 "pytest-modelreg sync)",
                                 "modelreg: MLflow was not reachable; the session is spooled in *"])
    assert result.stdout.str().count("WARNING: MLflow tracking failed") == 1  # warned once
    spooled = list((project.path / ".modelreg-spool").glob("*/session.json"))
    assert len(spooled) == 1 and len(json.loads(spooled[0].read_text())["tests"]) == 2
    assert elapsed < 60


def test_strict_tracking_fails_before_any_model_loads(project: pytest.Pytester, tiny: TinyWorld):
    uri = f"http://127.0.0.1:{free_port()}"
    track(project, tiny, uri)
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest("-p", "no:cacheprovider", "--mlflow-strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: modelreg: MLflow tracking at {uri} is not usable (*); "
                                 "start the server, fix --mlflow-tracking-uri, or drop "
                                 "--mlflow-strict"])
    assert "modelreg: evaluated" not in result.stdout.str()


def test_server_dies_mid_session_then_sync_replays_once(project: pytest.Pytester, tiny: TinyWorld,
                                                        tmp_path: Path, fresh_server: MlflowServer):
    server = fresh_server
    track(project, tiny, server.uri)
    project.makepyfile(test_suite=dedent(f"""
        import os, signal
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
        def test_1(): pass

        @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"])
        def test_2():
            os.killpg({server.process.pid}, signal.SIGKILL)  # the server dies here

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc_norm"])
        def test_3(): pass
    """))
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*the session is spooled in *replay it with: pytest-modelreg sync"])
    server.process.wait(timeout=30)
    server.start()  # the same port and database, as after a restart
    spool = project.path / ".modelreg-spool"
    backup = tmp_path / "spool-copy"
    shutil.copytree(spool, backup)
    sync = [sys.executable, "-m", "pytest_modelreg", "sync", "--spool-dir", str(spool)]
    done = subprocess.run(sync, capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert not list(spool.glob("*/session.json"))
    shutil.copytree(backup, spool, dirs_exist_ok=True)  # replay the same spool again
    assert subprocess.run(sync, capture_output=True, text=True).returncode == 0
    parent, children = split(runs(server.uri))
    assert sorted(c.info.run_name for c in children) == [f"test_suite.py::test_{i}"
                                                         for i in (1, 2, 3)]
    assert parent.info.status == "FINISHED"
    history = client(server.uri).get_metric_history
    for child in children:
        for key in child.data.metrics:
            assert len(history(child.info.run_id, key)) == 1, (child.info.run_name, key)



def test_nests_under_an_existing_run(project: pytest.Pytester, tiny: TinyWorld, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_client = client(uri)
    job = mlflow_client.create_run(mlflow_client.create_experiment("ci-jobs"))
    track(project, tiny, uri)
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update", "--mlflow-run-name",
                               "nightly", "--mlflow-parent-run-id", job.info.run_id)
    result.assert_outcomes(passed=2, failed=1)
    nested = mlflow_client.search_runs([job.info.experiment_id],
                                       filter_string="tags.`mlflow.parentRunId` = "
                                                     f"'{job.info.run_id}'")
    assert [r.info.run_name for r in nested] == ["nightly"]
    assert len(mlflow_client.search_runs(
        [job.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{nested[0].info.run_id}'")) == 2
