"""Baselines under faults: concurrent writers, kills mid-write, old schemas, partial updates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_modelreg.baselines import (
    CONFLICT_DIR,
    BaselineConflict,
    BaselineStore,
    PendingBaselines,
)
from pytest_modelreg.errors import BaselineError
from pytest_modelreg.session import write_pending_baselines
from pytest_modelreg.spec import MetricCheck, Tolerance
from tests.conftest import TinyWorld, dedent
from tests.test_baselines import sample_baseline


def changed(name: str = "piqa_local", value: float = 0.75):
    baseline = sample_baseline(name)
    baseline.metrics["acc"]["value"] = value
    baseline.samples[0].values["acc"] = 1.0
    return baseline


# -- 20: two writers ---------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_its_result_kept_aside(tmp_path: Path):
    BaselineStore(tmp_path).save(sample_baseline())
    first, second = BaselineStore(tmp_path), BaselineStore(tmp_path)
    first.load("piqa_local"), second.load("piqa_local")  # both sessions read the same file
    first.save(changed(value=0.75))
    with pytest.raises(BaselineConflict, match=r"piqa_local\.json was changed by another process "
                                               r"after this session read it; this session's "
                                               r"result is kept in .*\.modelreg-conflicts"):
        second.save(changed(value=0.25))
    assert BaselineStore(tmp_path).load("piqa_local").value("acc") == 0.75  # the first stays
    kept = list((tmp_path / CONFLICT_DIR).glob("*/piqa_local.json"))
    assert len(kept) == 1  # ... and the second is not lost
    assert BaselineStore(kept[0].parent).load("piqa_local").value("acc") == 0.25
    assert "piqa_local" in BaselineStore(tmp_path).names()
    assert len(BaselineStore(tmp_path).names()) == 1  # the kept copy is not a baseline here


def test_a_baseline_created_meanwhile_is_a_conflict_unless_it_is_the_same_result(tmp_path: Path):
    first, second = BaselineStore(tmp_path), BaselineStore(tmp_path)
    assert first.load("piqa_local") is None and second.load("piqa_local") is None
    first.save(sample_baseline())
    second.save(sample_baseline())  # two xdist workers recording one evaluation: no conflict
    with pytest.raises(BaselineConflict, match="was created by another process"):
        third = BaselineStore(tmp_path / "other")
        third.load("piqa_local")
        BaselineStore(tmp_path / "other").save(sample_baseline())
        third.save(changed())


def test_a_store_that_never_read_the_baseline_writes_it(tmp_path: Path):
    BaselineStore(tmp_path).save(sample_baseline())
    BaselineStore(tmp_path).save(changed())  # e.g. pytest-modelreg baselines accept
    assert BaselineStore(tmp_path).load("piqa_local").value("acc") == 0.75


def test_two_pytest_processes_updating_one_baseline(project: pytest.Pytester, tiny: TinyWorld):
    """The first session reads the baseline, a second process updates it meanwhile, then the
    first tries to write: refused with a clear line, exit 1, both results on disk."""
    project.makepyfile(test_other=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])  # all 60 docs: a clear change
        def test_other(): pass
    """))
    assert run(project, "test_other.py", "--modelreg-update").ret == 0
    baseline = project.path / "baselines" / "tiny_qa.json"
    second = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_other.py",
              "--modelreg-update", f"--modelreg-model-args=pretrained={tiny.degraded}"]
    project.makepyfile(test_first=dedent(f"""
        import subprocess

        def test_first(modelreg):
            result = modelreg.evaluate("tiny_qa")
            result.check_baseline("acc")  # read the baseline, record the new one (staged)
            done = subprocess.run({second!r}, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout[-2000:]
    """))
    before = json.loads(baseline.read_text())["metrics"]["acc"]["value"]
    state = project.path / "state"  # where the session manifest goes
    result = run(project, "test_first.py", "--modelreg-update",  # the good model, unchanged
                 f"--modelreg-cache-dir={state}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # The manifest says how the session ended: 1, not the 0 it had before the refused write.
    assert json.loads((state / "last-session.json").read_text())["exitstatus"] == 1
    result.stdout.fnmatch_lines([f"modelreg: baseline {baseline} was changed by another process "
                                 "after this session read it; this session's result is kept in "
                                 f"{project.path / 'baselines' / CONFLICT_DIR}/*/tiny_qa.json *"])
    degraded = json.loads(baseline.read_text())["metrics"]["acc"]["value"]
    assert degraded < before  # the other process's update stands
    kept = next((project.path / "baselines" / CONFLICT_DIR).glob("*/tiny_qa.json"))
    assert BaselineStore(kept.parent).load("tiny_qa").provenance["model"]["model_args"].endswith(
        str(tiny.good))


# -- 21: killed during a write -----------------------------------------------------------------
KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from pytest_modelreg.baselines import BaselineStore
    from tests.test_faults_baselines import changed

    calls = 0
    real_replace = os.replace

    def replace(src, dst):
        global calls
        calls += 1
        if calls == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a CI timeout would
        real_replace(src, dst)

    os.replace = replace
    store = BaselineStore(__import__("pathlib").Path({folder!r}))
    store.save(changed())
""")


@pytest.mark.parametrize("kill_at", [1, 2, 3])  # before: the .prev copy, the samples, the JSON
def test_a_write_killed_at_any_step_leaves_the_old_baseline_readable(tmp_path: Path, kill_at: int):
    BaselineStore(tmp_path).save(sample_baseline())
    script = KILLER.format(root=str(Path(__file__).parents[1]), folder=str(tmp_path),
                           kill_at=kill_at)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    loaded = BaselineStore(tmp_path).load("piqa_local")
    assert loaded.value("acc") == 0.5 and loaded.samples == sample_baseline().samples
    BaselineStore(tmp_path).save(changed())  # the next write cleans up and succeeds
    assert BaselineStore(tmp_path).load("piqa_local").value("acc") == 0.75
    assert not list(tmp_path.glob(".*.prev"))


def test_a_truncated_samples_file_says_how_many_lines_are_left(tmp_path: Path):
    store = BaselineStore(tmp_path)
    store.save(sample_baseline())
    samples = tmp_path / "piqa_local.samples.jsonl"
    samples.write_text("".join(samples.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(BaselineError, match=r"truncated: 3 of 4 lines"):
        store.load("piqa_local")


# -- 22: older schemas -------------------------------------------------------------------------
def as_schema_1(path: Path) -> None:
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    del data["samples_count"]
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_a_schema_1_baseline_is_read_and_not_rewritten(project: pytest.Pytester):
    project.makepyfile(dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], limit=10)
        def test_qa(): pass
    """))
    assert run(project, "--modelreg-update").ret == 0
    path = project.path / "baselines" / "tiny_qa.json"
    as_schema_1(path)
    old = path.read_bytes()
    loaded = BaselineStore(path.parent).load("tiny_qa")
    assert loaded.schema_version == 1 and loaded.samples
    result = run(project, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*tiny_qa*acc*pass*"])
    assert path.read_bytes() == old  # compared against, never upgraded behind the user's back
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    assert json.loads(path.read_text())["schema_version"] == 2  # ... until asked to re-record


# -- 23: --modelreg-update keeps the old baseline of a test that did not complete --------------
def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_update_skips_tests_that_errored(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])  # all 60 docs: a clear change
        def test_ok(): pass

        @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"], min=0.99)
        def test_below_min(): pass

        def test_raises(modelreg):
            modelreg.evaluate("tiny_qa", limit=12, baseline="qa12").check_baseline("acc")
            raise RuntimeError("the data loader broke")
    """))
    assert run(project, "--modelreg-update", "-k", "ok or below").ret == 0
    folder = project.path / "baselines"
    before = {p.name: p.read_bytes() for p in folder.glob("*")}
    result = run(project, "--modelreg-update", f"--modelreg-model-args=pretrained={tiny.degraded}")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["modelreg: baseline qa12 was not updated: the test raised "
                                 "RuntimeError: the data loader broke "
                                 "(test_update_skips_tests_that_errored.py::test_raises)"])
    assert not (folder / "qa12.json").exists()  # the errored test recorded nothing
    assert (folder / "tiny_qa.json").read_bytes() != before["tiny_qa.json"]  # passed: updated
    # A failed check (below min=) is a verdict on the model, so its baseline is recorded.
    assert (folder / "tiny_qa2.json").read_bytes() != before["tiny_qa2.json"]


def test_update_interrupted_by_ctrl_c_writes_nothing(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
        def test_first(): pass

        def test_interrupt():
            raise KeyboardInterrupt
    """))
    assert run(project, "--modelreg-update", "-k", "first").ret == 0
    path = project.path / "baselines" / "tiny_qa.json"
    before = path.read_bytes()
    result = run(project, "--modelreg-update", f"--modelreg-model-args=pretrained={tiny.degraded}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["modelreg: 1 baseline(s) not written because the session was "
                                 "interrupted: tiny_qa; nothing was changed"])
    assert path.read_bytes() == before


