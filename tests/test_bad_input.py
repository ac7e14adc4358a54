"""Bad input ends in one clear line naming the thing and the fix; recorded data is never lost."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TinyWorld, dedent


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # In an inline run the plugin is already imported; pytest warns it cannot rewrite it.
    return pytester.runpytest("-p", "no:cacheprovider",
                              "-W", "ignore::pytest.PytestAssertRewriteWarning", *args)


def failure_section(output: str) -> str:
    """What pytest prints for the failing test, without warnings or the summary."""
    for header in ("= FAILURES =", "= ERRORS ="):
        if header in output:
            output = output.split(header, 1)[1]
    for footer in ("warnings summary", "short test summary info"):
        output = output.split(footer, 1)[0]
    return output


def marked(**kwargs: object) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return dedent(f"""
        import pytest

        @pytest.mark.modelreg({args})
        def test_it():
            pass
    """)


def assert_one_line_failure(result: pytest.RunResult, pattern: str) -> None:
    result.stdout.fnmatch_lines([f"modelreg: {pattern}"])
    shown = failure_section(result.stdout.str())
    assert "Traceback" not in shown
    assert "site-packages" not in shown  # no frames from inside a library


def test_unknown_task_names_the_include_path(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(marked(task="tiny_qq"))
    result = run(project)
    result.assert_outcomes(failed=1)
    assert_one_line_failure(result, f"unknown task 'tiny_qq' (did you mean 'tiny_qa'?); searched "
                                    f"{tiny.tasks} and lm-eval's built-in tasks; *")


def test_unknown_metric_lists_the_tasks_metrics(project: pytest.Pytester):
    project.makepyfile(marked(task="tiny_qa", metrics=["acc_nrom"]))
    result = run(project)
    result.assert_outcomes(failed=1)
    assert_one_line_failure(result, "task 'tiny_qa' has no metric 'acc_nrom'; its metrics are: "
                                    "acc, acc_norm (did you mean 'acc_norm'?)")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "tiny_qa", "lmit": 3}, "*unknown argument 'lmit' (did you mean 'limit'?)*"),
    ({"task": "tiny_qa", "min": "high"}, "*min must be a number, got 'high'"),
    ({"task": "tiny_qa", "tolerance": "a lot"}, "*tolerance must be a drop >= 0*"),
    ({"task": "tiny_qa", "model_args": "pretrained"}, "*cannot parse 'pretrained'*"),
    ({"task": "tiny_qa", "limit": 0}, "*limit: must be a positive whole number*"),
])
def test_bad_marker_arguments_error_in_setup(project: pytest.Pytester, kwargs, message):
    project.makepyfile(marked(**kwargs))
    result = run(project)
    result.assert_outcomes(errors=1)
    assert_one_line_failure(result, f"test_bad_marker_arguments_error_in_setup.py::test_it: {message}")


def test_missing_model_path(project: pytest.Pytester, tmp_path):
    missing = tmp_path / "no-such-model"
    project.makepyfile(marked(task="tiny_qa", model_args=f"pretrained={missing}"))
    result = run(project)
    result.assert_outcomes(failed=1)
    assert_one_line_failure(result, f"model path {missing} does not exist*")


@pytest.mark.parametrize(("option", "message"), [
    (("--modelreg-limit", "0"), "*--modelreg-limit: must be a positive whole number*"),
    (("--modelreg-limit", "-5"), "*--modelreg-limit: must be a positive whole number*"),
    (("--modelreg-model-args", "pretrained"), "*cannot parse 'pretrained'*"),
    (("--modelreg-device", "tpu"), "*'tpu' is not a device*"),
])
def test_bad_options_are_usage_errors(project: pytest.Pytester, option, message):
    project.makepyfile(marked(task="tiny_qa"))
    result = run(project, *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: modelreg: {message}"])


def test_corrupt_baseline_is_named_and_kept(project: pytest.Pytester):
    project.makepyfile(marked(task="tiny_qa", metrics=["acc"]))
    folder = project.path / "baselines"
    folder.mkdir()
    (folder / "tiny_qa.json").write_text('{"schema_version": 1, "name": "tiny_qa", "metr')
    result = run(project)
    result.assert_outcomes(failed=1)
    assert_one_line_failure(result, f"baseline file {folder / 'tiny_qa.json'} is corrupt (*); "
                                    "restore it from version control or re-record it with "
                                    "--modelreg-update")
    assert (folder / "tiny_qa.json").read_text().endswith('"metr')  # untouched
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    assert json.loads((folder / "tiny_qa.json").read_text())["name"] == "tiny_qa"


def test_newer_schema(project: pytest.Pytester):
    project.makepyfile(marked(task="tiny_qa", metrics=["acc"]))
    run(project, "--modelreg-update").assert_outcomes(passed=1)
    path = project.path / "baselines" / "tiny_qa.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    result = run(project)
    result.assert_outcomes(failed=1)
    assert_one_line_failure(result, "*written with schema version 99, newer than this "
                                    "pytest-modelreg reads (2); upgrade pytest-modelreg")


def test_two_settings_on_one_baseline_name(project: pytest.Pytester):
    project.makepyfile(dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", limit=10)
        def test_a(): pass

        @pytest.mark.modelreg(task="tiny_qa", limit=20)
        def test_b(): pass
    """))
    result = run(project, "--modelreg-update")
    result.assert_outcomes(passed=1, failed=1)
    assert_one_line_failure(result, "baseline 'tiny_qa' is used by two evaluations with different "
                                    "settings (*limit: 10 -> 20*); give one of them its own name "
                                    "with baseline='...'")
