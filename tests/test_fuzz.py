"""Property-based tests: any input to the baseline reader, the threshold and settings parsers and
the marker validation gives a value or one clear modelreg error, never another exception."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelreg.baselines import Baseline, BaselineStore
from pytest_modelreg.errors import BaselineError, ModelregUsageError
from pytest_modelreg.results import SampleOutcome
from pytest_modelreg.settings import (
    OPTIONS,
    Settings,
    build_settings,
    parse_alpha,
    parse_batch_size,
    parse_choice,
    parse_correction,
    parse_count,
    parse_device,
    parse_limit,
    parse_model,
    parse_model_args,
    parse_seed,
    split_model_args,
)
from pytest_modelreg.spec import (
    EVAL_ARGS,
    MARKER_ARGS,
    THRESHOLD_KEYS,
    EvalSpec,
    MetricCheck,
    Tolerance,
    parse_checks,
    parse_marker,
    parse_requirements,
    parse_threshold,
    parse_tolerance,
)

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SETTINGS = Settings(model="hf", model_args="pretrained=/m", limit=50)

# Values a person (or a generated suite) might put in a marker, an ini file or a baseline.
SPECIAL = st.sampled_from([
    math.nan, math.inf, -math.inf, -0.0, 10**400, -(10**30), 2**63, -1, 0, 1, True,
    False, "", " ", "nan", "inf", "-inf", "1e999", "-0", "0x10", "1_000", "５", "2%", " 2 % ",
    "-2%", "1e3%", "nan%", "1.5 points", "0.01", "auto", "auto:4", "auto:0", "8", "cuda:1",
    "${HOME}", "${UNSET_VAR_X}", "~nosuchuser_x/f", "\x00", "a\nb", "../x", ".", "k=v",
    "k=v,k=w", "=v", "é" * 3, "1" * 5000,
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    SPECIAL)
ANY = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.integers(),
                                                      st.sampled_from(THRESHOLD_KEYS)),
                                            inner, max_size=4)),
    max_leaves=12)
# What JSON can hold (Python's json module writes NaN and Infinity too).
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                         st.text(max_size=12),
                         st.sampled_from([10**400, math.nan, math.inf, "", ".", "..", "\x00",
                                          "../outside.jsonl", "nan"]))
JSON = st.recursive(JSON_SCALARS,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def expect(call: Callable[[], Any], error: type[Exception] = ModelregUsageError) -> Any:
    """The call's value, or None when it raised ``error`` with a one-line message."""
    try:
        return call()
    except error as exc:
        assert str(exc).strip() and "\n" not in str(exc), repr(str(exc))
        return None


# -- the baseline reader ---------------------------------------------------------------------

def valid_pair(folder: Path) -> Path:
    samples = [SampleOutcome(i, f"d{i}", f"p{i}", f"t{i}", {"acc": float(i % 2), "f1": 0.5},
                             f"prompt {i}", {"f1": [1, i % 2]}) for i in range(3)]
    baseline = Baseline(name="tiny_qa", task="tiny_qa",
                        metrics={"acc": {"value": 0.5, "stderr": 0.1, "higher_is_better": True}},
                        fingerprint={"docs_sha256": "abc", "n_docs": 3}, n_samples=3,
                        settings={"limit": "3"}, provenance={"model": {"sha256": "x"}},
                        samples=samples)
    return BaselineStore(folder).save(baseline)


def check_baseline(baseline: Baseline) -> None:
    """What the session reads from a baseline has the types it relies on."""
    assert isinstance(baseline.name, str) and isinstance(baseline.task, str)
    assert isinstance(baseline.fingerprint, dict) and isinstance(baseline.settings, dict)
    assert isinstance(baseline.provenance, dict) and isinstance(baseline.n_samples, int)
    for entry in baseline.metrics.values():
        value = entry["value"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert math.isfinite(value)  # a NaN baseline would make every comparison meaningless
    for sample in baseline.samples or []:
        assert all(isinstance(v, float) for v in sample.values.values())


def read(files: dict[str, bytes]) -> Baseline | None:
    """Write ``files`` into a fresh folder and read its ``b.json``: a Baseline or BaselineError."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        baseline = expect(lambda: BaselineStore(Path(tmp)).load_file(Path(tmp) / "b.json"),
                          BaselineError)
        if baseline is not None:
            check_baseline(baseline)
        return baseline


@FUZZ
@given(st.binary(max_size=300))
def test_reader_arbitrary_bytes(content: bytes) -> None:
    read({"b.json": content})


@FUZZ
@given(JSON)
def test_reader_arbitrary_json(value: object) -> None:
    read({"b.json": json.dumps(value).encode()})


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                             str]:
    """A valid baseline (its JSON content, its samples, the samples file name)."""
    path = valid_pair(tmp_path_factory.mktemp("valid"))
    data = json.loads(path.read_text())
    samples_path = path.parent / data["samples_file"]
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    return data, samples, data["samples_file"]


def paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a JSON value (the value itself first)."""
    found = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, child in items:
        found += paths(child, (*prefix, key))
    return found


def mutate(value: Any, data: st.DataObject) -> Any:
    """``value`` with one key dropped or one value replaced, somewhere inside it."""
    value = json.loads(json.dumps(value))
    path = data.draw(st.sampled_from(paths(value)[1:]))
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON)
    return value


