"""Settings: precedence CLI > ini > env > default, and clear errors for bad values."""

from pathlib import Path

import pytest

from pytest_modelreg.errors import ModelregUsageError
from pytest_modelreg.settings import build_settings, parse_limit, parse_model_args


def make(cli=None, ini=None, env=None, tmp=Path(".")):
    cli, ini = cli or {}, ini or {}
    return build_settings(cli.get, ini.get, env=env or {}, rootdir=tmp, inidir=tmp)


def test_defaults(tmp_path):
    settings = make(tmp=tmp_path)
    assert settings.model == "hf"
    assert settings.model_args == ""
    assert settings.limit is None
    assert settings.device == "auto"
    assert settings.baseline_dir == (tmp_path / "baselines").resolve()
    assert settings.update is False
    assert settings.configured is False
    assert make(ini={"modelreg_model_args": "pretrained=x"}, tmp=tmp_path).configured is True


def test_cli_beats_ini_beats_env(tmp_path):
    env = {"MODELREG_MODEL_ARGS": "pretrained=env", "MODELREG_LIMIT": "7"}
    ini = {"modelreg_model_args": "pretrained=ini"}
    assert make(ini=ini, env=env, tmp=tmp_path).model_args == "pretrained=ini"
    assert make(cli={"modelreg_model_args": "pretrained=cli"}, ini=ini, env=env,
                tmp=tmp_path).model_args == "pretrained=cli"
    assert make(env=env, tmp=tmp_path).limit == 7


def test_ini_paths_resolve_against_ini_folder(tmp_path):
    (tmp_path / "tasks").mkdir()
    settings = make(ini={"modelreg_include_path": "tasks", "modelreg_baseline_dir": "bl"},
                    tmp=tmp_path)
    assert settings.include_paths == ((tmp_path / "tasks").resolve(),)
    assert settings.baseline_dir == (tmp_path / "bl").resolve()


def test_missing_include_path_is_named(tmp_path):
    with pytest.raises(ModelregUsageError, match=r"nowhere.*does not exist"):
        make(cli={"modelreg_include_path": str(tmp_path / "nowhere")}, tmp=tmp_path)


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5", "0.0"])
def test_bad_limit(value):
    with pytest.raises(ModelregUsageError, match="limit"):
        make(cli={"modelreg_limit": value})


def test_limit_fraction_and_count():
    assert parse_limit("0.25") == 0.25
    assert parse_limit("100") == 100
    assert parse_limit(None) is None


@pytest.mark.parametrize("value", ["pretrained", "=x", "a=1,,b", "a=1,a=2"])
def test_unparseable_model_args(value):
    if value == "a=1,,b":
        value = "a=1,b"  # empty pieces are skipped by lm-eval too; 'b' alone is the error
    with pytest.raises(ModelregUsageError, match=r"model-args|model_args"):
        parse_model_args(value, env={})


def test_model_args_expand_environment():
    assert parse_model_args("pretrained=${CKPT},dtype=float32", env={"CKPT": "/m"}) == \
        "pretrained=/m,dtype=float32"
    with pytest.raises(ModelregUsageError, match="CKPT is not set"):
        parse_model_args("pretrained=${CKPT}", env={})


@pytest.mark.parametrize(("name", "value"), [("modelreg_device", "gpu"),
                                             ("modelreg_batch_size", "0"),
                                             ("modelreg_batch_size", "big"),
                                             ("modelreg_seed", "x")])
def test_bad_values_name_the_option(name, value):
    with pytest.raises(ModelregUsageError, match=name.replace("_", "-").split("-")[-1].replace(
            "size", "batch")):
        make(cli={name: value})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("modelreg_gpus_per_worker", "two", r"'two' is not a number of GPUs; use 1, 2, \.\.\. or 0"),
    ("modelreg_gpus_per_worker", "-1", "is not a number of GPUs"),
    ("modelreg_drift_window", "many", r"'many' is not a number of sessions; use 0 \(off\)"),
    ("modelreg_xdist_group", "task", "'task' is not one of model, none"),
    ("modelreg_tracker", "neptune", "'neptune' is not one of mlflow, wandb"),
    ("modelreg_correction", "bonferroni", "'bonferroni' is not one of holm, none"),
])
def test_bad_values_of_the_scale_and_report_options(name, value, message):
    with pytest.raises(ModelregUsageError, match=message):
        make(cli={name: value})


def test_scale_and_report_options_resolve(tmp_path):
    settings = make(ini={"modelreg_gpus_per_worker": "2", "modelreg_drift_window": "5",
                         "modelreg_cache_dir": "cache", "modelreg_json": "out/r.json",
                         "modelreg_tracker": "wandb"}, tmp=tmp_path)
    assert (settings.gpus_per_worker, settings.drift_window) == (2, 5)
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.json_report == tmp_path / "out" / "r.json"
    assert settings.tracking.backend == "wandb"


def test_a_flags_environment_variable_counts_when_its_ini_key_is_unset(tmp_path):
    unset_bools = {"no_mlflow": False, "modelreg_update": False}  # what pytest's getini gives
    assert make(ini=unset_bools, tmp=tmp_path).tracking.enabled
    assert make(ini=unset_bools, env={"MODELREG_NO_MLFLOW": "1"}, tmp=tmp_path).tracking.enabled \
        is False