def test_update_skips_a_test_whose_worker_crashed(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(dedent("""
        import os, signal
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], limit=10)
        def test_ok(): pass

        def test_crash(modelreg):
            modelreg.evaluate("tiny_qa2", limit=10).check_baseline("acc")
            os.kill(os.getpid(), signal.SIGKILL)
    """))
    result = run(project, "-n", "1", "--modelreg-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["modelreg: wrote 1 baseline(s) to *baselines: tiny_qa",
                                 "modelreg: nothing *::test_crash recorded was written: its xdist "
                                 "worker crashed"])
    assert (project.path / "baselines" / "tiny_qa.json").exists()
    assert not (project.path / "baselines" / "tiny_qa2.json").exists()


def test_update_keeps_the_old_baseline_when_the_change_is_inconclusive(tmp_path: Path):
    """Accepting one small, inconclusive drop after another would let a baseline drift down
    unnoticed: --modelreg-update judges against the old baseline first."""
    from tests.test_session import SPEC, record, session

    recorder, _ = session(tmp_path, [1.0] * 200, update=True)
    result, _ = recorder.evaluate(SPEC)
    recorder.judge(result, MetricCheck("acc"), "hint")
    record(recorder)
    path = tmp_path / "t.json"
    before = path.read_bytes()

    slightly, _ = session(tmp_path, [0.0] * 2 + [1.0] * 198, update=True)
    result, _ = slightly.evaluate(SPEC)
    verdict = slightly.judge(result, MetricCheck("acc"), "hint")
    assert verdict.verdict == "inconclusive" and not verdict.failed
    slightly.end_test(True)
    assert write_pending_baselines(slightly._pending_dir().parent, slightly.store,
                                   False) == ([], [], False)
    assert path.read_bytes() == before
    (line,) = slightly.not_updated_lines()
    assert line.startswith("baseline t was not updated: acc differs from the old baseline by an "
                           "inconclusive amount (inconclusive: ")
    assert line.endswith("evaluate more docs, or accept it anyway with: "
                         "pytest-modelreg baselines accept t")

    clearly, _ = session(tmp_path, [0.0] * 40 + [1.0] * 160, update=True)
    result, _ = clearly.evaluate(SPEC)
    assert clearly.judge(result, MetricCheck("acc"), "hint").verdict == "recorded"
    clearly.end_test(True)
    write_pending_baselines(clearly._pending_dir().parent, clearly.store, False)
    assert BaselineStore(tmp_path).load("t").value("acc") == 0.8  # a real change is accepted


