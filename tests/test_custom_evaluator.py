"""Evaluations by a user's own function (pytest_modelreg.custom): the result it builds, its
checks of what the function returns, the cache, and a regression caught end to end on the
digits example (a torch classifier, examples/digits)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import statistics
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_modelreg.cache import ResultCache
from pytest_modelreg.custom import (
    FunctionEvaluator,
    FunctionOutput,
    content_hash,
    source_hash,
)
from pytest_modelreg.errors import EvaluationError
from pytest_modelreg.session import ModelregSession, write_pending_baselines
from pytest_modelreg.settings import Settings
from pytest_modelreg.spec import EvalSpec, MetricCheck
from pytest_modelreg.stats import BOOTSTRAP, MCNEMAR_EXACT
from pytest_modelreg.verdict import INCOMPARABLE, PASS, RECORDED, REGRESSED

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"
N_DOCS = 200


# -- a fake model: a JSON file naming the docs it gets wrong ----------------------------------


def write_model(folder: Path, wrong: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps({"wrong": wrong}))
    return folder


DATA_VERSION = ["v1"]  # the data set the fake evaluation reads (tests change it)


def evaluate_fake(model_args: dict[str, str], limit: int | None) -> FunctionOutput:
    wrong = set(json.loads((Path(model_args["pretrained"]) / "model.json").read_text())["wrong"])
    ids = range(N_DOCS if limit is None else limit)
    return FunctionOutput(
        samples={i: {"acc": float(i not in wrong), "f1": [i % 2, (i + (i in wrong)) % 2]}
                 for i in ids},
        docs={i: f"{DATA_VERSION[0]} question {i}" for i in ids},
        aggregate={"f1": positive_f1},
    )


def positive_f1(items: list[list[int]]) -> float:
    """F1 of class 1 from (label, prediction) pairs: a corpus metric, not a mean over docs."""
    tp = sum(1 for label, guess in items if label == guess == 1)
    predicted = sum(1 for _, guess in items if guess == 1)
    actual = sum(1 for label, _ in items if label == 1)
    return 2 * tp / (predicted + actual) if predicted + actual else 0.0


def spec_for(evaluator, model: Path | None = None, **extra) -> EvalSpec:
    args = f"pretrained={model}" if model is not None else ""
    return EvalSpec(task="fake", model="fake", model_args=args, device="cpu", evaluator=evaluator,
                    baseline_name="fake", **extra)


def evaluate(spec: EvalSpec, cache: ResultCache | None = None):
    return FunctionEvaluator(Settings(device="cpu"), None, cache).evaluate(spec)


# -- the result ------------------------------------------------------------------------------


def test_result_shape(tmp_path: Path):
    model = write_model(tmp_path / "m", wrong=[3, 5, 7])
    result = evaluate(spec_for(evaluate_fake, model))
    accs = [0.0 if i in (3, 5, 7) else 1.0 for i in range(N_DOCS)]
    assert result.metrics["acc"] == pytest.approx(197 / 200)
    assert result.stderr["acc"] == pytest.approx(statistics.stdev(accs) / math.sqrt(N_DOCS))
    assert result.metrics["f1"] == pytest.approx(positive_f1([[i % 2, (i + (i in (3, 5, 7))) % 2]
                                                              for i in range(N_DOCS)]))
    assert result.stderr["f1"] is None  # a corpus metric: the bootstrap compares it
    assert result.higher_is_better == {"acc": True, "f1": True}
    assert result.aggregators == {"f1": positive_f1}
    assert result.n_samples == len(result.samples) == N_DOCS
    assert [s.doc_id for s in result.samples] == list(range(N_DOCS))
    first = result.samples[0]
    assert first.values == {"acc": 1.0} and first.items == {"f1": [0, 0]}
    assert first.prompt == "v1 question 0" and len(first.doc_hash) == 16
    assert set(result.fingerprint) == {"evaluator", "evaluator_source", "docs", "n_docs", "limit",
                                       "metrics", "aggregate"}
    assert result.fingerprint["evaluator"] == "evaluate_fake"
    assert result.fingerprint["n_docs"] == N_DOCS and result.fingerprint["metrics"] == ["acc", "f1"]
    provenance = result.provenance
    assert provenance["model"]["sha256"] and provenance["model"]["files"] == ["model.json"]
    assert provenance["seeds"]["random_seed"] == 0 and provenance["recorded_at"].endswith("Z")
    assert provenance["evaluator"] == "tests.test_custom_evaluator.evaluate_fake"
    assert provenance["hardware"]["device"] == "cpu" and result.seconds > 0
    json.dumps(result.raw)  # the MLflow artifact and the cache entry are plain JSON


def test_arguments_by_name():
    seen = {}

    def evaluator(**kwargs):
        seen.update(kwargs)
        return FunctionOutput(samples=[{"acc": 1}, {"acc": 0}])

    spec = EvalSpec(task="t", model="onnx", model_args="path=./x.onnx,threads=4", limit=50,
                    device="cpu", batch_size="16", seeds=(7, 7, 7, 7), evaluator=evaluator)
    result = evaluate(spec)
    assert seen == {"model_args": {"path": "./x.onnx", "threads": "4"}, "model": "onnx",
                    "task": "t", "limit": 50, "seed": 7, "device": "cpu", "batch_size": 16}
    assert [s.doc_id for s in result.samples] == [0, 1]  # a list: doc ids 0, 1, ...
    assert result.metrics == {"acc": 0.5}


def test_only_the_parameters_it_names():
    def evaluator(limit, extra="default"):
        return FunctionOutput(samples={"a": {"acc": True}, "b": {"acc": False}})

    assert evaluate(spec_for(evaluator)).metrics == {"acc": 0.5}

    def needs_more(model_args, datset):
        raise AssertionError("never called")

    with pytest.raises(EvaluationError) as error:
        evaluate(spec_for(needs_more))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("evaluator tests.test_custom_evaluator.test_only_the_parameters_it_"
                              "names.<locals>.needs_more takes a parameter 'datset' that the "
                              "plugin cannot supply")
    assert "model_args, model, task, limit, seed, device, batch_size" in message


def test_stderr_rules():
    def one_doc():
        return FunctionOutput(samples={0: {"acc": 1.0}})

    assert evaluate(spec_for(one_doc)).stderr == {"acc": None}  # n < 2: unknown, not 0

    def given():
        return FunctionOutput(samples=[{"acc": 1.0}, {"acc": 0.0}, {"acc": 1.0}],
                              metrics={"acc": 0.5, "loss": 2.5}, stderr={"loss": 0.1},
                              higher_is_better={"loss": False})

    result = evaluate(spec_for(given))
    assert result.metrics == {"acc": 0.5, "loss": 2.5}  # the given metrics, not the means
    assert result.stderr == {"acc": None, "loss": 0.1}  # acc is not the mean of its samples
    assert result.higher_is_better == {"acc": True, "loss": False}

    def not_finite():
        return FunctionOutput(samples=[{"loss": float("nan")}, {"loss": 1.0}])

    result = evaluate(spec_for(not_finite))  # passed on: the verdict marks it invalid
    assert math.isnan(result.metrics["loss"]) and result.stderr == {"loss": None}


def test_doc_hashes():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert content_hash(image) == content_hash(image.copy()) == content_hash(image.T.T.copy())
    assert content_hash(image) != content_hash(image.astype(np.float64))
    assert content_hash((image, 3)) != content_hash((image, 4))
    assert content_hash(torch.from_numpy(image)) == content_hash(torch.from_numpy(image.copy()))
    assert content_hash(torch.ones(2, dtype=torch.bfloat16)) != content_hash(torch.ones(2))
    assert content_hash(1) != content_hash("1") != content_hash([1]) != content_hash(b"1")
    assert content_hash({"a": 1, "b": [2]}) == content_hash({"b": [2], "a": 1})
    with pytest.raises(EvaluationError, match="doc is a object; expected doc content as str"):
        content_hash(object())

    def with_docs(ids=(0, 1, 2)):
        return FunctionOutput(samples={i: {"acc": 1.0} for i in ids},
                              docs={i: image + i for i in ids})

    first, again = evaluate(spec_for(with_docs)), evaluate(spec_for(with_docs))
    assert [s.doc_hash for s in first.samples] == [s.doc_hash for s in again.samples]
    assert first.fingerprint == again.fingerprint
    assert len({s.doc_hash for s in first.samples}) == 3

    def without_docs():
        return FunctionOutput(samples={i: {"acc": 1.0} for i in (0, 1, 2)})

    bare = evaluate(spec_for(without_docs))
    assert [s.doc_hash for s in bare.samples] != [s.doc_hash for s in first.samples]
    assert [s.prompt_hash for s in bare.samples] == [s.prompt_hash for s in first.samples]


def returning(value):
    def evaluator():
        return value

    return evaluator


NAME = "evaluator tests.test_custom_evaluator.returning.<locals>.evaluator"


@pytest.mark.parametrize(("value", "expected"), [
    (None, "returned NoneType; expected FunctionOutput(samples=...) from pytest_modelreg.custom"),
    ({"sample": {}}, "returned a dict with an unknown key 'sample' (did you mean 'samples'?)"),
    ({"metrics": {"acc": 1}}, "returned a dict with no 'samples'; expected the fields"),
    (FunctionOutput(samples="abc"), "returned samples as str; expected a dict of doc id"),
    (FunctionOutput(samples={}), "returned no samples; expected at least one doc's outcome"),
    (FunctionOutput(samples={0: 1.0}), "returned samples[0] as float; expected a dict of metric"),
    (FunctionOutput(samples={0: {"acc": "yes"}}), "returned samples[0]['acc'] = 'yes'; expected a "
     "number"),
    (FunctionOutput(samples={True: {"acc": 1}}), "returned samples with a doc id True (bool)"),
    (FunctionOutput(samples={0: {}}), "returned no metric; expected numbers in samples"),
    (FunctionOutput(samples=[{"acc": 1}], metrics={"acc": "x"}), "returned metrics['acc'] = 'x'"),
    (FunctionOutput(samples=[{"acc": 1}], higher_is_better={"ac": True}),
     "returned higher_is_better for 'ac', which is not a metric (did you mean 'acc'?)"),
    (FunctionOutput(samples=[{"acc": 1}], higher_is_better={"acc": "yes"}),
     "returned higher_is_better['acc'] = 'yes'; expected True or False"),
    (FunctionOutput(samples=[{"acc": 1}], stderr={"acc": "x"}), "returned stderr['acc'] = 'x'"),
    (FunctionOutput(samples=[{"acc": 1}, {"acc": 0}], docs=["a"]),
     "returned no docs entry for doc id 1; expected docs and samples with the same doc ids"),
    (FunctionOutput(samples=[{"acc": 1}], docs=[object()]), "returned docs[0] is a object"),
    (FunctionOutput(samples=[{"acc": 1}], aggregate={"f1": "mean"}), "returned aggregate="),
    (FunctionOutput(samples=[{"acc": 1}], aggregate={"f1": len}), "names 'f1' in aggregate= but "
     "no doc has an item for it"),
    (FunctionOutput(samples=[{"acc": 1, "f1": [1, 1]}], aggregate={"f1": str}),
     "aggregate 'f1' returned '[[1, 1]]'; expected a number"),
], ids=lambda v: "" if not isinstance(v, str) else v[:30])
def test_wrong_return_is_one_line_error(value, expected):
    with pytest.raises(EvaluationError) as error:
        evaluate(spec_for(returning(value)))
    message = str(error.value)
    assert message.startswith(NAME) and expected in message
    assert "\n" not in message


def test_an_array_where_a_number_belongs_is_one_line():
    np = pytest.importorskip("numpy")
    with pytest.raises(EvaluationError) as error:
        evaluate(spec_for(returning(FunctionOutput(samples={0: {"acc": np.eye(3)}}))))
    expected = "returned samples[0]['acc'] = array([[1., 0., 0.], [0., 1., 0.], [0...; expected a"
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_the_functions_own_errors_keep_their_traceback():
    def broken():
        raise KeyError("pretrained")

    with pytest.raises(KeyError, match="pretrained"):
        evaluate(spec_for(broken))


def test_dict_return_and_numpy_values():
    np = pytest.importorskip("numpy")

    def evaluator():
        correct = np.array([True, False, True, True])
        return {"samples": {np.int64(i): {"acc": c} for i, c in enumerate(correct)},
                "docs": np.eye(4)}

    result = evaluate(spec_for(evaluator))
    assert result.metrics == {"acc": 0.75} and [s.doc_id for s in result.samples] == [0, 1, 2, 3]


# -- the cache -------------------------------------------------------------------------------

MODULE = '''
import json
from pathlib import Path

from pytest_modelreg.custom import FunctionOutput

CALLS = []


def evaluate(model_args):
    CALLS.append(1)
    wrong = json.loads((Path(model_args["pretrained"]) / "model.json").read_text())["wrong"]
    return FunctionOutput(samples={i: {"acc": float(i not in wrong), "f1": [1, i % 2]}
                                   for i in range(10)}, aggregate={"f1": mean_of_guesses})


def mean_of_guesses(items):
    return sum(guess for _, guess in items) / len(items)
'''


def load_module(path: Path, source: str):
    path.write_text(textwrap.dedent(source))
    sys.modules.pop(path.stem, None)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # a cached result finds its aggregate function by name
    spec.loader.exec_module(module)
    return module


def test_cache_hit_and_misses(tmp_path: Path):
    cache = ResultCache(tmp_path / "cache")
    model = write_model(tmp_path / "model", wrong=[1])
    module = load_module(tmp_path / "modelreg_fn_cache_test.py", MODULE)
    try:
        first = evaluate(spec_for(module.evaluate, model), cache)
        assert not first.cached and first.cache_key is not None and len(module.CALLS) == 1

        hit = evaluate(spec_for(module.evaluate, model), cache)  # unchanged model and function
        assert hit.cached and hit.cache_key == first.cache_key and len(module.CALLS) == 1
        assert hit.metrics == first.metrics and hit.samples == first.samples
        assert hit.aggregators == {"f1": module.mean_of_guesses}  # the bootstrap can run
        assert hit.fingerprint == first.fingerprint

        write_model(model, wrong=[1, 2])  # new weights in the same folder
        new_weights = evaluate(spec_for(module.evaluate, model), cache)
        assert not new_weights.cached and new_weights.cache_key != first.cache_key
        assert len(module.CALLS) == 2

        edited = load_module(tmp_path / "modelreg_fn_cache_test.py",
                             MODULE.replace("range(10)", "range(10 + 2)"))  # another size: no stale .pyc
        changed = evaluate(spec_for(edited.evaluate, model), cache)
        assert not changed.cached and changed.cache_key != new_weights.cache_key
        assert len(edited.CALLS) == 1
        assert changed.fingerprint["evaluator_source"] != first.fingerprint["evaluator_source"]
        assert evaluate(spec_for(edited.evaluate, model), cache).cached
    finally:
        sys.modules.pop("modelreg_fn_cache_test", None)


def test_no_cache_without_a_model_identity(tmp_path: Path):
    cache = ResultCache(tmp_path / "cache")
    result = evaluate(spec_for(returning(FunctionOutput(samples=[{"acc": 1}]))), cache)
    assert result.cache_key is None and not (tmp_path / "cache").exists()


def comment_version():
    def f(x):
        return x + 1  # one

    return f


def reformatted_version():
    def f(x):
        # a comment, and other formatting
        return (x
                + 1)

    return f


def changed_version():
    def f(x):
        return x + 2

    return f


def test_source_hash_ignores_comments_not_code():
    assert source_hash(comment_version()) is not None
    assert source_hash(comment_version()) == source_hash(reformatted_version())
    assert source_hash(changed_version()) != source_hash(comment_version())


# -- verdicts through the session --------------------------------------------------------------


def session(tmp_path: Path, **settings) -> ModelregSession:
    return ModelregSession(Settings(baseline_dir=tmp_path / "baselines", device="cpu", **settings))


def judge(tmp_path: Path, model: Path, metric: str = "acc", **settings):
    modelreg = session(tmp_path, **settings)
    result, _ = modelreg.evaluate(spec_for(evaluate_fake, model))
    verdict = modelreg.judge(result, MetricCheck(metric), "pytest --modelreg-update")
    modelreg.end_test(True)  # as the plugin does when the test and then the session end
    if modelreg.pending_dir is not None:
        write_pending_baselines(modelreg.pending_dir.parent, modelreg.store, interrupted=False)
    return verdict


def test_paired_verdicts_on_the_docs(tmp_path: Path):
    good = write_model(tmp_path / "good", wrong=[1, 2])
    worse = write_model(tmp_path / "worse", wrong=[1, 2, *range(100, 125)])
    assert judge(tmp_path, good, update=True).verdict == RECORDED
    assert judge(tmp_path, good, "f1", update=True).verdict == RECORDED
    assert judge(tmp_path, good).verdict == PASS
    regressed = judge(tmp_path, worse)
    assert regressed.verdict == REGRESSED and regressed.method == MCNEMAR_EXACT
    assert {f["doc_id"] for f in regressed.flipped} == set(range(100, 125))
    assert "worse on 25 docs, e.g. doc ids 100 ('v1 question 100')" in regressed.message
    corpus = judge(tmp_path, worse, "f1")
    assert corpus.verdict == REGRESSED and corpus.method == BOOTSTRAP
    DATA_VERSION[0] = "v2"  # other data under the same ids: not comparable
    try:
        incomparable = judge(tmp_path, good)
    finally:
        DATA_VERSION[0] = "v1"
    assert incomparable.verdict == INCOMPARABLE and "doc set" in incomparable.message


# -- end to end: the digits example ------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The example's model, trained once, and a copy with noise on its weights. Importing torch
    and scikit-learn here, outside the inline runs, keeps them imported across those runs."""
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("modelreg_digits_example", EXAMPLE / "digits.py")
    digits = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = digits
    spec.loader.exec_module(digits)
    root = tmp_path_factory.mktemp("digits")
    good = digits.train(root / "digits_model")
    return good, digits.damage(good, root / "damaged", noise=0.4, seed=0)


