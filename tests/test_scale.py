"""Scale and speed: the result cache, GPU pinning of xdist workers, grouping by model, GPU
requirements, and freeing a model when the process moves on to the next one."""

from __future__ import annotations

import gc
import importlib.util
import json
import shutil
import weakref
from pathlib import Path

import pytest

from pytest_modelreg.cache import ResultCache, uncacheable_reason
from pytest_modelreg.gpus import visible_gpus, worker_gpus
from pytest_modelreg.runner.lm_eval_runner import LmEvalRunner
from pytest_modelreg.spec import EvalSpec
from tests.conftest import TinyWorld, dedent

MARKED = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"], limit=30)
    def test_qa():
        pass
""")


def spec_for(tiny: TinyWorld, model: Path, task: str = "tiny_qa", limit: int = 20) -> EvalSpec:
    return EvalSpec(task=task, model="hf", model_args=f"pretrained={model}", device="cpu",
                    limit=limit)


# -- the result cache ---------------------------------------------------------------------------


def test_an_unchanged_model_is_served_from_the_cache(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_quality=MARKED)
    first = project.runpytest("--modelreg-record-missing")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*modelreg: evaluated tiny_qa on hf (30 docs in * s; model "
                                "loaded in * s)*"])
    folder = project.path / ".pytest_cache" / "d" / "modelreg"
    assert len(list(folder.glob("*/*.json"))) == 1  # one entry, beside the session manifest
    manifest = json.loads((folder / "last-session.json").read_text())
    assert [e["baseline"] for e in manifest["evaluations"]] == ["tiny_qa"]
    assert manifest["evaluations"][0]["cache_key"] and manifest["full_session"]

    second = project.runpytest()
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines([
        "*modelreg: cached tiny_qa on hf (30 docs; evaluated in * s on *; --modelreg-no-cache "
        "to re-run)*",
        "*tiny_qa*acc*1.0000*1.0000*pass*",
        "*modelreg: 1 of 1 evaluation(s) served from the result cache in *modelreg*"])
    assert "model loaded" not in second.stdout.str()

    third = project.runpytest("--modelreg-no-cache")
    third.assert_outcomes(passed=1)
    third.stdout.fnmatch_lines(["*modelreg: evaluated tiny_qa on hf (30 docs in * s; model "
                                "loaded in * s)*"])
    assert "served from the result cache" not in third.stdout.str()


def test_new_weights_in_the_same_folder_are_never_served_old_answers(
        project: pytest.Pytester, tiny: TinyWorld):
    """The key is the hash of the model's files, not its path (lm-eval issue 2715)."""
    model = project.path / "checkpoint"
    shutil.copytree(tiny.good, model)
    project.makefile(".ini", pytest=tiny.ini(model))
    project.makepyfile(test_quality=MARKED)
    project.runpytest("--modelreg-record-missing").assert_outcomes(passed=1)

    for weights in tiny.degraded.iterdir():  # a new checkpoint written over the old one
        shutil.copy2(weights, model / weights.name)
    worse = project.runpytest()
    worse.assert_outcomes(failed=1)
    worse.stdout.fnmatch_lines(["*modelreg: evaluated tiny_qa on hf*", "*acc*regressed*"])
    assert "served from the result cache" not in worse.stdout.str()


def test_changed_task_data_is_a_cache_miss(project: pytest.Pytester, tiny: TinyWorld):
    tasks = project.path / "tasks"
    shutil.copytree(tiny.tasks, tasks)
    for config in tasks.glob("*.yaml"):  # point the copies at the copied data
        config.write_text(config.read_text().replace(str(tiny.tasks), str(tasks)))
    project.makefile(".ini", pytest=tiny.ini(modelreg_include_path=str(tasks)))
    project.makepyfile(test_quality=MARKED)
    project.runpytest("--modelreg-record-missing").assert_outcomes(passed=1)

    data = tasks / "tiny_qa.jsonl"
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same docs, new order
    changed = project.runpytest()
    changed.stdout.fnmatch_lines(["*modelreg: evaluated tiny_qa on hf*", "*incomparable*"])
    assert "served from the result cache" not in changed.stdout.str()


def test_a_damaged_cache_entry_is_a_miss_and_is_rewritten(tiny: TinyWorld, tmp_path: Path):
    cache = ResultCache(tmp_path / "cache")
    first = LmEvalRunner((tiny.tasks,), cache=cache).evaluate(spec_for(tiny, tiny.good))
    assert not first.cached
    [entry] = list((tmp_path / "cache").rglob("*.json"))
    entry.write_text(entry.read_text()[:100])  # a truncated write, or disk trouble
    again = LmEvalRunner((tiny.tasks,), cache=cache).evaluate(spec_for(tiny, tiny.good))
    assert not again.cached and again.metrics == first.metrics
    hit = LmEvalRunner((tiny.tasks,), cache=cache).evaluate(spec_for(tiny, tiny.good))
    assert hit.cached and hit.metrics == first.metrics and hit.samples == first.samples
    assert hit.fingerprint == first.fingerprint
    assert hit.provenance["cached_from"]["seconds"] == pytest.approx(again.seconds)