def test_a_damaged_samples_file_is_replaced_by_the_next_write(tmp_path: Path):
    store = BaselineStore(tmp_path)
    store.save(sample_baseline())
    (tmp_path / "piqa_local.samples.jsonl").write_bytes(b"\xff\xfe not utf-8 \x00")
    with pytest.raises(BaselineError, match="does not match"):
        BaselineStore(tmp_path).load("piqa_local")
    BaselineStore(tmp_path).save(changed())  # what --modelreg-update does to repair it
    assert BaselineStore(tmp_path).load("piqa_local").value("acc") == 0.75


def test_an_unreadable_baseline_is_a_clear_error(tmp_path: Path):
    (tmp_path / "piqa_local.json").mkdir()
    with pytest.raises(BaselineError, match=r"piqa_local\.json cannot be read"):
        BaselineStore(tmp_path).load("piqa_local")


def test_a_write_that_fails_keeps_the_pending_result(tmp_path: Path):
    pending = PendingBaselines(tmp_path / "pending" / "gw0")
    pending.add(sample_baseline("read-digests"), None)  # a name like the journal's is fine
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the baseline folder should be")
    written, lines, refused = write_pending_baselines(tmp_path / "pending",
                                                      BaselineStore(blocked), False)
    assert written == [] and refused
    (line,) = lines
    assert line.startswith("baseline read-digests could not be written (")
    kept = Path(line.rsplit("the result is kept in ", 1)[1])
    assert BaselineStore(kept.parent).load_file(kept).value("acc") == 0.5  # nothing lost
    assert write_pending_baselines(tmp_path / "pending", BaselineStore(tmp_path / "ok"),
                                   False)[0] == ["read-digests"]


def test_an_inconclusive_test_withholds_a_baseline_another_test_approved(tmp_path: Path):
    from tests.test_session import SPEC, record, session

    recorder, _ = session(tmp_path, [1.0] * 200, update=True)
    result, _ = recorder.evaluate(SPEC)
    recorder.judge(result, MetricCheck("acc"), "hint")
    record(recorder)
    before = (tmp_path / "t.json").read_bytes()
    both, _ = session(tmp_path, [0.0] * 2 + [1.0] * 198, update=True)
    result, _ = both.evaluate(SPEC)
    loose = MetricCheck("acc", tolerance=Tolerance(0.5))
    assert both.judge(result, loose, "hint").verdict == "recorded"  # a pass: approved ...
    both.end_test(True)
    assert both.judge(result, MetricCheck("acc"), "hint").verdict == "inconclusive"  # ... until
    both.end_test(True)
    assert write_pending_baselines(both._pending_dir().parent, both.store, False)[0] == []
    assert (tmp_path / "t.json").read_bytes() == before