def damage_text(text: bytes, data: st.DataObject) -> bytes:
    """Truncated, with bad UTF-8, a 5000-digit number or deep nesting spliced in."""
    cut = data.draw(st.integers(0, len(text)))
    splice = data.draw(st.sampled_from([b"", b"\xff\xfe", b"\xc3", b"1" * 5000, b"[" * 100_000,
                                        b'{"a":' * 50_000, b"NaN", b"\x00"]))
    tail = text[cut:] if data.draw(st.booleans()) else b""
    return text[:cut] + splice + tail


@FUZZ
@given(st.data())
def test_reader_mutated_baseline(valid: tuple[dict[str, Any], list[dict[str, Any]], str],
                                 data: st.DataObject) -> None:
    import hashlib

    document, samples, samples_name = valid
    if data.draw(st.booleans()):  # a schema-1 file (no samples_count), migrated when read
        document = {k: v for k, v in document.items() if k != "samples_count"}
        document["schema_version"] = 1
    target = data.draw(st.sampled_from(["json", "json text", "samples", "samples text"]))
    json_bytes = (json.dumps(document) + "\n").encode()
    samples_bytes = "".join(json.dumps(s) + "\n" for s in samples).encode()
    if target == "json":
        json_bytes = json.dumps(mutate(document, data)).encode()
    elif target == "json text":
        json_bytes = damage_text(json_bytes, data)
    else:
        if target == "samples":
            samples_bytes = "".join(json.dumps(mutate(s, data)) + "\n" if data.draw(st.booleans())
                                    else json.dumps(s) + "\n" for s in samples).encode()
        else:
            samples_bytes = damage_text(samples_bytes, data)
        # Vouch for the damaged samples (or drop the guard) so the line parser sees them.
        changed = dict(document)
        if data.draw(st.booleans()):
            changed["samples_sha256"] = hashlib.sha256(samples_bytes).hexdigest()
        else:
            changed.pop("samples_sha256", None)
        json_bytes = json.dumps(changed).encode()
    read({"b.json": json_bytes, samples_name: samples_bytes})


def test_reader_accepts_the_valid_pair(valid: tuple[dict[str, Any], list[dict[str, Any]], str]
                                       ) -> None:
    """The mutation tests start from a file the reader accepts (else they prove nothing)."""
    document, samples, samples_name = valid
    baseline = read({"b.json": json.dumps(document).encode(),
                     samples_name: "".join(json.dumps(s) + "\n" for s in samples).encode()})
    assert baseline is not None and baseline.samples is not None and len(baseline.samples) == 3


# -- thresholds --------------------------------------------------------------------------------

@FUZZ
@given(ANY)
def test_threshold_is_a_finite_number_or_an_error(value: object) -> None:
    number = expect(lambda: parse_threshold("min", value, "test_x"))
    assert number is None or (type(number) is float and math.isfinite(number))


@FUZZ
@given(st.one_of(ANY, st.from_regex(r"\s*-?[0-9]{0,400}\.?[0-9]{0,3}(e-?[0-9]{1,3})?\s*%?\s*",
                                    fullmatch=True)))
def test_tolerance_is_a_finite_drop_or_an_error(value: object) -> None:
    tolerance = expect(lambda: parse_tolerance(value, "test_x"))
    if tolerance is not None:
        assert isinstance(tolerance, Tolerance)
        assert math.isfinite(tolerance.value) and tolerance.value >= 0
        assert math.isfinite(tolerance.allowed_drop(0.5))
        str(tolerance)


