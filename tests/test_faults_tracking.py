"""Tracking faults (issue 7, scenarios 1-5 and 8): refused, hanging and failing servers, secrets,
SQLite under xdist and params MLflow cannot take. Real processes, real MLflow, real servers."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from pytest_modelreg.tracking import WAIT_BUDGET, SessionRecord, SessionTracker, TestRecord
from tests.conftest import TinyWorld, dedent
from tests.fault_http import FaultServer
from tests.mlflow_server import MlflowServer, free_port
from tests.test_tracking import client, runs, split, track

ONE_TEST = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], limit=6)
    def test_one():
        pass
""")
COST = re.compile(r"modelreg: tracking cost this session ([\d.]+) s of waiting "
                  r"\(at most [\d.]+ s; ([\d.]+) s in the background\)")
# The plugin's own HTTP defaults (10 s per request, one retry): a server that never answers
# costs one request twice, then the session spools.
HANG_SECONDS = 2 * 10


def cost(stdout: str) -> tuple[float, float]:
    """(seconds the session waited for tracking, seconds tracking worked in the background)."""
    found = COST.search(stdout)
    assert found, stdout[-3000:]
    return float(found[1]), float(found[2])


def spooled_in(stdout: str) -> Path:
    found = re.search(r"the session is spooled in (\S+); replay it with: pytest-modelreg sync",
                      stdout)
    assert found, stdout[-3000:]
    return Path(found[1])


# -- 1. refused at start -------------------------------------------------------------------------
def test_refused_server_adds_at_most_seconds(project: pytest.Pytester, tiny: TinyWorld):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    track(project, tiny, uri)
    project.makepyfile(test_one=ONE_TEST)
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"modelreg: WARNING: MLflow tracking failed (ConnectionError: "
                                 f"Connection refused by {uri}); the rest of this session is "
                                 "spooled to *session.json (replay with: pytest-modelreg sync)"])
    waited, background = cost(result.stdout.str())
    # Refused is answered at once: one request, one immediate retry (plus importing mlflow).
    assert waited < 5 and background < 10, (waited, background)
    spool = spooled_in(result.stdout.str())
    assert spool.is_file() and len(json.loads(spool.read_text())["tests"]) == 1


# -- 3. accepts, never answers -------------------------------------------------------------------
def test_hanging_server_costs_at_most_the_budget(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_one=ONE_TEST)
    start = time.monotonic()
    plain = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")  # no tracking
    untracked = time.monotonic() - start
    plain.assert_outcomes(passed=1)
    with FaultServer("hang") as server:
        track(project, tiny, server.uri)
        start = time.monotonic()
        result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")
        tracked = time.monotonic() - start
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"modelreg: WARNING: MLflow tracking failed ({server.uri} did "
                                 "not answer within 10 s (MLFLOW_HTTP_REQUEST_TIMEOUT)); the rest "
                                 "of this session is spooled to *"])
    waited, background = cost(result.stdout.str())
    assert HANG_SECONDS - 1 < background < HANG_SECONDS + 5  # bounded by the plugin's defaults
    assert waited <= WAIT_BUDGET
    print(f"hanging server: {tracked:.1f} s, no tracking: {untracked:.1f} s; waited {waited} s")
    assert tracked - untracked < WAIT_BUDGET, (tracked, untracked)
    assert spooled_in(result.stdout.str()).is_file()


def test_strict_hanging_server_is_a_usage_error_within_the_timeouts(
        project: pytest.Pytester, tiny: TinyWorld, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")  # the user's own setting wins
    with FaultServer("hang") as server:
        track(project, tiny, server.uri)
        project.makepyfile(test_one=ONE_TEST)
        start = time.monotonic()
        result = project.runpytest("-p", "no:cacheprovider", "--mlflow-strict")
        elapsed = time.monotonic() - start
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: modelreg: MLflow tracking at {server.uri} is not usable "
                                 f"({server.uri} did not answer within 2 s "
                                 "(MLFLOW_HTTP_REQUEST_TIMEOUT)); check the server, or raise "
                                 "MLFLOW_HTTP_REQUEST_TIMEOUT, or drop --mlflow-strict"])
    assert len(server.requests) == 2  # one request, one retry
    assert 2 * 2 - 0.5 < elapsed < 2 * 2 + 5
    assert "modelreg: evaluated" not in result.stdout.str()


