"""End to end: real pytest sessions (pytester) on a tiny trained model and its degraded twin."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TinyWorld, dedent

MARKED = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
    def test_qa():
        pass
""")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def use_model(pytester: pytest.Pytester, tiny: TinyWorld, model, **extra: str) -> None:
    pytester.makefile(".ini", pytest=tiny.ini(model, **extra))


def test_record_pass_regress_update_pass(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_quality=MARKED)
    baseline = project.path / "baselines" / "tiny_qa.json"

    first = run(project)  # no baseline yet: fails and says how to record it
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*no baseline for tiny_qa/acc; record it with pytest "
                                "--modelreg-update test_quality.py::test_qa*"])
    assert not baseline.exists()

    run(project, "--modelreg-update").assert_outcomes(passed=1)
    recorded = json.loads(baseline.read_text())
    assert recorded["metrics"]["acc"]["value"] >= 0.9
    assert (project.path / "baselines" / "tiny_qa.samples.jsonl").exists()

    again = run(project)
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*test_quality.py::test_qa*tiny_qa*acc*pass*"])

    use_model(project, tiny, tiny.degraded)
    worse = run(project)
    worse.assert_outcomes(failed=1)
    worse.stdout.fnmatch_lines(["*modelreg: tiny_qa: acc fell from * to * more than the tolerated 0*",
                                "*tiny_qa*acc*regressed*"])
    assert json.loads(baseline.read_text()) == recorded  # a failing run never writes

    run(project, "--modelreg-update").assert_outcomes(passed=1)
    run(project).assert_outcomes(passed=1)
    assert json.loads(baseline.read_text())["metrics"]["acc"]["value"] < recorded["metrics"]["acc"]["value"]


def test_fixture_api(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_fx=dedent("""
        import pytest
        from pytest_modelreg import CheckFailed

        def test_values(modelreg):
            result = modelreg.evaluate("tiny_qa", limit=20)
            assert set(result.metrics) == {"acc", "acc_norm"}
            assert set(result.stderr) == {"acc", "acc_norm"}
            assert result.n_samples == 20 and len(result.samples) == 20
            assert result.samples[0].doc_hash and "acc" in result.samples[0].values
            assert result.provenance["seeds"]["random_seed"] == 0
            assert result.provenance["model"]["sha256"]
            result.check("acc", min=0.5)

        def test_check_message(modelreg):
            result = modelreg.evaluate("tiny_qa", limit=20)
            with pytest.raises(CheckFailed, match=r"acc = 1.0000, expected <= 0.5000 \\(missed by 0.5000\\)"):
                result.check("acc", max=0.5)

        def test_check_fails_test(modelreg):
            modelreg.evaluate("tiny_qa", limit=20).check("acc", min=1.5)

        def test_baseline(modelreg):
            modelreg.evaluate("tiny_qa", limit=20).check_baseline("acc", tolerance="5%")
    """))
    result = run(project, "--modelreg-update")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_check_fails_test*",
                                 "*modelreg: tiny_qa: acc = 1.0000, expected >= 1.5000 (missed by 0.5000)"])
    # all four tests share one evaluation
    assert result.stdout.str().count("modelreg: evaluated tiny_qa") == 1
    run(project, "-k", "baseline").assert_outcomes(passed=1)


def test_model_loaded_once_and_evaluations_shared(project: pytest.Pytester):
    project.makepyfile(test_many=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
        def test_a(): pass

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc_norm"])
        def test_b(): pass

        @pytest.mark.modelreg(task="tiny_qa2")
        def test_c(): pass
    """))
    result = run(project, "--modelreg-update")
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert out.count("modelreg: evaluated") == 2
    assert out.count("model loaded in") == 1 and out.count("model reused") == 1


def test_incomparable_settings(project: pytest.Pytester):
    project.makepyfile(test_fp=MARKED)
    run(project, "--modelreg-update", "--modelreg-limit", "20").assert_outcomes(passed=1)
    result = run(project, "--modelreg-limit", "30")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*recorded under other settings (*limit: 20 -> 30*re-record*",
                                 "*tiny_qa*acc*incomparable*"])
    run(project, "--modelreg-limit", "30", "--modelreg-update").assert_outcomes(passed=1)
    run(project, "--modelreg-limit", "30").assert_outcomes(passed=1)


def test_different_model_is_not_a_mismatch(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_m=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], tolerance=1.0)
        def test_qa(): pass
    """))
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    use_model(project, tiny, tiny.degraded)
    result = run(project)
    result.assert_outcomes(passed=1)  # compared (and tolerated), not "incomparable"


def test_per_test_model_override_has_its_own_baseline(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_o=dedent(f"""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
        def test_default(): pass

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], model_args="pretrained={tiny.degraded}")
        def test_other(): pass
    """))
    result = run(project, "--modelreg-update")
    result.assert_outcomes(passed=2)
    names = sorted(p.name for p in (project.path / "baselines").glob("*.json"))
    assert names[0].startswith("tiny_qa--hf-") and names[1] == "tiny_qa.json"
    values = [json.loads((project.path / "baselines" / n).read_text())["metrics"]["acc"]["value"]
              for n in names]
    assert values[0] < values[1]


def test_seeds_recorded_and_overridable(project: pytest.Pytester):
    project.makepyfile(test_s=MARKED)
    run(project, "--modelreg-update", "--modelreg-seed", "7").assert_outcomes(passed=1)
    recorded = json.loads((project.path / "baselines" / "tiny_qa.json").read_text())
    assert recorded["provenance"]["seeds"] == {"random_seed": 7, "numpy_random_seed": 7,
                                               "torch_random_seed": 7, "fewshot_random_seed": 7}
    versions = recorded["provenance"]["versions"]
    assert {"python", "lm_eval", "transformers", "torch"} <= set(versions)
    assert recorded["provenance"]["hardware"]["device"] == "cpu"


def test_summary_table(project: pytest.Pytester):
    project.makepyfile(test_t=MARKED)
    run(project, "--modelreg-update")
    result = run(project)
    result.stdout.fnmatch_lines([
        "*= modelreg =*",
        "test*task*metric*baseline*current*delta*verdict",
        "test_t.py::test_qa*tiny_qa*acc*1.0000*1.0000*+0.0000*pass",
    ])


@pytest.mark.parametrize("args", [(), ("-n", "2"), ("-p", "no:xdist")],
                         ids=["plain", "xdist-2", "no-xdist"])
def test_sessions_with_and_without_xdist(project: pytest.Pytester, args):
    project.makepyfile(test_x=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
        def test_a(): pass

        @pytest.mark.modelreg(task="tiny_qa2", metrics=["acc"])
        def test_b(): pass

        def test_c(modelreg):
            modelreg.evaluate("tiny_qa", limit=10).check("acc", min=0.5)
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-update", *args)
    result.assert_outcomes(passed=3)
    assert sorted(p.name for p in (project.path / "baselines").glob("*.json")) == \
        ["tiny_qa.json", "tiny_qa2.json"]
    result = project.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=3)
    for row in ("test_x.py::test_a*tiny_qa*acc*1.0000*+0.0000*pass",
                "test_x.py::test_b*tiny_qa2*acc*1.0000*+0.0000*pass",
                "test_x.py::test_c*tiny_qa*acc*-*1.0000*-*pass"):  # rows arrive in any order
        result.stdout.fnmatch_lines([row])