@FUZZ
@given(ANY, st.dictionaries(st.sampled_from(THRESHOLD_KEYS), ANY, max_size=4))
def test_metric_checks_or_an_error(metrics: object, defaults: dict[str, object]) -> None:
    checks = expect(lambda: parse_checks(metrics, defaults, "test_x"))
    for check in checks or []:
        assert isinstance(check, MetricCheck) and isinstance(check.metric, str)
        for bound in (check.min, check.max, check.max_gain):
            assert bound is None or math.isfinite(bound)


# -- settings ----------------------------------------------------------------------------------

@FUZZ
@given(ANY)
def test_value_parsers_give_a_value_or_an_error(value: object) -> None:
    limit = expect(lambda: parse_limit(value))
    assert limit is None or (limit >= 1 and isinstance(limit, int)) or 0 < limit < 1
    seed = expect(lambda: parse_seed(value))
    assert seed is None or 0 <= seed < 2**32  # what numpy's seeding accepts
    alpha = expect(lambda: parse_alpha(value))
    assert alpha is None or 0 < alpha < 0.5
    batch = expect(lambda: parse_batch_size(value))
    assert batch is None or isinstance(batch, str)


TEXT = st.one_of(st.none(), st.text(max_size=20), SPECIAL.filter(lambda v: isinstance(v, str)))


@FUZZ
@given(TEXT)
def test_text_parsers_give_a_value_or_an_error(value: str | None) -> None:
    count = expect(lambda: parse_count(value, "--x", 1, "a number"))
    assert count is None or count >= 0
    assert expect(lambda: parse_choice(value, "--x", ("model", "none"))) in (None, "model", "none")
    assert expect(lambda: parse_correction(value)) in (None, "holm", "none")
    expect(lambda: parse_device(value))
    if value is not None:
        expect(lambda: parse_model(value))
        expect(lambda: parse_model_args(value, env={"HOME": "/home/x"}))
        pairs = expect(lambda: split_model_args(value))
        assert pairs is None or all(isinstance(k, str) and k for k in pairs)


OPTION_VALUES = st.dictionaries(st.sampled_from([o.name for o in OPTIONS]), TEXT, max_size=6)


@FUZZ
@given(OPTION_VALUES, OPTION_VALUES,
       st.dictionaries(st.sampled_from([o.env for o in OPTIONS]), st.text(max_size=12),
                       max_size=3))
def test_build_settings_gives_settings_or_an_error(cli: dict[str, str | None],
                                                   ini: dict[str, str | None],
                                                   env: dict[str, str]) -> None:
    made = expect(lambda: build_settings(cli.get, ini.get, env=env, rootdir=Path.cwd(),
                                         inidir=Path.cwd()))
    assert made is None or isinstance(made, Settings)


# -- marker arguments --------------------------------------------------------------------------

KWARGS = st.dictionaries(st.one_of(st.sampled_from(MARKER_ARGS), st.text(max_size=8)), ANY,
                         max_size=6)
GOOD_KWARGS = st.fixed_dictionaries({"task": st.just("piqa")},
                                    optional={k: ANY for k in (*EVAL_ARGS, *THRESHOLD_KEYS,
                                                               "metrics")})


@FUZZ
@given(st.lists(ANY, max_size=2).map(tuple), st.one_of(KWARGS, GOOD_KWARGS))
def test_marker_gives_a_spec_or_one_usage_error(args: tuple[Any, ...],
                                                kwargs: dict[str, Any]) -> None:
    parsed = expect(lambda: parse_marker(args, kwargs, SETTINGS, "test_x.py::test_x"))
    if parsed is not None:
        spec, checks, _ = parsed
        assert isinstance(spec, EvalSpec)
        hash(spec)  # the evaluation key: tests with equal specs share one evaluation
        assert isinstance(spec.task, str) and isinstance(spec.model, str)
        assert all(type(seed) is int and 0 <= seed < 2**32 for seed in spec.seeds)
        assert checks is None or all(isinstance(c, MetricCheck) for c in checks)


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("a user's object whose repr fails")


class TwoLineRepr:
    def __repr__(self) -> str:
        return "first line\nsecond line"


# Values hypothesis cannot print (repr of a 5000-digit int raises), run through every parser.
EDGE = [10**5000, -(10**5000), [10**5000], {"acc": {"min": 10**5000}}, {"max_new_tokens": 10**5000},
        BadRepr(), TwoLineRepr(), [BadRepr()], {"acc": TwoLineRepr()}, "1" * 400 + "%",
        "1" * 400 + "GB", 0, "0GB"]


