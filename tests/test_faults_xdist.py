"""Faults of the plugin itself and of xdist workers: nothing lost, the run never left RUNNING.

Real processes (``runpytest_subprocess``), real lm-eval on the tiny world, real MLflow (SQLite).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TinyWorld, dedent
from tests.test_tracking import runs, split, track

TWO_TESTS = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], min=0.5, limit=5)
    def test_first():
        pass

    @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"], min=0.5, limit=5)
    def test_second():
        pass
""")
# A worker killed mid-test: the OOM killer or a segfault (SIGKILL: no Python cleanup at all).
KILLED = dedent("""
    import os
    import signal

    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], min=0.5, limit=5)
    def test_a():
        pass

    @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"], min=0.5, limit=5)
    def test_b():
        pass

    @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"], min=0.5, limit=5)
    def test_killed():
        os.kill(os.getpid(), signal.SIGKILL)
""")


def mlflow_project(project: pytest.Pytester, tiny: TinyWorld, tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    track(project, tiny, uri)
    return uri


def never_running(uri: str) -> tuple[object, dict[str, object]]:
    """The session run and its children by test name; none of them left RUNNING."""
    parent, children = split(runs(uri))
    assert all(r.info.status != "RUNNING" for r in (parent, *children))
    return parent, {c.info.run_name.split("::")[-1]: c for c in children}


# -- 7: an internal error of the plugin ------------------------------------------------------


def test_an_error_in_a_hook_during_the_run_ends_the_run_failed(project: pytest.Pytester,
                                                               tiny: TinyWorld, tmp_path: Path):
    """The controller's logreport hook raises on the second test: pytest stops with an internal
    error (exit 3); the run ends FAILED and the first test stays logged."""
    uri = mlflow_project(project, tiny, tmp_path)
    project.makeconftest(dedent("""
        import pytest_modelreg.report as report

        shown = report.evaluation_line

        def broken(value):
            if value["task"] == "tiny_qa2":
                raise RuntimeError("a bug in the plugin")
            return shown(value)

        report.evaluation_line = broken
    """))
    project.makepyfile(test_two=TWO_TESTS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(["INTERNALERROR>*RuntimeError: a bug in the plugin"])
    parent, children = never_running(uri)
    assert parent.info.status == "FAILED"
    assert children["test_first"].info.status == "FINISHED"
    assert children["test_first"].data.metrics["tiny_qa/acc"] == 1.0


def test_an_error_in_the_session_finish_still_ends_the_run(project: pytest.Pytester,
                                                           tiny: TinyWorld, tmp_path: Path):
    """Rendering the reports (the run's markdown, the terminal table) raises at session finish:
    the run still ends, FAILED, with every test logged; pytest says INTERNALERROR, exits 3."""
    uri = mlflow_project(project, tiny, tmp_path)
    project.makeconftest(dedent("""
        import pytest_modelreg.report as report

        def breaks(name):
            def broken(*args, **kwargs):
                raise RuntimeError(f"a bug in {name}")
            return broken

        report.markdown_report = breaks("markdown_report")
        report.write_table = breaks("write_table")
    """))
    project.makepyfile(test_two=TWO_TESTS)
    report = project.path / "report.json"
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update",
                                          f"--modelreg-json={report}")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(["INTERNALERROR>*RuntimeError: a bug in write_table",
                                 "INTERNALERROR>*RuntimeError: a bug in markdown_report",
                                 "modelreg: MLflow run * in experiment 'regressions'*"])
    result.assert_outcomes(passed=2)  # the tests' own outcomes stand
    parent, children = never_running(uri)
    assert parent.info.status == "FAILED" and parent.data.tags["outcome"] == "failed"
    assert sorted(children) == ["test_first", "test_second"]
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert len(json.loads(report.read_text())["rows"]) == 2  # what could be written, was


# -- 16 and 18: a worker killed mid-test -----------------------------------------------------


def test_the_crash_report_fails_the_test_it_names_exactly_once():
    """xdist's "???" report for a dead worker carries no properties (it is made on the
    controller): it must still fail the modelreg test whose setup report came before."""
    from pytest_modelreg.collect import ReportCollector
    from pytest_modelreg.properties import TEST_PROPERTY

    done = []
    collector = ReportCollector(done.append)
    ours = [(TEST_PROPERTY, True)]
    for when in ("setup", "call", "teardown"):
        collector.add("t.py::done", when, "passed", 0.1, "", ours)
    collector.add("t.py::killed", "setup", "passed", 0.1, "", ours)
    crash = "worker 'gw0' crashed while running 't.py::killed'"
    collector.add("t.py::killed", "???", "failed", 0.0, crash, [])
    collector.add("t.py::done", "???", "failed", 0.0, "a late crash", [])  # finished: ignored
    collector.add("t.py::plain", "???", "failed", 0.0, "not ours", [])  # not a modelreg test
    collector.flush()
    assert [(t.nodeid, t.outcome, t.message) for t in done] == [
        ("t.py::done", "passed", ""), ("t.py::killed", "failed", crash)]


def test_a_killed_worker_fails_its_test_once_and_loses_nothing(project: pytest.Pytester,
                                                               tiny: TinyWorld, tmp_path: Path):
    uri = mlflow_project(project, tiny, tmp_path)
    project.makepyfile(test_killed=KILLED)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update",
                                          "-n", "2")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running "
                                 "'test_killed.py::test_killed'*"])
    result.stdout.fnmatch_lines(["*= modelreg =*"])  # the verdict table is printed
    parent, children = never_running(uri)
    assert parent.info.status == "FAILED" and parent.data.metrics["tests_failed"] == 1
    assert sorted(children) == ["test_a", "test_b", "test_killed"]
    assert children["test_a"].info.status == children["test_b"].info.status == "FINISHED"
    killed = children["test_killed"]
    assert killed.info.status == "FAILED" and killed.data.tags["outcome"] == "failed"
    assert "crashed" in killed.data.tags["message"]


