"""Issue 7, scenarios 10, 11 and 14: remote code and pickle weights need the model's own opt-in;
CUDA out of memory ends the test with a hint, never a silent retry with a smaller batch."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_modelreg.errors import EvaluationError
from pytest_modelreg.models import (
    check_model_files,
    lm_eval_model_args,
    pickle_weights,
    remote_code_needed,
)
from pytest_modelreg.runner.lm_eval_runner import LmEvalRunner
from pytest_modelreg.spec import EvalSpec
from tests.conftest import TinyWorld
from tests.test_bad_input import marked, run

CONFIGURATION = '''\
from transformers import GPT2Config


class TinyConfig(GPT2Config):
    model_type = "tiny-custom"
'''
MODELING = '''\
from pathlib import Path

from transformers import GPT2LMHeadModel

from .configuration_tiny import TinyConfig

Path({sentinel!r}).write_text("imported")  # proves the custom code ran (or did not)


class TinyForCausalLM(GPT2LMHeadModel):
    config_class = TinyConfig
'''


def one_line(result: pytest.RunResult, pattern: str) -> None:
    """The failure is the plugin's one line: no traceback from inside a library."""
    result.stdout.fnmatch_lines([f"modelreg: {pattern}"])
    assert "Traceback" not in result.stdout.str()
    assert "site-packages" not in result.stdout.str().split("short test summary")[0]


def remote_code_model(tiny: TinyWorld, folder: Path, model_type: str = "tiny-custom") -> Path:
    """The tiny model as an architecture transformers does not know (``tiny-custom``): its
    config and model classes come from files that auto_map names."""
    shutil.copytree(tiny.good, folder)
    sentinel = folder.parent / f"{folder.name}-imported"
    (folder / "configuration_tiny.py").write_text(CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(MODELING.format(sentinel=str(sentinel)))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "configuration_tiny.TinyConfig",
                          "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def pickle_model(tiny: TinyWorld, folder: Path) -> Path:
    """The tiny model with its weights only in pytorch_model.bin (a pickle)."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny.good, folder)
    state = AutoModelForCausalLM.from_pretrained(tiny.good).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.fixture
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """transformers copies remote code into HF_MODULES_CACHE (read when it was imported):
    point it at tmp so nothing is written under ~/.cache, and forget the imported modules."""
    import transformers.dynamic_module_utils as dynamic

    cache = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield cache
    for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
        del sys.modules[name]


# -- 10: remote code -----------------------------------------------------------------------------
def test_remote_code_is_refused_before_loading_without_the_models_opt_in(
        project: pytest.Pytester, tiny: TinyWorld, tmp_path: Path):
    folder = remote_code_model(tiny, tmp_path / "remote")
    project.makepyfile(marked(task="tiny_qa", limit=3, model_args=f"pretrained={folder}"))
    result = run(project)
    result.assert_outcomes(failed=1)
    one_line(result, f"model {folder} needs remote code (configuration_tiny.py, "
                     "modeling_tiny.py), which runs with your "
                     "permissions when it loads; review it, then opt in for this model only with "
                     f"trust_remote_code=True in its model_args: 'pretrained={folder},"
                     "trust_remote_code=True'")
    assert not (tmp_path / "remote-imported").exists()  # refused before anything ran


def test_with_the_opt_in_lm_eval_loads_the_custom_class(tiny: TinyWorld, tmp_path: Path,
                                                        modules_cache: Path):
    folder = remote_code_model(tiny, tmp_path / "remote")
    runner = LmEvalRunner((tiny.tasks,))
    spec = EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=3,
                    model_args=f"pretrained={folder},trust_remote_code=True")
    result = runner.evaluate(spec)
    lm = runner._models[spec.model_key]
    assert type(lm.model).__name__ == "TinyForCausalLM"
    assert (tmp_path / "remote-imported").exists() and any(modules_cache.rglob("modeling_tiny.py"))
    # The code is part of the model's identity: an edit to it is a new model for the cache.
    assert result.n_samples == 3 and "modeling_tiny.py" in result.provenance["model"]["files"]
    # The opt-in went to this model's loader only: nothing global was switched on.
    assert "HF_DATASETS_TRUST_REMOTE_CODE" not in os.environ
    runner.close()


def test_the_opt_in_is_per_model(tiny: TinyWorld, tmp_path: Path):
    first = remote_code_model(tiny, tmp_path / "first")
    second = remote_code_model(tiny, tmp_path / "second")
    assert remote_code_needed(first) == ["configuration_tiny.py", "modeling_tiny.py"]
    check_model_files("hf", f"pretrained={first},trust_remote_code=True")
    for value in ("False", "no", ""):
        with pytest.raises(EvaluationError, match=f"model {second} needs remote code"):
            check_model_files("hf", f"pretrained={second},trust_remote_code={value}")


def test_remote_code_the_cache_did_not_show_gets_the_same_message(
        tiny: TinyWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A hub model that is not in the local cache cannot be checked before loading; then
    transformers refuses it (lm-eval passes trust_remote_code=False) and the plugin says why."""
    import pytest_modelreg.runner.lm_eval_runner as runner_module

    monkeypatch.setattr(runner_module, "check_model_files", lambda model, model_args: None)
    folder = remote_code_model(tiny, tmp_path / "remote")
    runner = LmEvalRunner((tiny.tasks,))
    with pytest.raises(EvaluationError, match=f"^model {folder} needs remote code \\(custom "
                                              "code in its repository\\), .* trust_remote_code=True"):
        runner.evaluate(EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=3,
                                 model_args=f"pretrained={folder}"))
    assert not (tmp_path / "remote-imported").exists()