@pytest.mark.parametrize("value", EDGE, ids=[str(i) for i in range(len(EDGE))])
def test_edge_values_through_every_parser(value: object) -> None:
    for parse in (lambda: parse_threshold("min", value, "test_x"),
                  lambda: parse_tolerance(value, "test_x"),
                  lambda: parse_checks(value, {}, "test_x"),
                  lambda: parse_checks(["acc"], {"tolerance": value}, "test_x"),
                  lambda: parse_limit(value), lambda: parse_seed(value),
                  lambda: parse_alpha(value), lambda: parse_batch_size(value)):
        expect(parse)
    for key in MARKER_ARGS:
        kwargs = {"task": "piqa", key: value} if key != "task" else {"task": value}
        parsed = expect(lambda kwargs=kwargs: parse_marker((), kwargs, SETTINGS, "test_x.py::test_x"))
        if parsed is not None:
            hash(parsed[0])


@pytest.mark.parametrize("value", EDGE, ids=[str(i) for i in range(len(EDGE))])
def test_edge_values_as_gpu_memory(value: object) -> None:
    needs = expect(lambda: parse_requirements({"min_gpu_memory": value}, "test_x"))
    assert needs is None or 0 <= needs[1] < math.inf


@FUZZ
@given(st.dictionaries(st.sampled_from(["gpu", "min_gpu_memory"]), ANY, max_size=2))
def test_gpu_requirements_or_an_error(kwargs: dict[str, Any]) -> None:
    needs = expect(lambda: parse_requirements(kwargs, "test_x"))
    if needs is not None:
        gpu, memory = needs
        assert isinstance(gpu, bool) and (memory is None or 0 <= memory < math.inf)



# -- what fuzzing found (each raised TypeError, ValueError, OverflowError, RuntimeError or gave an
# unusable spec before): kept as plain examples with the message each now gets -----------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min": 10**400}, "min must be a number, got 1000"),  # OverflowError in float()
    ({"max": 10**5000}, "max must be a number, got <a int>"),  # repr() itself raised
    ({"tolerance": "1" * 400 + "%"}, "tolerance must be a drop >= 0"),  # was Tolerance(inf)
    ({"metrics": {"acc": {1: 0, "x": 1}}}, "unknown threshold 1 for metric 'acc'"),
    ({"gen_kwargs": {1: 2, "a": 3}}, "gen_kwargs must be a dict or 'k=v,k=v'"),
    ({"apply_chat_template": []}, "apply_chat_template must be True, False or a template name"),
    ({"system_instruction": ["x"]}, "system_instruction must be text"),  # spec was unhashable
    ({"fewshot_as_multiturn": "no"}, "fewshot_as_multiturn must be True or False"),
    ({"seed": -1}, "seed must be a whole number from 0 to 4294967295, got -1"),
    ({"seed": 2**32}, "seed must be a whole number from 0 to 4294967295"),
    ({"model": 5}, "model: 5 is not an lm-eval model type"),
    ({"model_args": {"pretrained": "x"}}, "model_args must be 'key=value,key=value' text"),
    ({"batch_size": TwoLineRepr()}, r"batch_size: first line\\nsecond line is not a batch size"),
    ({"evaluator": BadRepr()}, "evaluator must be a function .*, got <BadRepr instance at"),
])
def test_found_marker_inputs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelregUsageError, match=message) as info:
        parse_marker((), {"task": "piqa", **kwargs}, SETTINGS, "test_x")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("modelreg_json", "~nosuchuser_x/r.json", "--modelreg-json: .* is not a usable path"),
    ("modelreg_cache_dir", "a\x00b", "--modelreg-cache-dir: .* is not a usable path"),
    ("modelreg_seed", "-1", "--modelreg-seed: expected a whole number from 0 to 4294967295"),
    ("modelreg_alpha", "1" * 5000, "--modelreg-alpha: .* is not a test level"),
])
def test_found_settings_inputs(name: str, value: str, message: str) -> None:
    with pytest.raises(ModelregUsageError, match=message):
        build_settings({name: value}.get, {}.get, env={}, rootdir=Path.cwd(), inidir=Path.cwd())


def test_huge_limit_is_a_count() -> None:
    assert parse_limit(10**400) == 10**400  # more docs than any task has: all of them