def test_every_setting_of_the_evaluation_is_in_the_key(tiny: TinyWorld, tmp_path: Path):
    cache = ResultCache(tmp_path / "cache")
    runner = LmEvalRunner((tiny.tasks,), cache=cache)
    base = spec_for(tiny, tiny.good)
    runner.evaluate(base)
    others = [spec_for(tiny, tiny.good, limit=21), spec_for(tiny, tiny.good, task="tiny_qa2"),
              spec_for(tiny, tiny.degraded),
              EvalSpec(**{**base.__dict__, "seeds": (1, 1, 1, 1)}),
              EvalSpec(**{**base.__dict__, "num_fewshot": 1})]
    fresh = LmEvalRunner((tiny.tasks,), cache=cache)
    assert [fresh.evaluate(spec).cached for spec in others] == [False] * len(others)
    assert fresh.evaluate(base).cached


def test_only_models_identified_by_content_are_cached():
    assert uncacheable_reason({"sha256": "ab"}) is None
    endpoint = {"endpoint": "http://127.0.0.1:8000/v1", "served_model": "tiny"}
    assert "modelreg_cache_endpoints" in str(uncacheable_reason(endpoint))
    assert uncacheable_reason(endpoint, endpoints=True) is None
    assert uncacheable_reason({"source": "org/model", "revision": "0" * 40}) is None
    reason = uncacheable_reason({"source": "org/model", "revision": "main"})
    assert reason is not None and "pin revision=<commit>" in reason


# -- one model at a time --------------------------------------------------------------------


def test_the_previous_model_is_freed_when_the_process_moves_on(tiny: TinyWorld):
    runner = LmEvalRunner((tiny.tasks,))
    runner.evaluate(spec_for(tiny, tiny.good))
    first = weakref.ref(runner.model(spec_for(tiny, tiny.good))[0]._model)
    runner.evaluate(spec_for(tiny, tiny.degraded))
    gc.collect()
    assert first() is None, "the first model's weights are still referenced"
    assert len(runner.freed) == 1 and str(tiny.good) in runner.freed[0][0]
    runner.close()
    assert len(runner.freed) == 2


# -- GPUs and xdist workers -----------------------------------------------------------------


def test_worker_gpu_shares():
    gpus = ["0", "1", "2", "3"]
    assert [worker_gpus(i, gpus, 1) for i in range(5)] == [["0"], ["1"], ["2"], ["3"], ["0"]]
    assert [worker_gpus(i, gpus, 2) for i in range(3)] == [["0", "1"], ["2", "3"], ["0", "1"]]
    assert worker_gpus(0, ["0"], 2) == ["0"]  # fewer GPUs than asked for: all of them
    assert worker_gpus(0, [], 1) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 6"}) == ["4", "6"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({}, count_gpus=lambda: 2) == ["0", "1"]


WHERE_AM_I = dedent("""
    import os
    from pathlib import Path

    import pytest

    def note(name):
        worker = os.environ["PYTEST_XDIST_WORKER"]
        Path(f"{name}-{worker}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))

    @pytest.mark.parametrize("i", range(4))
    def test_where(i):
        note("seen")
""")


@pytest.mark.parametrize(("per_worker", "expected"), [("1", {"0", "1"}), ("2", {"0,1", "2,3"}),
                                                      ("0", {"0,1,2,3"})])
def test_xdist_workers_get_their_own_gpus(project: pytest.Pytester, tiny: TinyWorld,
                                          monkeypatch: pytest.MonkeyPatch, per_worker: str,
                                          expected: set[str]):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    project.makepyfile(test_where=WHERE_AM_I)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2",
                                          f"--modelreg-gpus-per-worker={per_worker}")
    result.assert_outcomes(passed=4)
    seen = {p.read_text() for p in project.path.glob("seen-gw*.txt")}
    assert seen <= expected and len(seen) == min(len(expected), 2)