def test_no_worker_restart_still_closes_the_run_and_writes_the_report(project: pytest.Pytester,
                                                                      tiny: TinyWorld,
                                                                      tmp_path: Path):
    """``--max-worker-restart 0``: the first crash stops the session; what ran is kept."""
    uri = mlflow_project(project, tiny, tmp_path)
    project.makepyfile(test_killed=KILLED)
    report = project.path / "report.json"
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update",
                                          "-n", "1", "--max-worker-restart", "0",
                                          f"--modelreg-json={report}", "test_killed.py::test_a",
                                          "test_killed.py::test_killed", "test_killed.py::test_b")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*worker gw0 crashed and worker restarting disabled*"])
    result.stdout.fnmatch_lines(["*= modelreg =*", "*test_killed.py::test_a*tiny_qa*"])
    parent, children = never_running(uri)
    assert parent.info.status == "FAILED"
    assert children["test_a"].info.status == "FINISHED"
    assert children["test_killed"].info.status == "FAILED"
    assert "test_b" not in children  # never ran: the session stopped at the crash
    written = json.loads(report.read_text())
    assert written["exitstatus"] == pytest.ExitCode.TESTS_FAILED
    assert [row["test"] for row in written["rows"]] == ["test_killed.py::test_a"]
    assert written["mlflow_run_id"] == parent.info.run_id


# -- 17: a replacement worker gets the crashed one's GPU -------------------------------------


def test_a_replacement_worker_under_n3_keeps_the_crashed_workers_gpu(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Three workers on two GPUs (gw0: 0, gw1: 1, gw2: 0). gw0 dies; its replacement gw3 must
    get GPU 0 again, not GPU 1 (which its own number would give it round-robin)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # only the variable is read: no GPU needed
    project.makepyfile(test_crash=dedent("""
        import os
        import signal
        from pathlib import Path

        def note(name):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            Path(f"{name}-{worker}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))

        def test_crash_on_gw0():
            note("ran")
            if os.environ["PYTEST_XDIST_WORKER"] == "gw0":
                os.kill(os.getpid(), signal.SIGKILL)

        def test_after():
            note("after")
    """))
    # --dist each: every worker runs every test, and the replacement runs what gw0 had left.
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "3", "--dist", "each")
    result.stdout.fnmatch_lines(["*CUDA_VISIBLE_DEVICES per xdist worker: worker 0: 0, "
                                 "worker 1: 1, worker 2: 0*", "*replacing crashed worker gw0*"])
    result.assert_outcomes(passed=5, failed=1)
    seen = {p.name: p.read_text() for p in project.path.glob("*-gw*.txt")}
    assert seen["ran-gw0.txt"] == "0" and seen["after-gw3.txt"] == "0"
    assert {seen[f"after-gw{i}.txt"] for i in (1, 2, 3)} <= {"0", "1"}


# -- 19: the same collection on every worker -------------------------------------------------


def test_parametrized_tasks_and_suites_collect_alike_on_every_worker(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Each worker hashes strings differently (no PYTHONHASHSEED): collection, the modelreg
    markers and the xdist groups must not depend on it, or xdist refuses to run."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    project.makeconftest(dedent("""
        import os
        from pathlib import Path

        def pytest_configure(config):
            worker = os.environ.get("PYTEST_XDIST_WORKER")
            if worker:
                Path(f"hash-{worker}.txt").write_text(str(hash("modelreg")))
    """))
    project.makepyfile(test_tasks=dedent("""
        import pytest

        @pytest.mark.parametrize("task", ["tiny_qa", "tiny_qa2"])
        @pytest.mark.parametrize("limit", [3, 4])
        def test_task(modelreg, task, limit):
            modelreg.evaluate(task, limit=limit).check("acc", min=0.5)

        @pytest.mark.parametrize("metric", ["acc"])
        @pytest.mark.modelreg(task="tiny_qa2", metrics={"acc": {"min": 0.5}}, limit=3)
        def test_marked(metric):
            pass
    """))
    project.makefile(".yaml", modelreg_suite=dedent("""
        limit: 3
        tasks:
          - {name: tiny_qa, metrics: [{name: acc, min: 0.5}]}
          - {name: tiny_qa2, metrics: [acc], baseline: second}
    """))
    # loadgroup: the xdist group of each test is part of its node id, so it must match too.
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update",
                                          "-n", "3", "--dist", "loadgroup")
    assert len({p.read_text() for p in project.path.glob("hash-gw*.txt")}) == 3  # seeds differ
    assert "Different tests were collected" not in result.stdout.str()
    result.assert_outcomes(passed=4 + 1 + 2)