def test_digits_example_catches_a_damaged_model(pytester: pytest.Pytester, digits_models,
                                                monkeypatch: pytest.MonkeyPatch):
    good, damaged = digits_models
    for name in ("check_digits.py", "digits.py", "conftest.py", "pytest.ini"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    with (pytester.path / "pytest.ini").open("a") as ini:
        ini.write("no_mlflow = true\nmodelreg_cache_dir = cache\n")
    shutil.copytree(good, pytester.path / "digits_model")
    monkeypatch.setenv("DIGITS_MODEL", str(pytester.path / "digits_model"))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-W ignore::pytest.PytestAssertRewriteWarning")

    first = pytester.runpytest("-p", "no:cacheprovider", "--modelreg-record-missing")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*check_digits.py::test_digits*digits*acc*recorded",
                                "*check_digits.py::test_digits*digits*macro_f1*recorded"])
    recorded = json.loads((pytester.path / "baselines" / "digits.json").read_text())
    assert recorded["metrics"]["acc"]["value"] > 0.95
    assert recorded["provenance"]["model"]["files"] == ["config.json", "model.safetensors"]

    again = pytester.runpytest("-p", "no:cacheprovider")  # same weights: served from the cache
    again.assert_outcomes(passed=2)
    again.stdout.fnmatch_lines(["*cached digits on torch-mlp (360 docs*",
                                "*check_digits.py::test_digits*acc*+0.0000*pass"])

    worse = pytester.runpytest("-p", "no:cacheprovider", f"--modelreg-model-args=pretrained={damaged}",
                               "check_digits.py::test_digits")
    worse.assert_outcomes(failed=1)
    worse.stdout.fnmatch_lines([
        "*modelreg: digits: acc fell from 0.9* to 0.9*, more than the tolerated 0 at alpha=*"
        "(paired, McNemar exact)*worse on * docs, e.g. doc ids *",
        "*check_digits.py::test_digits*digits*acc*regressed",
        "*check_digits.py::test_digits*digits*macro_f1*regressed",
    ])