def test_auto_map_on_an_architecture_transformers_knows_needs_no_opt_in(
        tiny: TinyWorld, tmp_path: Path):
    """Old checkpoints keep auto_map after transformers gained the architecture: transformers'
    own class loads (without trust_remote_code it never runs the files), so no opt-in is asked."""
    folder = remote_code_model(tiny, tmp_path / "native", model_type="gpt2")
    runner = LmEvalRunner((tiny.tasks,))
    spec = EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=3,
                    model_args=f"pretrained={folder}")
    assert runner.evaluate(spec).n_samples == 3
    assert type(runner._models[spec.model_key].model).__name__ == "GPT2LMHeadModel"
    assert not (tmp_path / "native-imported").exists()
    runner.close()


def test_tokenizer_and_other_repo_code_are_named(tmp_path: Path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x-custom", "auto_map": {
        "AutoConfig": "acme/base--configuration_x.XConfig"}}))
    assert remote_code_needed(tmp_path) == ["configuration_x.py from acme/base",
                                            "tokenization_x.py"]
    with pytest.raises(EvaluationError, match=r"\(configuration_x.py from acme/base, "
                                              r"tokenization_x.py\)"):
        check_model_files("hf", f"pretrained={tmp_path}")


def fake_hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face hub cache holding ``repo`` at main, as huggingface_hub lays it out."""
    commit = "0" * 40
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    return snapshot


def test_hub_ids_are_checked_in_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    config = json.dumps({"model_type": "x-custom",
                         "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}})
    fake_hub_cache(tmp_path, "acme/remote", {"config.json": config.encode(),
                                             "model.safetensors": b""})
    fake_hub_cache(tmp_path, "acme/pickled", {"config.json": b"{}",
                                              "pytorch_model.bin": b""})
    with pytest.raises(EvaluationError, match="model acme/remote needs remote code"):
        check_model_files("hf", "pretrained=acme/remote")
    check_model_files("hf", "pretrained=acme/remote,trust_remote_code=True")
    with pytest.raises(EvaluationError, match=r"acme/pickled .*\(pytorch_model.bin\)"):
        check_model_files("hf", "pretrained=acme/pickled")
    check_model_files("hf", "pretrained=acme/pickled,allow_pickle=True")
    check_model_files("hf", "pretrained=acme/not-cached")  # nothing to check offline


# -- 11: pickle weights --------------------------------------------------------------------------
def test_pickle_weights_are_refused_without_the_models_opt_in(
        project: pytest.Pytester, tiny: TinyWorld, tmp_path: Path):
    folder = pickle_model(tiny, tmp_path / "pickled")
    project.makepyfile(marked(task="tiny_qa", limit=3, model_args=f"pretrained={folder}"))
    result = run(project)
    result.assert_outcomes(failed=1)
    one_line(result, f"model {folder} (pretrained=) has weights only as pickle files "
                     "(pytorch_model.bin), which can run code when loaded; convert them to "
                     "safetensors (*), or opt in for this model only with allow_pickle=True in "
                     f"its model_args: 'pretrained={folder},allow_pickle=True'")


def test_allow_pickle_loads_and_never_reaches_lm_eval(tiny: TinyWorld, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    from lm_eval.models.huggingface import HFLM

    seen: list[str] = []
    original = HFLM.create_from_arg_string.__func__  # type: ignore[attr-defined]

    def recording(cls: type, arg_string: str, additional_config: Any = None) -> Any:
        seen.append(arg_string)
        return original(cls, arg_string, additional_config)

    monkeypatch.setattr(HFLM, "create_from_arg_string", classmethod(recording))
    folder = pickle_model(tiny, tmp_path / "pickled")
    runner = LmEvalRunner((tiny.tasks,))
    pickled = runner.evaluate(EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=5,
                                       model_args=f"pretrained={folder},allow_pickle=True"))
    safe = runner.evaluate(EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=5,
                                    model_args=f"pretrained={tiny.good}"))
    runner.close()
    assert seen == [f"pretrained={folder}", f"pretrained={tiny.good}"]
    assert pickled.metrics == safe.metrics  # the same weights, read from the pickle
    assert [s.values for s in pickled.samples] == [s.values for s in safe.samples]


def test_safetensors_win_over_pickles_beside_them(tiny: TinyWorld, tmp_path: Path):
    folder = shutil.copytree(tiny.good, tmp_path / "both")
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: reading it would fail")
    assert pickle_weights(folder) == []
    runner = LmEvalRunner((tiny.tasks,))
    result = runner.evaluate(EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=3,
                                      model_args=f"pretrained={folder}"))
    runner.close()
    assert result.n_samples == 3


def test_allow_pickle_is_left_out_of_the_cache_key(tiny: TinyWorld, tmp_path: Path):
    from pytest_modelreg.cache import ResultCache

    runner = LmEvalRunner((tiny.tasks,), cache=ResultCache(tmp_path / "cache"))
    manager = runner.task_manager_for("tiny_qa")
    keys = []
    for args in (f"pretrained={tiny.good}", f"pretrained={tiny.good},allow_pickle=True"):
        spec = EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=3, model_args=args)
        _, loaded = runner._build_tasks(spec, manager, "tiny_qa")
        keys.append(runner._cache_key(spec, loaded))
    assert keys[0] is not None and keys[0] == keys[1]
    assert lm_eval_model_args("pretrained=x, allow_pickle=True,dtype=float32") == \
        "pretrained=x,dtype=float32"


def test_trainer_state_pickles_are_not_weights(tmp_path: Path):
    for name in ("training_args.bin", "optimizer.pt", "rng_state_0.pth", "pytorch_model-00001-of-00002.bin",
                 "pytorch_model.bin.index.json", "config.json"):
        (tmp_path / name).write_bytes(b"")
    assert pickle_weights(tmp_path) == ["pytorch_model-00001-of-00002.bin"]


# -- 14: CUDA out of memory ----------------------------------------------------------------------
_CALLS: list[str] = []


@pytest.fixture(scope="module")
def oom_models() -> None:
    """lm-eval model types whose evaluation (or loading) runs out of CUDA memory."""
    import torch
    from lm_eval.api.registry import MODEL_REGISTRY, register_model
    from lm_eval.models.huggingface import HFLM

    if "modelreg-oom" in MODEL_REGISTRY:
        return

    @register_model("modelreg-oom")
    class OutOfMemory(HFLM):
        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            _CALLS.append("loglikelihood")
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total)")

    @register_model("modelreg-oom-runtime")
    class OutOfMemoryRuntime(HFLM):
        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            _CALLS.append("loglikelihood")
            raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ...")

    @register_model("modelreg-oom-load")
    class OutOfMemoryLoad(HFLM):
        def __init__(self, **kwargs: Any) -> None:
            _CALLS.append("load")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")


@pytest.mark.parametrize("model", ["modelreg-oom", "modelreg-oom-runtime"])
def test_out_of_memory_errors_with_a_hint_and_is_never_retried(
        project: pytest.Pytester, tiny: TinyWorld, oom_models: None, model: str):
    _CALLS.clear()
    project.makepyfile(marked(task="tiny_qa", limit=3, model=model, batch_size=4))
    result = run(project)
    result.assert_outcomes(failed=1)
    one_line(result, f"CUDA out of memory evaluating tiny_qa on {model}(pretrained={tiny.good}) "
                     "with batch size 4; the batch size is never lowered behind your back: set a "
                     "smaller batch_size (marker/model, or --modelreg-batch-size), run fewer xdist "
                     "workers per GPU, or set a smaller max_length in model_args")
    assert _CALLS == ["loglikelihood"]  # attempted once: no retry with a smaller batch


def test_out_of_memory_while_loading(tiny: TinyWorld, oom_models: None):
    _CALLS.clear()
    runner = LmEvalRunner((tiny.tasks,))
    with pytest.raises(EvaluationError, match=r"^CUDA out of memory loading model modelreg-oom-load"
                                              r"\(pretrained=.*\) with batch size auto; ") as info:
        runner.evaluate(EvalSpec(task="tiny_qa", model="modelreg-oom-load", device="cpu",
                                 limit=3, batch_size="auto",
                                 model_args=f"pretrained={tiny.good}"))
    assert "\n" not in str(info.value) and _CALLS == ["load"]


def test_the_batch_size_used_is_recorded(tiny: TinyWorld):
    """``auto`` lets lm-eval pick a size (its documented search): the pick is recorded beside
    the request, in the provenance that reaches reports and baselines."""
    runner = LmEvalRunner((tiny.tasks,))
    auto = runner.evaluate(EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=3,
                                    batch_size="auto", model_args=f"pretrained={tiny.good}"))
    fixed = runner.evaluate(EvalSpec(task="tiny_qa", model="hf", device="cpu", limit=3,
                                     batch_size="2", model_args=f"pretrained={tiny.good}"))
    runner.close()
    detected = auto.raw["config"]["batch_sizes"]
    assert detected and auto.provenance["batch_size"] == ",".join(map(str, detected))
    assert auto.provenance["batch_size_requested"] == "auto"
    assert (fixed.provenance["batch_size"], fixed.provenance["batch_size_requested"]) == ("2", "2")
