"""W&B as the tracker, in W&B's offline mode: what the run file on disk holds, read back."""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_modelreg.tracking import SessionRecord, SessionTracker, TestRecord
from pytest_modelreg.tracking.context import session_tags
from tests.conftest import TinyWorld, dedent

wandb = pytest.importorskip("wandb")  # imported here, before any inline pytest run drops it

from pytest_modelreg.tracking.wandb_tracker import (  # noqa: E402
    INSTALL_HINT,
    WandbTracker,
    nest,
)

SECRET = "hf_SECRET_do_not_log_42"


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Generator[Path, None, None]:
    """W&B offline and quiet, every folder it writes in tmp_path: no network, no ~/.config.
    wandb reads its environment once per process: teardown() makes each test start afresh."""
    wandb.teardown()
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_RUN_ID",
                 "WANDB_NAME", "WANDB_TAGS", "WANDB_JOB_TYPE", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "wandb-home"
    for name, folder in (("WANDB_DIR", "runs"), ("WANDB_CACHE_DIR", "cache"),
                         ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        (home / folder).mkdir(parents=True)
        monkeypatch.setenv(name, str(home / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield home
    wandb.teardown()


# -- reading an offline run back -----------------------------------------------------------------
BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 7-byte header, then 32 KiB blocks
FULL, LAST = 1, 4


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    position, pending, found = 7, b"", []
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a header is padding
            position += BLOCK - position % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):  # still being written
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def _apply(target: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_run(folder: Path) -> dict[str, Any]:
    """Config, summary, history, tags, exit code and artifacts of one offline run folder."""
    run: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": [],
                           "folder": folder}
    for record in records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, project=record.run.project, group=record.run.run_group,
                       job_type=record.run.job_type, name=record.run.display_name,
                       tags=list(record.run.tags))
            for item in record.run.config.update:
                _apply(run["config"], item)
        elif kind == "config":
            for item in record.config.update:
                _apply(run["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                _apply(run["summary"], item)
        elif kind == "history":
            step: dict[str, Any] = {}
            for item in record.history.item:
                _apply(step, item)
            run["history"].append(step)
        elif kind == "artifact":
            artifact = record.artifact
            run["artifacts"].append({"name": artifact.name, "type": artifact.type,
                                     "aliases": list(artifact.aliases),
                                     "files": {c.path: c.local_path for c in artifact.manifest.contents}})
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def only_run(runs_dir: Path) -> dict[str, Any]:
    folders = sorted(runs_dir.glob("wandb/offline-run-*"))
    assert len(folders) == 1, folders
    # run.finish() can return before wandb's service has written the run file out.
    deadline = time.monotonic() + 15
    while "exit_code" not in (run := read_run(folders[0])) and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


def table(run: dict[str, Any], key: str) -> list[dict[str, Any]]:
    content = json.loads((run["folder"] / "files" / run["summary"][key]["path"]).read_text())
    return [dict(zip(content["columns"], row, strict=True)) for row in content["data"]]


# -- unit level: the tracker fed a session ---------------------------------------------------------
def verdict(task: str, metric: str, current: float, name: str = "pass", **extra: Any) -> dict:
    return {"task": task, "metric": metric, "verdict": name, "current": current, "baseline": 0.5,
            "delta": current - 0.5, "stderr": 0.05, "ci_low": -0.1, "ci_high": 0.2,
            "p_value": 0.3, "message": "", **extra}


def evaluation(task: str, artifact: Path) -> dict[str, Any]:
    return {"task": task, "baseline": task, "seconds": 1.5, "model_load_seconds": 0.5,
            "n_samples": 60, "model": "hf", "model_args": "pretrained=/ckpt,token=***",
            "model_sha256": "abc123", "settings": {"num_fewshot": "0", "limit": "default"},
            "artifacts": {"results.json": str(artifact)}}


def make_session(tmp_path: Path) -> SessionRecord:
    files = tmp_path / "artifacts"
    (files / "tiny_qa").mkdir(parents=True)
    (files / "tiny_qa" / "results.json").write_text('{"results": {}}')
    (files / "modelreg-report.md").write_text("| test | verdict |")
    session = SessionRecord(
        session_id="0123456789abcdef0123456789abcdef", started_at=1.0e9, run_name="sess running",
        tags=session_tags("0123456789abcdef0123456789abcdef", "pytest --modelreg-model-args "
                          "pretrained=/ckpt,token=***", {"commit": "c0ffee", "branch": "main",
                                                         "dirty": False}, {"GITHUB_RUN_ID": "42"}),
        params={"model": "hf", "model_args": "pretrained=/ckpt,token=***", "device": "cpu",
                "version.lm_eval": "0.4.9", "hardware.cpu": "x86_64"},
        artifacts={"modelreg-report.md": str(files / "modelreg-report.md")})
    session.tests = []
    session.run_name = "sess failed"
    session.tags["outcome"] = "failed"
    return session


def two_tests(tmp_path: Path) -> list[TestRecord]:
    artifact = tmp_path / "artifacts" / "tiny_qa" / "results.json"
    good = TestRecord("test_x.py::test_good", duration=2.0,
                      verdicts=[verdict("tiny_qa", "acc", 0.75)],
                      evaluations=[evaluation("tiny_qa", artifact)])
    bad = TestRecord("test_x.py::test_bad", outcome="failed", message="acc 0.25 < min 0.5",
                     verdicts=[verdict("tiny_qa2", "acc", 0.25, "out of bounds")],
                     evaluations=[evaluation("tiny_qa2", artifact)])
    return [good, bad]


def test_a_session_is_one_run_with_metrics_config_tables_artifact_and_status(
        tmp_path: Path, offline: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--modelreg-model-args", f"token={SECRET}"])
    session = make_session(tmp_path)
    warnings: list[str] = []
    # The real path: SessionTracker drives the tracker from its background thread.
    tracking = SessionTracker(session, lambda: WandbTracker("regressions"), tmp_path / "spool",
                              warnings.append)
    for test in two_tests(tmp_path):
        tracking.log_test(test)
    tracking.finish("FAILED")
    assert not warnings and tracking.spool_path is None
    tracker = tracking.tracker
    assert isinstance(tracker, WandbTracker) and tracker.run_id == session.session_id
    assert tracker.run_url() is None and tracker.runs_table_url() is None  # offline: no pages
    run = only_run(offline / "runs")
    assert tracker.tracking_uri == str(run["folder"])
    assert (run["id"], run["project"], run["group"], run["job_type"]) == (
        session.session_id, "regressions", session.session_id, "pytest-modelreg")
    assert run["name"] == "sess failed" and run["tags"] == ["failed"]
    assert run["exit_code"] == 1
    summary = run["summary"]
    assert summary["tiny_qa/acc"] == 0.75 and summary["tiny_qa2/acc"] == 0.25
    assert summary["tiny_qa/acc_p_value"] == 0.3 and summary["tiny_qa2/n_samples"] == 60
    assert (summary["status"], summary["outcome"], summary["tests"], summary["tests_failed"]) == (
        "FAILED", "failed", 2, 1)
    assert [step.get("tiny_qa/acc") for step in run["history"][:2]] == [0.75, None]  # a step a test
    config = run["config"]
    assert config["version"]["lm_eval"] == "0.4.9" and config["hardware"]["cpu"] == "x86_64"
    assert config["git"] == {"commit": "c0ffee", "branch": "main", "dirty": "false"}
    assert config["ci"]["github_run_id"] == "42" and config["modelreg"]["session_id"]
    assert config["tiny_qa2"]["num_fewshot"] == "0" and config["model_sha256"] == "abc123"
    assert "mlflow" not in config and "outcome" not in config
    verdicts = table(run, "verdicts")
    assert [(v["test"], v["task"], v["current"], v["verdict"]) for v in verdicts] == [
        ("test_x.py::test_good", "tiny_qa", 0.75, "pass"),
        ("test_x.py::test_bad", "tiny_qa2", 0.25, "out of bounds")]
    assert verdicts[1]["ci_low"] == -0.1 and verdicts[1]["p_value"] == 0.3
    tests = table(run, "outcomes")
    assert [(t["test"], t["outcome"], t["failed"]) for t in tests] == [
        ("test_x.py::test_good", "passed", False), ("test_x.py::test_bad", "failed", True)]
    assert tests[1]["message"] == "acc 0.25 < min 0.5"
    [artifact] = [a for a in run["artifacts"] if a["name"] == "modelreg-session"]
    assert sorted(artifact["files"]) == ["evaluations/tiny_qa/results.json",
                                         "evaluations/tiny_qa2/results.json", "modelreg-report.md"]
    assert "failed" in artifact["aliases"]
    written = [p for p in offline.rglob("*") if p.is_file()]
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]  # not even sys.argv


@pytest.mark.parametrize(("status", "exit_code", "outcome"),
                         [("FINISHED", 0, "passed"), ("KILLED", 2, "interrupted")])
def test_status_becomes_the_exit_code(tmp_path: Path, offline: Path, status: str, exit_code: int,
                                      outcome: str):
    session = SessionRecord("s" + status.lower(), 1.0e9, status=status,
                            tags={"outcome": outcome})
    tracker = WandbTracker("pytest-modelreg")
    tracker.start(session)
    assert wandb.run is None  # a run of its own: the user's wandb.log never lands in it
    tracker.log_test(session, TestRecord("t.py::t", verdicts=[verdict("t", "acc", 0.5)]))
    tracker.finish(session)
    run = only_run(offline / "runs")
    assert run["exit_code"] == exit_code and run["tags"] == [outcome]
    assert run["summary"]["status"] == status and run["project"] == "pytest-modelreg"


def test_online_without_credentials_warns_once_and_spools(tmp_path: Path, offline: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """W&B's online default with no API key: a clear warning, the session kept, no prompt."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials anywhere
    monkeypatch.setenv("HOME", str(tmp_path))
    warnings: list[str] = []
    tracking = SessionTracker(SessionRecord("sonline", 1.0e9), lambda: WandbTracker("p"),
                              tmp_path / "spool", warnings.append)
    tracking.log_test(TestRecord("t.py::t", verdicts=[verdict("t", "acc", 0.5)]))
    tracking.finish("FINISHED")
    assert len(warnings) == 1 and "W&B could not start a run (No API key configured" in warnings[0]
    assert "WANDB_MODE=offline" in warnings[0]
    assert tracking.spool_path is not None and tracking.spool_path.exists()


def test_wandb_project_applies_when_the_experiment_is_left_alone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert WandbTracker("pytest-modelreg").project == "from-env"
    assert WandbTracker("chosen").project == "chosen"


def test_disabled_mode_keeps_nothing(tmp_path: Path, offline: Path,
                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    session = SessionRecord("sdisabled", 1.0e9, status="FINISHED")
    tracker = WandbTracker("pytest-modelreg")
    tracker.start(session)
    tracker.log_test(session, TestRecord("t.py::t", verdicts=[verdict("t", "acc", 0.5)]))
    tracker.finish(session)
    assert tracker.run_id is None and tracker.run_url() is None
    assert not list((offline / "runs").rglob("*.wandb"))


def test_without_wandb_installed_connect_says_how(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ImportError) as raised:
        WandbTracker("pytest-modelreg").connect()
    assert str(raised.value) == INSTALL_HINT


def test_dotted_keys_nest_and_clashes_stay_flat():
    assert nest({"version.lm_eval": "1", "version.torch": "2", "model": "hf"}) == {
        "version": {"lm_eval": "1", "torch": "2"}, "model": "hf"}
    assert nest({"model": "hf", "model.sha": "x"}) == {"model": "hf", "model_sha": "x"}
    assert nest({"a.b": "1", "a": "2"}) == {"a": "2", "a_b": "1"}


# -- end to end: a pytest session on the tiny model ------------------------------------------------
def test_a_pytest_session_leaves_an_offline_wandb_run(project: pytest.Pytester, tiny: TinyWorld,
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WANDB_DIR")  # W&B's own default: ./wandb where pytest runs
    project.makefile(".ini", pytest=tiny.ini(mlflow=True, mlflow_experiment="regressions",
                                             modelreg_model_args=f"pretrained={tiny.good},"
                                                                 f"token={SECRET}"))
    project.makepyfile(test_suite=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], min=0.5)
        def test_good():
            pass
    """))
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update",
                               "--modelreg-tracker", "wandb")
    result.assert_outcomes(passed=1)
    assert "WARNING" not in result.stdout.str()
    run = only_run(project.path)
    result.stdout.fnmatch_lines([f"modelreg: * {run['id']} *{run['folder']}*"])
    assert run["project"] == "regressions" and run["exit_code"] == 0
    assert run["summary"]["tiny_qa/acc"] == 1.0 and run["summary"]["outcome"] == "passed"
    assert run["config"]["model_args"] == f"pretrained={tiny.good},token=***"
    [artifact] = [a for a in run["artifacts"] if a["name"] == "modelreg-session"]
    assert {"modelreg-report.json", "evaluations/tiny_qa/results.json"} <= set(artifact["files"])
    assert not (project.path / "mlflow.db").exists()  # MLflow stays out of it
    everything = [p for p in project.path.rglob("*") if p.is_file() and "wandb" in p.parts]
    assert not [p for p in everything if SECRET.encode() in p.read_bytes()]