class Stuck:
    """A tracker whose server answers the start, then never again."""

    run_id = "r1"

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def start(self, session: SessionRecord) -> None:
        pass

    def log_test(self, session: SessionRecord, test: TestRecord) -> None:
        self.release.wait()


def test_session_end_never_waits_past_the_budget(tmp_path: Path):
    release = threading.Event()
    warnings: list[str] = []
    tracker = SessionTracker(SessionRecord("s1", 0.0), lambda: Stuck(release),
                             tmp_path / "spool", warnings.append, wait_budget=0.5)
    try:
        for name in ("t1", "t2", "t3"):
            tracker.log_test(TestRecord(name))
        start = time.monotonic()
        tracker.finish("FINISHED")
        assert time.monotonic() - start < 2
    finally:
        release.set()
    assert warnings == [f"MLflow tracking failed (no answer within the 0.5 s the session waits "
                        f"for tracking at its end); the rest of this session is spooled to "
                        f"{tmp_path / 'spool' / 's1' / 'session.json'} (replay with: "
                        "pytest-modelreg sync)"]
    spooled = json.loads((tmp_path / "spool" / "s1" / "session.json").read_text())
    assert [t["nodeid"] for t in spooled["tests"]] == ["t1", "t2", "t3"]
    assert spooled["status"] == "FINISHED"


# -- 4. 401 / 403 / 5xx, and secrets ------------------------------------------------------------
SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "pw-SECRET-mlflow-7731",
    "MLFLOW_TRACKING_TOKEN": "tok-SECRET-mlflow-5521",
    "HF_TOKEN": "hf_SECRETenvtoken0042",
    "OPENAI_API_KEY": "sk-SECRET-openai-9911",
}
ARG_SECRET = "hf_SECRETmodelargs0077"
MARKER_SECRET = "hf_SECRETmarker0088"
ANSWERS = {
    401: ("answered 401 Unauthorized: credentials missing or rejected",
          "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"),
    403: ("answered 403 Forbidden: no permission on experiment 'regressions'",
          "ask for access to experiment 'regressions' or pick another one with "
          "--mlflow-experiment"),
    500: ("answered 500: a server error",
          "check the tracking server's log; spooled sessions replay with: pytest-modelreg sync"),
    503: ("answered 503: a server error",
          "check the tracking server's log; spooled sessions replay with: pytest-modelreg sync"),
}


def with_secrets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci-bot")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return [*SECRETS.values(), ARG_SECRET, MARKER_SECRET]


def leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


@pytest.mark.parametrize("status", sorted(ANSWERS))
def test_http_errors_warn_distinctly_and_spool_without_secrets(
        project: pytest.Pytester, tiny: TinyWorld, monkeypatch: pytest.MonkeyPatch, status: int):
    secrets = with_secrets(monkeypatch)
    with FaultServer(status) as server:
        track(project, tiny, server.uri,
              modelreg_model_args=f"pretrained={tiny.good},token={ARG_SECRET}")
        project.makepyfile(test_one=ONE_TEST)
        result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update")
    result.assert_outcomes(passed=1)
    reason, _fix = ANSWERS[status]
    result.stdout.fnmatch_lines([f"modelreg: WARNING: MLflow tracking failed ({server.uri} "
                                 f"{reason}); the rest of this session is spooled to *"])
    output = result.stdout.str() + result.stderr.str()
    assert output.count("MLflow tracking failed") == 1
    spool = spooled_in(output)
    assert len(json.loads(spool.read_text())["tests"]) == 1
    assert "token=***" in spool.read_text()  # the model_args reached the spool, masked
    files = [p for p in spool.parent.rglob("*") if p.is_file()]
    assert len(files) >= 3  # the session and the evaluation's artifacts
    assert not leaks(output, secrets)
    assert not [p for p in files if leaks(p.read_text(errors="ignore"), secrets)]