def test_a_replacement_worker_gets_the_crashed_workers_gpu(project: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch):
    """One worker on GPU 0 of two: its replacement (gw1) must get GPU 0 again, not GPU 1."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    project.makepyfile(test_crash=dedent("""
        import os
        from pathlib import Path

        import pytest

        def note(name):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            Path(f"{name}-{worker}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))

        def test_crash():
            note("crashed")
            os._exit(1)  # a segfault or the OOM killer

        @pytest.mark.parametrize("i", range(3))
        def test_after_the_crash(i):
            note("after")
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1")
    result.assert_outcomes(passed=3, failed=1)
    assert (project.path / "crashed-gw0.txt").read_text() == "0"
    assert (project.path / "after-gw1.txt").read_text() == "0"


def test_tests_of_one_model_share_a_worker(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_models=dedent(f"""
        import pytest

        DEGRADED = "pretrained={tiny.degraded}"

        @pytest.mark.modelreg(task="tiny_qa", limit=10, min=0)
        def test_good_a():
            pass

        @pytest.mark.modelreg(task="tiny_qa2", limit=10, min=0)
        def test_good_b():
            pass

        @pytest.mark.modelreg(task="tiny_qa", limit=10, min=0, model_args=DEGRADED)
        def test_degraded_a():
            pass

        @pytest.mark.modelreg(task="tiny_qa2", limit=10, min=0, model_args=DEGRADED)
        def test_degraded_b():
            pass
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist",
                                          "loadgroup", "--modelreg-record-missing")
    result.assert_outcomes(passed=4)
    output = result.stdout.str()
    assert output.count("model loaded in") == 2 and output.count("model reused") == 2


# -- GPU requirements -----------------------------------------------------------------------


def test_gpu_tests_skip_with_a_reason_where_there_is_none(project: pytest.Pytester):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the requirement is met")
    project.makepyfile(test_gpu=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", gpu=True)
        def test_needs_gpu():
            pass

        @pytest.mark.modelreg(task="tiny_qa", min_gpu_memory="40GB")
        def test_needs_memory():
            pass

        def test_fixture(modelreg):
            modelreg.require_gpu(min_memory="80 GiB")
    """))
    result = project.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*SKIPPED*modelreg: needs a CUDA GPU; torch sees none here*"])
    assert "evaluated" not in result.stdout.str()


@pytest.mark.parametrize("argument", ["gpu='yes'", "min_gpu_memory='lots'"])
def test_bad_gpu_requirements_are_one_line_errors(project: pytest.Pytester, argument: str):
    project.makepyfile(test_gpu=dedent(f"""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", {argument})
        def test_needs_gpu():
            pass
    """))
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    name = argument.split("=")[0]
    result.stdout.fnmatch_lines([f"*test_needs_gpu: {name}*"])


def test_cache_entries_are_plain_json(tiny: TinyWorld, tmp_path: Path):
    cache = ResultCache(tmp_path)
    result = LmEvalRunner((tiny.tasks,), cache=cache).evaluate(spec_for(tiny, tiny.good))
    [entry] = list(tmp_path.rglob("*.json"))
    payload = json.loads(entry.read_text())
    assert payload["metrics"] == result.metrics and len(payload["samples"]) == 20
    assert payload["key"] == entry.stem and payload["schema"] == 1


# -- other engines ------------------------------------------------------------------------------


def test_engine_arguments_reach_lm_eval_untouched(tiny: TinyWorld):
    """vllm's tensor_parallel_size / data_parallel_size (or any engine's own arguments) are passed
    to lm-eval's model class exactly as written; here a registered HFLM subclass records them."""
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    seen: list[str] = []

    @register_model("modelreg-probe")
    class Probe(HFLM):
        @classmethod
        def create_from_arg_string(cls, arg_string, additional_config=None):
            seen.append(arg_string)
            kept = ",".join(p for p in arg_string.split(",") if not p.startswith("engine_"))
            return super().create_from_arg_string(kept, additional_config)

    model_args = (f"pretrained={tiny.good},engine_tensor_parallel_size=2,"
                  "engine_data_parallel_size=2,engine_gpu_memory_utilization=0.8")
    runner = LmEvalRunner((tiny.tasks,))
    result = runner.evaluate(EvalSpec(task="tiny_qa", model="modelreg-probe", model_args=model_args,
                                      device="cpu", limit=5))
    assert seen == [model_args] and result.n_samples == 5


def test_a_missing_engine_is_a_one_line_error_with_the_install_command(tiny: TinyWorld):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    from pytest_modelreg.errors import EvaluationError

    runner = LmEvalRunner((tiny.tasks,))
    with pytest.raises(EvaluationError, match=r"needs a package that is not installed .*"
                                              r"pip install 'lm-eval\[vllm\]'"):
        runner.evaluate(EvalSpec(task="tiny_qa", model="vllm", device="cpu", limit=5,
                                 model_args=f"pretrained={tiny.good},tensor_parallel_size=2"))
