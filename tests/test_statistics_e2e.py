"""Verdicts a team can trust, end to end: a slightly damaged model is caught when enough docs
are evaluated, and reported as underpowered (inconclusive) when too few are."""

from __future__ import annotations

import pytest

from tests.conftest import TinyWorld, dedent


def suite(limit: int) -> str:
    return dedent(f"""
        import pytest

        @pytest.mark.modelreg(task="tiny_big", metrics=["acc"], limit={limit})
        def test_big():
            pass
    """)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-W",
                              "ignore::pytest.PytestAssertRewriteWarning", *args)


def use(pytester: pytest.Pytester, tiny: TinyWorld, model) -> None:
    pytester.makefile(".ini", pytest=tiny.ini(model))


@pytest.mark.parametrize(("limit", "outcome", "row"), [
    (400, "failed", "*tiny_big*acc*1.0000*0.9*[[]-0.*, -0.*[]]*regressed"),
    (40, "passed", "*tiny_big*acc*1.0000*inconclusive"),
])
def test_slight_damage_caught_with_enough_docs(project: pytest.Pytester, tiny: TinyWorld,
                                               limit, outcome, row):
    project.makepyfile(test_big=suite(limit))
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    use(project, tiny, tiny.slight)
    result = run(project)
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines([row])
    if outcome == "failed":
        result.stdout.fnmatch_lines(["modelreg: tiny_big: acc fell from 1.0000 to 0.9*, more than "
                                     "the tolerated 0 at alpha=0.01: delta -0.0* [[]95% CI *], "
                                     "p*, n=400, b=* c=0, MDE * (paired, McNemar exact)*; worse on * "
                                     "docs, e.g. doc ids * ('the * of the * is'), *"])
    else:
        result.stdout.fnmatch_lines(["*inconclusive*", "modelreg: WARNING: 1 baseline check(s) "
                                     "underpowered * tiny_big/acc (MDE 0.*, ~* docs needed)"])
        strict = run(project, "--modelreg-strict")
        strict.assert_outcomes(failed=1)
        strict.stdout.fnmatch_lines(["modelreg: tiny_big: acc 1.0000 -> 0.9*: delta *, "
                                     "n=40, b=* c=0, MDE * (paired, McNemar exact); underpowered: "
                                     "about * docs needed; too few docs to tell a drop from noise*"])


def test_unchanged_model_passes(project: pytest.Pytester):
    project.makepyfile(test_big=suite(400))
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    result = run(project)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*tiny_big*acc*1.0000*1.0000*+0.0000*pass"])


def test_holm_across_the_session(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_many=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_big", metrics=["acc"])
        def test_big(): pass

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc", "acc_norm"])
        def test_qa(): pass
    """))
    run(project, "--modelreg-update").assert_outcomes(passed=2)
    use(project, tiny, tiny.slight)
    result = run(project)
    result.assert_outcomes(failed=1, passed=1)
    # three planned checks: each is decided at 0.01 / 3
    result.stdout.fnmatch_lines(["modelreg: tiny_big: acc fell from * at alpha=0.00333*",
                                 "modelreg: Holm-Bonferroni over 3 baseline checks at alpha=0.01: "
                                 "1 regression(s)"])
    plain = run(project, "--modelreg-correction", "none")
    plain.stdout.fnmatch_lines(["*at alpha=0.01:*",
                                "modelreg: 3 baseline checks at alpha=0.01 each (no correction)"])


def test_count_planned_checks():
    from pytest_modelreg.session import count_planned_checks

    assert count_planned_checks([([["acc", "acc_norm"]], False), ([None], False),
                                 ([], True), ([{"acc": {}}], True), ([], False)]) == 5
    assert count_planned_checks([]) == 1


def test_corpus_metric_uses_a_paired_bootstrap(project: pytest.Pytester, tiny: TinyWorld):
    """MCC is not a mean of per-doc values: its (gold, prediction) items are resampled in pairs."""
    yaml = (tiny.tasks / "tiny_big.yaml").read_text().replace("task: tiny_big", "task: tiny_mcc")
    yaml = yaml.replace("metric_list:\n", "metric_list:\n  - metric: mcc\n"
                        "    aggregation: matthews_corrcoef\n    higher_is_better: true\n")
    extra = project.mkdir("tasks")
    (extra / "tiny_mcc.yaml").write_text(yaml)
    project.makefile(".ini", pytest=tiny.ini(
        modelreg_include_path=f"{tiny.tasks}\n    {extra}"))
    project.makepyfile(test_mcc=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_mcc", metrics=["mcc"], bootstrap_iters=1000)
        def test_mcc(): pass
    """))
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    samples = (project.path / "baselines" / "tiny_mcc.samples.jsonl").read_text()
    assert '"items": {"mcc": [' in samples  # the (gold, prediction) pairs are kept
    project.makefile(".ini", pytest=tiny.ini(
        tiny.degraded, modelreg_include_path=f"{tiny.tasks}\n    {extra}"))
    result = run(project)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["modelreg: tiny_mcc: mcc fell from 1.0000 to *(paired bootstrap)*"])
