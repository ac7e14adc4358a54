"""Marker and fixture arguments validated into evaluation specs and checks."""

import pytest

from pytest_modelreg.errors import ModelregUsageError
from pytest_modelreg.settings import Settings
from pytest_modelreg.spec import DEFAULT_SEEDS, Tolerance, build_spec, parse_marker, parse_tolerance

SETTINGS = Settings(model="hf", model_args="pretrained=/m", limit=50)


def marker(*args, **kwargs):
    return parse_marker(args, kwargs, SETTINGS, "test_x")


def test_marker_defaults_from_settings():
    spec, checks, _ = marker(task="piqa")
    assert spec.task == "piqa" and spec.model_args == "pretrained=/m" and spec.limit == 50
    assert spec.seeds == DEFAULT_SEEDS
    assert spec.baseline_name == "piqa"
    assert checks is None  # every metric of the task


def test_positional_task_and_metric_list():
    _, checks, _ = marker("piqa", metrics=["acc", "acc_norm"], min=0.5, tolerance="2%")
    assert [c.metric for c in checks] == ["acc", "acc_norm"]
    assert all(c.min == 0.5 and c.tolerance == Tolerance(0.02, relative=True) for c in checks)


def test_per_metric_thresholds_override_shared_ones():
    _, checks, _ = marker(task="piqa", min=0.1, metrics={"acc_norm": {"min": 0.6}, "acc": None})
    by_name = {c.metric: c for c in checks}
    assert by_name["acc_norm"].min == 0.6 and by_name["acc"].min == 0.1


def test_equal_settings_give_equal_keys():
    assert marker(task="piqa", limit=10)[0] == marker(task="piqa", limit=10)[0]
    assert marker(task="piqa", limit=10)[0] != marker(task="piqa", limit=11)[0]


def test_model_override_gets_its_own_baseline_name():
    spec, _, _ = marker(task="piqa", model_args="pretrained=/other")
    assert spec.model_args == "pretrained=/other"
    assert spec.baseline_name.startswith("piqa--hf-") and spec.baseline_name != "piqa"
    assert marker(task="piqa", baseline="mine")[0].baseline_name == "mine"


def test_seed_overrides_all_four():
    assert marker(task="piqa", seed=7)[0].seeds == (7, 7, 7, 7)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "piqa", "lmit": 5}, "unknown argument 'lmit'.*did you mean 'limit'"),
    ({}, "needs task"),
    ({"task": "piqa", "min": "high"}, "min must be a number"),
    ({"task": "piqa", "min": 0.9, "max": 0.1}, "above max"),
    ({"task": "piqa", "tolerance": -1}, "tolerance must be a drop >= 0"),
    ({"task": "piqa", "tolerance": "two%"}, "tolerance"),
    ({"task": "piqa", "metrics": {"acc": {"minimum": 1}}}, "unknown threshold 'minimum'"),
    ({"task": "piqa", "max_gain": -0.1}, "max_gain must be a gain > 0"),
    ({"task": "piqa", "metrics": 3}, "metrics must be"),
    ({"task": "piqa", "metrics": []}, "metrics is empty"),
    ({"task": "piqa", "limit": 0}, "limit"),
    ({"task": "piqa", "num_fewshot": -1}, "num_fewshot"),
    ({"task": "piqa", "model_args": "pretrained"}, "cannot parse"),
    ({"task": 3}, "task must be"),
    ({"task": "piqa", "seed": "x"}, "seed"),
])
def test_bad_marker_arguments(kwargs, message):
    with pytest.raises(ModelregUsageError, match=message):
        marker(**kwargs)


def test_fixture_rejects_check_arguments():
    with pytest.raises(ModelregUsageError, match="unknown argument 'min'"):
        build_spec("piqa", {"min": 0.5}, SETTINGS, "evaluate")


@pytest.mark.parametrize(("text", "expected"), [
    (0.01, Tolerance(0.01)), ("0.02", Tolerance(0.02)), ("2%", Tolerance(0.02, True)),
    (" 1.5 % ", Tolerance(0.015, True)), (None, Tolerance()),
])
def test_tolerance(text, expected):
    assert parse_tolerance(text, "t") == expected


def test_relative_tolerance_scales_with_baseline():
    assert Tolerance(0.02, relative=True).allowed_drop(0.5) == pytest.approx(0.01)
    assert Tolerance(0.02).allowed_drop(0.5) == 0.02