@pytest.mark.parametrize("status", [401, 403, 500])
def test_strict_http_errors_are_usage_errors_with_the_fix(
        project: pytest.Pytester, tiny: TinyWorld, monkeypatch: pytest.MonkeyPatch, status: int):
    secrets = with_secrets(monkeypatch)
    with FaultServer(status) as server:
        track(project, tiny, server.uri)
        project.makepyfile(test_one=ONE_TEST)
        result = project.runpytest("-p", "no:cacheprovider", "--mlflow-strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    reason, fix = ANSWERS[status]
    result.stderr.fnmatch_lines([f"ERROR: modelreg: MLflow tracking at {server.uri} is not usable "
                                 f"({server.uri} {reason}); {fix}, or drop --mlflow-strict"])
    assert "modelreg: evaluated" not in result.stdout.str()
    assert not leaks(result.stdout.str() + result.stderr.str(), secrets)


def test_secrets_never_reach_mlflow_or_the_output(project: pytest.Pytester, tiny: TinyWorld,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  server: MlflowServer, tmp_path: Path):
    secrets = with_secrets(monkeypatch)
    track(project, tiny, server.uri)
    project.makepyfile(test_suite=dedent(f"""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], limit=6)
        def test_session_model():
            pass

        @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"], limit=6, min=1.5,
                              model_args="pretrained={tiny.good},token={MARKER_SECRET}")
        def test_marker_model():
            pass
    """))
    result = project.runpytest("-p", "no:cacheprovider", "--modelreg-update", "-o",
                               f"modelreg_model_args=pretrained={tiny.good},token={ARG_SECRET}")
    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "MLflow tracking failed" not in output and not leaks(output, secrets)
    parent, children = split(runs(server.uri))
    assert len(children) == 2
    mlflow_client = client(server.uri)
    for run in (parent, *children):
        seen = json.dumps([run.data.params, run.data.tags, sorted(run.data.metrics)])
        assert not leaks(seen, secrets), run.info.run_name
        folder = Path(mlflow_client.download_artifacts(run.info.run_id, "",
                                                       str(tmp_path / run.info.run_id)))
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert files, run.info.run_name
        assert not [p for p in files if leaks(p.read_text(errors="ignore"), secrets)]
    assert "token=***" in parent.data.params["model_args"]
    assert "token=***" in parent.data.tags["pytest.command"]
    marker = next(c for c in children if c.info.run_name.endswith("test_marker_model"))
    assert "token=***" in marker.data.params["model_args"]


# -- 5. SQLite under -n 4 ------------------------------------------------------------------------
def test_sqlite_under_xdist_only_the_controller_writes(project: pytest.Pytester, tiny: TinyWorld,
                                                       tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    track(project, tiny, uri)
    project.makeconftest("""
        import json, os, sys

        def pytest_sessionfinish(session):
            role = getattr(session.config, "workerinput", {}).get("workerid", "controller")
            with open(f"modules-{role}.json", "w") as handle:
                json.dump(sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"), handle)
    """)
    project.makepyfile(test_many=dedent("""
        import pytest

        @pytest.mark.parametrize("i", range(8))
        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], limit=4)
        def test_many(i):
            pass
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update", "-n", "4")
    result.assert_outcomes(passed=8)
    output = result.stdout.str() + result.stderr.str()
    assert "database is locked" not in output and "MLflow tracking failed" not in output
    parent, children = split(runs(uri))
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == [f"test_many.py::test_many[{i}]"
                                                         for i in range(8)]
    modules = {p.stem.removeprefix("modules-"): json.loads(p.read_text())
               for p in project.path.glob("modules-*.json")}
    assert sorted(modules) == ["controller", "gw0", "gw1", "gw2", "gw3"]
    assert modules["controller"]  # the controller logged ...
    assert not any(modules[w] for w in modules if w != "controller")  # ... no worker touched MLflow


# -- 8. params MLflow cannot take ----------------------------------------------------------------
def test_params_too_long_go_to_an_artifact_whole(tmp_path: Path):
    from pytest_modelreg.tracking.mlflow_tracker import LONG_PARAMS, MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    long_value = "v" * 7000
    long_key = "k" * 300
    session = SessionRecord("s1", 1.0e9, experiment="regressions",
                            params={"model_args": long_value, "short": "ok"})
    evaluation = {"task": "t", "seconds": 1.0, "model_load_seconds": 0.5, "n_samples": 3,
                  "model": "hf", "model_args": "pretrained=x", "baseline": "t",
                  "settings": {long_key: "x", "gen_kwargs": "g" * 6001}}
    test = TestRecord("test_a.py::test_a", evaluations=[evaluation])
    warnings: list[str] = []
    tracker = SessionTracker(session, lambda: MlflowTracker(uri, "regressions"),
                             tmp_path / "spool", warnings.append)
    tracker.log_test(test)
    tracker.finish("FINISHED")
    assert not warnings and tracker.spool_path is None  # no crash, nothing spooled
    parent, (child,) = split(runs(uri))
    assert parent.data.params["short"] == "ok"
    assert parent.data.params["model_args"] == f"(7000 characters; see {LONG_PARAMS})"
    assert child.data.params["t.gen_kwargs"] == f"(6001 characters; see {LONG_PARAMS})"
    shortened = [k for k in child.data.params if k.startswith("t.kkkk")]
    assert len(shortened) == 1 and len(shortened[0]) <= 250
    assert child.data.params[shortened[0]] == f"(1 characters; see {LONG_PARAMS})"

    def long_params(run_id: str) -> dict[str, str]:
        folder = client(uri).download_artifacts(run_id, LONG_PARAMS, str(tmp_path / run_id))
        return json.loads(Path(folder).read_text())

    assert long_params(parent.info.run_id) == {"model_args": long_value}
    assert long_params(child.info.run_id) == {f"t.{long_key}": "x", "t.gen_kwargs": "g" * 6001}


def test_scrub_masks_secrets_but_not_ordinary_words():
    from pytest_modelreg.redact import known_secrets, scrub

    env = {"HF_TOKEN": "hf_abcdefgh1234", "PIP_KEYRING_PROVIDER": "subprocess",
           "SSH_AUTH_SOCK": "/tmp/ssh-1234/agent.5", "MLFLOW_TRACKING_PASSWORD": "longpassword",
           "HOME": "/root123456", "GITHUB_TOKEN": "short"}
    secrets = known_secrets(env, "pretrained=x,use_auth_token=True,api_key=sk-live-998877")
    assert sorted(secrets) == ["hf_abcdefgh1234", "longpassword", "sk-live-998877"]
    text = ("run subprocess with hf_abcdefgh1234 at https://bot:longpassword@host/x "
            "-o modelreg_model_args=pretrained=m,token=zz9,max_tokens=5")
    assert scrub(text, secrets) == ("run subprocess with *** at https://***@host/x "
                                    "-o modelreg_model_args=pretrained=m,token=***,max_tokens=5")
    assert scrub("token=zz9 sk-live-998877", secrets, pairs=False) == "token=zz9 ***"


def test_the_spool_keeps_no_password_of_the_tracking_uri(tmp_path: Path):
    session = SessionRecord("s1", 0.0, tracking_uri="https://bot:pw-SECRET-1234@mlflow.example")
    tracker = SessionTracker(session, None, tmp_path / "spool", print)
    spooled = json.loads(tracker.write_spool().read_text())
    assert spooled["tracking_uri"] == "https://mlflow.example"
    assert session.tracking_uri == "https://bot:pw-SECRET-1234@mlflow.example"  # in memory only
