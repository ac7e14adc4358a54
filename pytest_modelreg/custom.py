"""Evaluations by the user's own function: models that lm-eval does not evaluate.

A vision classifier, a tabular model, a speech model: the user writes one function that
evaluates the model on a set of docs and returns each doc's outcome. The plugin builds from it
the same ``EvalResult`` the lm-eval runner builds, so baselines, the paired statistics, the
result cache, MLflow and the reports work unchanged::

    from pytest_modelreg.custom import FunctionOutput

    def evaluate_digits(model_args: dict[str, str], limit: int | float | None) -> FunctionOutput:
        model = load(model_args["pretrained"])
        ...
        return FunctionOutput(samples={doc_id: {"acc": float(pred == label)}, ...},
                              docs={doc_id: image, ...})

    @pytest.mark.modelreg(task="digits", evaluator=evaluate_digits, metrics={"acc": {"min": 0.9}})
    def test_digits():
        pass

The function asks for what it needs by parameter name, as a test asks for fixtures (see
``PARAMETERS``); ``**kwargs`` receives them all.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import json
import logging
import math
import numbers
import os
import random
import re
import statistics
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .cache import ResultCache, cache_key, uncacheable_reason
from .errors import EvaluationError
from .fingerprint import sha256_lines
from .models import file_sha256, model_identity, resolve_device
from .provenance import git_state, hardware, library_versions
from .redact import redact_model_args
from .results import EvalResult, SampleOutcome
from .runner import NullProgress, Progress
from .settings import Settings, split_model_args
from .spec import EvalSpec, function_name, suggest

log = logging.getLogger("pytest_modelreg")

DocId = int | str
_HASH_CHARS = 16  # as the lm-eval runner's doc hashes
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SKIPPED_DIRS = frozenset({"__pycache__"})

PARAMETERS: dict[str, str] = {
    "model_args": "dict[str, str]: the model_args, parsed ('pretrained=./m' -> {'pretrained': './m'})",
    "model": "str: the model label (--modelreg-model, or the marker's model=)",
    "task": "str: the marker's task (one function can serve several tasks)",
    "limit": "int | float | None: evaluate only the first N docs (or a fraction < 1); None: all",
    "seed": "int: the session's seed (random, numpy and torch are seeded before the call)",
    "device": "str: cpu, cuda or cuda:N (--modelreg-device, auto resolved)",
    "batch_size": "int | str: --modelreg-batch-size (a number, or 'auto' / 'auto:N')",
}


@dataclass(frozen=True)
class FunctionOutput:
    """What an evaluator function returns: each doc's outcome, and optionally more.

    - ``samples``: per-doc metric values, ``{doc_id: {"acc": 1.0, ...}}`` (doc ids are ints or
      strings), or a list of such dicts (doc ids 0, 1, ...). Values are numbers (bools count as
      0/1), except for the metrics named in ``aggregate``, whose per-doc value is an item of any
      JSON-like shape (e.g. ``(label, prediction)``).
    - ``metrics``: the task's metrics, ``{"acc": 0.97}``. Default: the mean of each per-sample
      value. A metric equal to the mean of its per-sample values is compared doc by doc (paired);
      any other one by its value and ``stderr``.
    - ``higher_is_better``: ``{"loss": False}``; default True for every metric.
    - ``stderr``: standard errors; default sd/sqrt(n) of the per-sample values for a mean metric,
      None otherwise (and for fewer than two docs).
    - ``docs``: each doc's content (str, bytes, numbers, numpy arrays, torch tensors, and lists or
      dicts of them), by doc id or as a list: its hash identifies the doc, so a changed data set
      makes the baseline "incomparable" instead of being compared with other docs. Without it a
      doc is known by its id alone.
    - ``aggregate``: corpus metrics that are not a mean over docs (F1, MCC, BLEU):
      ``{"macro_f1": f}`` where ``f(items) -> float`` gets the per-doc items of that metric in
      doc order. Compared with a paired bootstrap over docs. Define ``f`` at module level, so a
      result served from the cache can find it again.
    """

    samples: Any
    metrics: Mapping[str, float] | None = None
    higher_is_better: Mapping[str, bool] = field(default_factory=dict)
    stderr: Mapping[str, float | None] | None = None
    docs: Any = None
    aggregate: Mapping[str, Callable[[list[Any]], float]] = field(default_factory=dict)


_OUTPUT_FIELDS = tuple(f.name for f in fields(FunctionOutput))


class FunctionEvaluator:
    """Runs ``spec.evaluator`` (the user's function) and turns what it returns into an
    ``EvalResult``, through the persistent result cache when one is given."""

    def __init__(self, settings: Settings, progress: Progress | None = None,
                 cache: ResultCache | None = None) -> None:
        self.settings = settings
        self.progress: Progress = progress or NullProgress()
        self.cache = cache
        self._hash_cache: dict[tuple[str, int, int], str] = {}  # each file hashed once

    def close(self) -> None:
        """Nothing to release: the user's function loads and drops its own model."""

    def evaluate(self, spec: EvalSpec) -> EvalResult:
        if spec.evaluator is None:
            raise EvaluationError(f"{spec.task}: no evaluator function to run")
        identity = function_model_identity(spec.model, spec.model_args, self._hash_cache)
        key = self._cache_key(spec, identity)
        if key is not None and self.cache is not None:
            hit = self.cache.load(key, spec)
            aggregators = None if hit is None else restore_aggregators(hit.raw.get("aggregate", {}))
            if hit is not None and aggregators is not None:
                hit.aggregators, hit.cache_key = aggregators, key
                return hit
        result = self._run(spec, identity)
        if key is not None and self.cache is not None:
            if restore_aggregators(result.raw.get("aggregate", {})) is None:
                log.info("not caching %s: an aggregate function cannot be found by its name",
                         spec.task)
            else:
                self.cache.store(key, result)
                result.cache_key = key
        return result

    # -- the cache -------------------------------------------------------------------------
    def _cache_key(self, spec: EvalSpec, identity: dict[str, Any]) -> str | None:
        """Keyed by the model's content, the evaluator's module source (its helpers there too)
        and the versions of the packages that module uses; never by the function object."""
        if self.cache is None:
            return None
        assert spec.evaluator is not None
        reason = uncacheable_reason(identity, self.cache.endpoints)
        module_source = module_source_hash(spec.evaluator)
        if reason is None and module_source is None:
            reason = "the evaluator's source cannot be read, so an edit to it would go unnoticed"
        if reason is not None:
            log.info("not caching %s: %s", spec.task, reason)
            return None
        hashed = set(identity.get("hashed_args", ()))
        args = {k: v for k, v in split_model_args(spec.model_args).items() if k not in hashed}
        model_part = {"identity": {k: v for k, v in identity.items()
                                   if k not in ("model_args", "files", "hashed_args")},
                      "args": _sha(args, 64), "device": spec.device, "batch_size": spec.batch_size}
        evaluator = {"name": stable_name(spec.evaluator), "module_source": module_source,
                     "packages": imported_versions(spec.evaluator)}
        return cache_key(replace(spec, evaluator=None), model_part, {"evaluator": evaluator},
                         library_versions())

    # -- running ---------------------------------------------------------------------------
    def _run(self, spec: EvalSpec, identity: dict[str, Any]) -> EvalResult:
        assert spec.evaluator is not None
        name = function_name(spec.evaluator)
        devices: list[str] = []  # the device the function was given, when it asked for one

        def device() -> str:
            devices.append(_resolve(spec.device))
            return devices[-1]

        offered: dict[str, Callable[[], Any]] = {
            "model_args": lambda: split_model_args(spec.model_args),
            "model": lambda: spec.model,
            "task": lambda: spec.task,
            "limit": lambda: spec.limit,
            "seed": lambda: spec.seeds[0],
            "device": device,
            "batch_size": lambda: int(spec.batch_size) if spec.batch_size.isdigit() else spec.batch_size,
        }
        kwargs = call_arguments(spec.evaluator, offered, name)
        _seed(spec.seeds)
        shown = f"{spec.task} with {name} on {spec.model}({redact_model_args(spec.model_args)})"
        start = time.perf_counter()
        with self.progress.stage(f"evaluating {shown}"):
            returned = spec.evaluator(**kwargs)  # the user's errors keep their own traceback
        seconds = time.perf_counter() - start
        parsed = parse_output(returned, f"evaluator {name}")
        used_device = devices[-1] if devices else _device_after(spec.device)
        return self._result(spec, parsed, identity, used_device, seconds)

    def _result(self, spec: EvalSpec, parsed: ParsedOutput, identity: dict[str, Any],
                device: str, seconds: float) -> EvalResult:
        assert spec.evaluator is not None
        samples = parsed.samples
        fingerprint: dict[str, Any] = {
            "evaluator": stable_name(spec.evaluator),
            "evaluator_source": source_hash(spec.evaluator),
            "docs": sha256_lines(f"{s.doc_id}:{s.doc_hash}" for s in samples),
            "n_docs": len(samples),
            "limit": spec.limit,
            "metrics": sorted(parsed.metrics),
        }
        if parsed.aggregators:
            fingerprint["aggregate"] = {m: f"{stable_name(f)}:{source_hash(f)}"
                                        for m, f in sorted(parsed.aggregators.items())}
        provenance = {
            "seeds": spec.seed_dict(),
            "versions": {**library_versions(), **imported_versions(spec.evaluator)},
            "hardware": hardware(device),
            "batch_size": spec.batch_size,
            "git": git_state(self.settings.rootdir),
            "model": {k: v for k, v in identity.items() if k != "hashed_args"},
            "evaluator": function_name(spec.evaluator),
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        raw = {
            "evaluator": function_name(spec.evaluator),
            "results": {spec.task: {"metrics": parsed.metrics, "stderr": parsed.stderr,
                                    "higher_is_better": parsed.higher_is_better}},
            "n_samples": len(samples),
            # By name and source: a cached result finds its aggregate functions again.
            "aggregate": {m: {"function": importable_name(f), "source": source_hash(f)}
                          for m, f in parsed.aggregators.items()},
        }
        return EvalResult(
            spec=spec, metrics=parsed.metrics, stderr=parsed.stderr,
            higher_is_better=parsed.higher_is_better, samples=samples, fingerprint=fingerprint,
            provenance=provenance, n_samples=len(samples), seconds=seconds, raw=raw,
            aggregators=dict(parsed.aggregators),
        )


# -- calling the function --------------------------------------------------------------------


def call_arguments(function: Callable[..., Any], offered: Mapping[str, Callable[[], Any]],
                   name: str) -> dict[str, Any]:
    """The keyword arguments ``function`` asks for, by parameter name (computed only when asked:
    resolving ``device`` imports torch)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: offer everything
        return {key: make() for key, make in offered.items()}
    chosen: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            return {key: make() for key, make in offered.items()}
        if parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.name in offered and parameter.kind is not parameter.POSITIONAL_ONLY:
            chosen[parameter.name] = offered[parameter.name]()
        elif parameter.default is parameter.empty:
            raise EvaluationError(
                f"evaluator {name} takes a parameter {parameter.name!r} that the plugin cannot "
                f"supply{suggest(parameter.name, list(offered))}; it passes "
                f"{', '.join(offered)} by name (give {parameter.name!r} a default, or bind it "
                "with functools.partial)")
    return chosen


def _seed(seeds: tuple[int, int, int, int]) -> None:
    """As lm-eval does: random, numpy and torch seeded (numpy and torch only when already
    imported: a model that uses neither does not pay for importing them)."""
    random.seed(seeds[0])
    if (numpy := sys.modules.get("numpy")) is not None:
        numpy.random.seed(seeds[1])
    if (torch := sys.modules.get("torch")) is not None:
        torch.manual_seed(seeds[2])


def _resolve(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU; CPU when it does not, or without torch at all."""
    try:
        return resolve_device(device)
    except ImportError:
        return "cpu"


def _device_after(device: str) -> str:
    """The device for the provenance when the function did not ask for one."""
    if device == "auto" and "torch" not in sys.modules:
        return device  # no torch: nothing to resolve "auto" with, and no reason to import it
    return _resolve(device)


# -- reading what it returned ----------------------------------------------------------------


@dataclass
class ParsedOutput:
    samples: list[SampleOutcome]
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    higher_is_better: dict[str, bool]
    aggregators: dict[str, Callable[[list[Any]], float]]


def parse_output(returned: object, where: str) -> ParsedOutput:
    """Validate the function's return value; a wrong shape is a one-line ``EvaluationError``
    that names the function and what was expected. A non-finite metric passes (the verdict
    marks it invalid)."""
    output = _as_output(returned, where)
    aggregate = _aggregate_functions(output.aggregate, where)
    per_doc = _per_doc(output.samples, "samples", where)
    if not per_doc:
        raise EvaluationError(f"{where} returned no samples; expected at least one doc's outcome")
    docs = None if output.docs is None else dict(_per_doc(output.docs, "docs", where))
    samples = [_sample(doc_id, values, docs, aggregate, where) for doc_id, values in per_doc]
    samples.sort(key=lambda s: _doc_order(s.doc_id))
    if docs is not None:
        _same_ids(docs, samples, where)
    metrics = _metrics(output.metrics, samples, aggregate, where)
    higher = _flags(output.higher_is_better, metrics, where)
    stderr = {m: _mean_stderr(samples, m, value) for m, value in metrics.items()}
    stderr.update(_given_stderr(output.stderr, metrics, where))
    return ParsedOutput(samples, metrics, stderr, higher, aggregate)


def _as_output(returned: object, where: str) -> FunctionOutput:
    if isinstance(returned, FunctionOutput):
        return returned
    if isinstance(returned, Mapping):
        unknown = sorted(str(k) for k in returned if k not in _OUTPUT_FIELDS)
        if unknown or "samples" not in returned:
            problem = (f"an unknown key {unknown[0]!r}{suggest(unknown[0], _OUTPUT_FIELDS)}"
                       if unknown else "no 'samples'")
            raise EvaluationError(f"{where} returned a dict with {problem}; expected the fields "
                                  f"of FunctionOutput: {', '.join(_OUTPUT_FIELDS)}")
        return FunctionOutput(**returned)
    raise EvaluationError(
        f"{where} returned {type(returned).__name__}; expected FunctionOutput(samples=...) from "
        "pytest_modelreg.custom (or a dict of its fields)")


def _per_doc(value: object, what: str, where: str) -> list[tuple[DocId, Any]]:
    """``{doc_id: x}`` or a list (doc ids 0, 1, ...) as (doc id, x) pairs."""
    if isinstance(value, Mapping):
        pairs = [(_doc_id(key, what, where), item) for key, item in value.items()]
        if len({doc_id for doc_id, _ in pairs}) != len(pairs):
            raise EvaluationError(f"{where} returned {what} whose doc ids repeat once made ints "
                                  "or strings; give each doc its own id")
        return pairs
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") \
            or not hasattr(value, "__iter__"):
        raise EvaluationError(
            f"{where} returned {what} as {type(value).__name__}; expected a dict of doc id -> "
            f"{'values' if what == 'samples' else 'content'} or a list (doc ids 0, 1, ...)")
    return list(enumerate(value))  # type: ignore[call-overload]


def _doc_id(key: object, what: str, where: str) -> DocId:
    if isinstance(key, bool) or not isinstance(key, (numbers.Integral, str)):
        raise EvaluationError(f"{where} returned {what} with a doc id {key!r} "
                              f"({type(key).__name__}); expected an int or a string")
    return key if isinstance(key, str) else int(key)


def _doc_order(doc_id: DocId) -> tuple[int, int, str]:
    return (0, doc_id, "") if isinstance(doc_id, int) else (1, 0, doc_id)


def _sample(doc_id: DocId, values: object, docs: dict[DocId, Any] | None,
            aggregate: Mapping[str, Any], where: str) -> SampleOutcome:
    if not isinstance(values, Mapping):
        raise EvaluationError(f"{where} returned samples[{doc_id!r}] as {type(values).__name__}; "
                              "expected a dict of metric name -> value, e.g. {'acc': 1.0}")
    numbers_: dict[str, float] = {}
    items: dict[str, Any] = {}
    for metric, value in values.items():
        if not isinstance(metric, str) or not metric:
            raise EvaluationError(f"{where} returned samples[{doc_id!r}] with a metric name "
                                  f"{metric!r}; expected a non-empty string")
        if metric in aggregate:
            items[metric] = _plain(value, f"{where} returned samples[{doc_id!r}][{metric!r}]")
        elif (number := _number(value)) is not None:
            numbers_[metric] = number
        else:
            raise EvaluationError(
                f"{where} returned samples[{doc_id!r}][{metric!r}] = {_short(value)}; expected a "
                "number (or a per-doc item of a metric named in aggregate=)")
    content = None if docs is None else docs.get(doc_id)
    doc_hash = (content_hash(content, f"{where} returned docs[{doc_id!r}]") if docs is not None
                and doc_id in docs else _sha(("doc id", doc_id)))
    return SampleOutcome(
        doc_id=doc_id, doc_hash=doc_hash,
        prompt_hash=_sha(("doc id", doc_id)),  # the id joins docs too: duplicates stay apart
        target_hash="", values=numbers_,
        prompt=_prompt(content), items=items)


def _same_ids(docs: Mapping[DocId, Any], samples: list[SampleOutcome], where: str) -> None:
    ids = {s.doc_id for s in samples}
    missing = [s.doc_id for s in samples if s.doc_id not in docs]
    extra = sorted((d for d in docs if d not in ids), key=_doc_order)
    if missing or extra:
        which = (f"no docs entry for doc id {missing[0]!r}" if missing
                 else f"a docs entry for doc id {extra[0]!r}, which has no sample")
        raise EvaluationError(f"{where} returned {which}; expected docs and samples with the "
                              "same doc ids")


def _metrics(given: object, samples: list[SampleOutcome],
             aggregate: Mapping[str, Callable[[list[Any]], float]], where: str) -> dict[str, float]:
    """The given metrics; by default the mean of each per-sample value. A metric named in
    ``aggregate`` is computed from its items unless given."""
    metrics: dict[str, float] = {}
    if given is None:
        names = sorted({m for s in samples for m in s.values})
        for name in names:
            values = [s.values[name] for s in samples if name in s.values]
            metrics[name] = math.fsum(values) / len(values)
    else:
        if not isinstance(given, Mapping):
            raise EvaluationError(f"{where} returned metrics as {type(given).__name__}; "
                                  "expected a dict of metric name -> number")
        for name, value in given.items():
            number = _number(value)
            if not isinstance(name, str) or not name or number is None:
                raise EvaluationError(f"{where} returned metrics[{name!r}] = {_short(value)}; "
                                      "expected a metric name and a number")
            metrics[name] = number
    for name, function in aggregate.items():
        items = [s.items[name] for s in samples if name in s.items]
        if not items:
            raise EvaluationError(f"{where} names {name!r} in aggregate= but no doc has an item "
                                  f"for it; give each doc's item in samples[doc_id][{name!r}]")
        if name not in metrics:
            value = function(items)
            number = _number(value)
            if number is None:
                raise EvaluationError(f"{where}: aggregate {name!r} returned {_short(value)}; "
                                      "expected a number")
            metrics[name] = number
    if not metrics:
        raise EvaluationError(f"{where} returned no metric; expected numbers in samples "
                              "(e.g. {'acc': 1.0}), metrics= or aggregate=")
    return metrics


def _flags(given: object, metrics: Mapping[str, float], where: str) -> dict[str, bool]:
    if not isinstance(given, Mapping):
        raise EvaluationError(f"{where} returned higher_is_better as {type(given).__name__}; "
                              "expected a dict of metric name -> True/False")
    for name, flag in given.items():
        if name not in metrics:
            raise EvaluationError(f"{where} returned higher_is_better for {name!r}, which is not "
                                  f"a metric{suggest(str(name), list(metrics))}; its metrics "
                                  f"are: {', '.join(sorted(metrics))}")
        if type(flag).__name__ not in ("bool", "bool_"):
            raise EvaluationError(f"{where} returned higher_is_better[{name!r}] = {_short(flag)}; "
                                  "expected True or False")
    return {m: bool(given.get(m, True)) for m in metrics}


def _given_stderr(given: object, metrics: Mapping[str, float], where: str
                  ) -> dict[str, float | None]:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise EvaluationError(f"{where} returned stderr as {type(given).__name__}; expected a "
                              "dict of metric name -> number or None")
    errors: dict[str, float | None] = {}
    for name, value in given.items():
        number = None if value is None else _number(value)
        if name not in metrics or (value is not None and number is None):
            raise EvaluationError(f"{where} returned stderr[{name!r}] = {_short(value)}; expected "
                                  f"a number or None for one of its metrics: {', '.join(sorted(metrics))}")
        errors[name] = number if number is not None and math.isfinite(number) else None
    return errors


def _mean_stderr(samples: list[SampleOutcome], metric: str, value: float) -> float | None:
    """sd/sqrt(n) of the per-sample values when the metric is their mean; None when unknown
    (fewer than two docs, no per-sample values, or a metric that is not their mean)."""
    values = [s.values[metric] for s in samples if metric in s.values]
    if len(values) < 2 or not math.isfinite(value):
        return None
    mean = math.fsum(values) / len(values)
    if abs(mean - value) > 1e-9 * max(1.0, abs(value)):
        return None
    error = statistics.stdev(values) / math.sqrt(len(values))
    return error if math.isfinite(error) else None


def _aggregate_functions(given: object, where: str) -> dict[str, Callable[[list[Any]], float]]:
    if not isinstance(given, Mapping) or not all(
            isinstance(k, str) and k and callable(f) for k, f in given.items()):
        raise EvaluationError(f"{where} returned aggregate={_short(given)}; expected a dict of "
                              "metric name -> function(items) -> float")
    return dict(given)


def _number(value: object) -> float | None:
    """A number (bools, numpy scalars and one-element tensors too); None for anything else."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return None


def _plain(value: Any, where: str) -> Any:
    """A per-doc item as plain JSON data, the form it has when read back from a baseline."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _plain(value.tolist(), where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise EvaluationError(f"{where} is a {type(value).__name__}; expected JSON-like data (numbers, "
                          "strings, lists, dicts)")


def _short(value: object, length: int = 40) -> str:
    text = " ".join(_ADDRESS.sub("", repr(value)).split())  # one line: arrays print several
    return text if len(text) <= length else text[: length - 3] + "..."


def _prompt(content: object, length: int = 60) -> str:
    """A text doc's first words, shown beside its id where docs got worse."""
    if not isinstance(content, str):
        return ""
    text = " ".join(content.split())
    return text if len(text) <= length else text[: length - 3] + "..."


# -- hashes ----------------------------------------------------------------------------------


def _sha(value: object, chars: int = _HASH_CHARS) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def content_hash(value: object, where: str = "doc") -> str:
    """A stable hash of a doc's content: equal content, equal hash, in any process."""
    digest = hashlib.sha256()
    _feed(digest, value, where)
    return digest.hexdigest()[:_HASH_CHARS]


def _feed(digest: Any, value: object, where: str) -> None:
    """Feed ``value`` to ``digest`` with a type tag, so 1, "1" and [1] differ."""
    if value is None or isinstance(value, (bool, int, float, str)):
        digest.update(b"j" + json.dumps(value).encode() + b";")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        digest.update(b"b%d:" % len(data) + data)
    elif type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        tensor = value.detach().cpu().contiguous()  # type: ignore[attr-defined]
        digest.update(f"t{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(sys.modules["torch"].uint8).numpy().tobytes())
    elif (numpy := sys.modules.get("numpy")) is not None and hasattr(value, "__array__"):
        array = numpy.ascontiguousarray(numpy.asarray(value))  # numpy, pandas, jax...
        if array.dtype == object:
            _feed(digest, array.tolist(), where)
        else:
            digest.update(f"a{array.dtype.str}{array.shape}:".encode())
            digest.update(array.tobytes())
    elif isinstance(value, numbers.Number):
        digest.update(b"n" + repr(value).encode() + b";")
    elif isinstance(value, Mapping):
        digest.update(b"{%d:" % len(value))
        for key in sorted(value, key=repr):
            _feed(digest, key, where)
            _feed(digest, value[key], where)
    elif isinstance(value, (list, tuple)):
        digest.update(b"[%d:" % len(value))
        for item in value:
            _feed(digest, item, where)
    else:
        raise EvaluationError(
            f"{where} is a {type(value).__name__}; expected doc content as str, bytes, numbers, "
            "numpy arrays, torch tensors, or lists and dicts of them")


def _unwrap(function: Callable[..., Any]) -> tuple[Callable[..., Any], str]:
    """The function under a functools.partial, and its bound arguments as text."""
    bound = ""
    while isinstance(function, functools.partial):
        bound += _ADDRESS.sub("", repr((function.args, sorted(function.keywords.items()))))
        function = function.func
    return function, bound


def _source(function: Callable[..., Any]) -> str | None:
    function, _ = _unwrap(function)
    for target in (function, type(function)):  # a callable object: its class
        try:
            return inspect.getsource(target)
        except (OSError, TypeError):
            continue
    return None


def source_hash(function: Callable[..., Any]) -> str | None:
    """A hash of the function's code with comments and formatting left out (its syntax tree):
    a reworded comment keeps baselines comparable, a changed line does not."""
    source = _source(function)
    if source is None:
        return None
    try:
        text = ast.dump(ast.parse(textwrap.dedent(source)))
    except SyntaxError:  # a lambda in the middle of a longer line
        text = source
    return _sha([text, _unwrap(function)[1]])


def module_source_hash(function: Callable[..., Any]) -> str | None:
    """A hash of the whole module that defines the function (helpers it calls there too)."""
    inner, bound = _unwrap(function)
    module = inspect.getmodule(inner) or inspect.getmodule(type(inner))
    try:
        source = inspect.getsource(module) if module is not None else None
    except (OSError, TypeError):
        source = None
    source = source if source is not None else _source(inner)
    return None if source is None else _sha([source, bound], 64)


def stable_name(function: Callable[..., Any]) -> str:
    """The function's qualified name without its module (which depends on how pytest imported
    the test file): the source hash beside it says what it is."""
    inner, bound = _unwrap(function)
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{name}(partial)" if bound else name


def importable_name(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '')}:{getattr(function, '__qualname__', '')}"


def find_function(name: str) -> Callable[..., Any] | None:
    """The function called ``module:qualname``, or None (a local function cannot be found)."""
    module_name, _, qualname = name.partition(":")
    if not module_name or not qualname or "<" in qualname:
        return None
    try:
        target: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:  # any import failure: the cached result is not usable
        return None
    return target if callable(target) else None


def restore_aggregators(recorded: Mapping[str, Any]) -> dict[str, Callable[[list[Any]], float]] | None:
    """The aggregate functions of a result, found by name and checked by source; None when one
    is missing or changed (a cached result is then evaluated again)."""
    found = {}
    for metric, entry in recorded.items():
        function = find_function(str(entry.get("function", "")))
        if function is None or source_hash(function) != entry.get("source"):
            return None
        found[metric] = function
    return found


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()


def imported_versions(function: Callable[..., Any]) -> dict[str, str]:
    """Versions of the installed packages the evaluator's module uses (sklearn, onnxruntime...):
    a new version of one changes the cache key and shows in the provenance."""
    from importlib import metadata

    inner, _ = _unwrap(function)
    module = inspect.getmodule(inner)
    namespace = vars(module) if module is not None else getattr(inner, "__globals__", {})
    tops = set()
    for value in list(namespace.values()):
        try:
            owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(
                value, "__module__", None)
        except Exception:  # an odd proxy object: it names no package
            continue
        if isinstance(owner, str) and owner:
            tops.add(owner.split(".")[0])
    versions = {}
    for top in sorted(tops - set(sys.stdlib_module_names)):
        for dist in _distributions().get(top, ())[:1]:
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return versions


# -- the model's identity --------------------------------------------------------------------

def function_model_identity(model: str, model_args: str,
                            cache: dict[tuple[str, int, int], str] | None = None) -> dict[str, Any]:
    """What the model is: every model_arg that names a local file or folder, hashed by content
    (every file in it: a function's model may be ONNX, joblib, Keras...); otherwise what
    ``models.model_identity`` says (a hub id, an endpoint)."""
    cache = {} if cache is None else cache
    identity = model_identity(model, model_args, cache)
    args = split_model_args(model_args)
    if "base_url" in args:
        return identity
    paths = {key: Path(value).expanduser() for key, value in args.items()
             if value and Path(value).expanduser().exists()}
    if not paths:
        return identity
    lines, names = [], []
    for key, path in sorted(paths.items()):
        for name, file in _files(path):
            lines.append(f"{key}={name}:{file_sha256(file, cache)}")
            names.append(name)
    identity = {k: v for k, v in identity.items() if k not in ("source", "revision")}
    identity.update(sha256=hashlib.sha256("\n".join(lines).encode()).hexdigest(),
                    files=sorted(set(names)), hashed_args=sorted(paths))
    return identity


def _files(path: Path) -> Iterable[tuple[str, Path]]:
    """(name relative to ``path``, file) for a file, or every file under a folder (hidden
    entries and __pycache__ left out; symlinked folders not followed)."""
    if path.is_file():
        yield path.name, path
        return
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if not name.startswith("."):
                file = Path(folder) / name
                yield file.relative_to(path).as_posix(), file
