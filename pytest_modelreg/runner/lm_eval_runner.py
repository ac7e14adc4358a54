"""Evaluations through lm-evaluation-harness: the only module that imports lm_eval."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..cache import ResultCache, cache_key, digest, model_key_part, uncacheable_reason
from ..errors import EvaluationError, ModelregError
from ..fingerprint import config_hash, sha256_lines
from ..models import (
    check_model_files,
    cuda_allocated,
    free_memory,
    lm_eval_model_args,
    model_identity,
    remote_code_error,
    resolve_device,
)
from ..provenance import git_state, hardware, library_versions
from ..redact import redact_model_args
from ..results import EvalResult, SampleOutcome
from ..settings import split_model_args
from ..spec import EvalSpec, suggest
from . import NullProgress, Progress

_HASH_CHARS = 16  # 64 bits of sha256 per doc: plenty to tell docs apart, short enough to diff
log = logging.getLogger("pytest_modelreg")


class LmEvalRunner:
    """Loads one model at a time per process (the previous one is freed when the model changes)
    and evaluates tasks on it, through the persistent result cache when one is given."""

    def __init__(self, include_paths: tuple[Path, ...] = (), rootdir: Path = Path("."),
                 progress: Progress | None = None, cache: ResultCache | None = None) -> None:
        self.include_paths = include_paths
        self.rootdir = rootdir
        self.progress: Progress = progress or NullProgress()
        self.cache = cache
        self._models: dict[tuple[str, str, str, str], Any] = {}
        self._task_managers: dict[bool, Any] = {}
        self._hash_cache: dict[tuple[str, int, int], str] = {}
        self.freed: list[tuple[str, int | None, int | None]] = []  # (model, CUDA bytes before, after)

    # -- tasks -----------------------------------------------------------------------------
    def _task_manager(self, with_builtins: bool) -> Any:
        if with_builtins not in self._task_managers:
            from lm_eval.tasks import TaskManager

            paths = [str(p) for p in self.include_paths] or None
            self._task_managers[with_builtins] = TaskManager(
                include_path=paths, include_defaults=with_builtins)
        return self._task_managers[with_builtins]

    def task_manager_for(self, task: str) -> Any:
        """The include paths alone index in ~0 s; lm-eval's ~15k built-ins only when needed."""
        if self.include_paths:
            manager = self._task_manager(with_builtins=False)
            if task in manager.all_tasks:
                return manager
        manager = self._task_manager(with_builtins=True)
        if task in manager.all_tasks:
            return manager
        searched = ", ".join(str(p) for p in self.include_paths) or "no include path"
        raise EvaluationError(
            f"unknown task {task!r}{suggest(task, manager.all_tasks)}; searched {searched} and "
            "lm-eval's built-in tasks; check the name or set --modelreg-include-path")

    # -- models ----------------------------------------------------------------------------
    def model(self, spec: EvalSpec) -> tuple[Any, float]:
        """The loaded model and the seconds spent loading it now (0.0 when reused)."""
        key = spec.model_key
        if key in self._models:
            return self._models[key], 0.0
        self.release_models()  # two models rarely fit on one GPU: the old one goes first
        self._models[key], seconds = self._load(spec)
        return self._models[key], seconds

    def release_models(self) -> None:
        """Drop every loaded model and give its CUDA memory back."""
        if not self._models:
            return
        names = ", ".join(f"{model}({redact_model_args(args)})"
                          for model, args, _, _ in self._models)
        before = cuda_allocated()
        self._models.clear()  # the only references: the objects die here
        after = free_memory()
        self.freed.append((names, before, after))
        if before is not None:
            log.info("freed %s: CUDA memory allocated %.2f GiB -> %.2f GiB", names,
                     before / 2**30, (after or 0) / 2**30)

    def _load(self, spec: EvalSpec) -> tuple[Any, float]:
        check_model_files(spec.model, spec.model_args)
        import lm_eval.api.registry
        import lm_eval.models

        try:
            model_class = lm_eval.api.registry.get_model(spec.model)
        except ImportError as exc:  # e.g. vllm, sglang: an optional engine that is not installed
            raise EvaluationError(
                f"lm-eval model type {spec.model!r} needs a package that is not installed "
                f"({_one_line(exc)}); install it, e.g. pip install 'lm-eval[{spec.model}]'"
            ) from None
        except (ValueError, KeyError) as exc:
            raise EvaluationError(f"unknown lm-eval model type {spec.model!r} ({exc}); use hf, "
                                  "vllm, local-completions, ...") from None
        extra: dict[str, Any] = {"batch_size": spec.batch_size, "max_batch_size": None}
        if "device=" not in spec.model_args:  # a device in model_args wins, as in lm-eval
            extra["device"] = resolve_device(spec.device)
        shown = f"{spec.model}({redact_model_args(spec.model_args)})"
        start = time.perf_counter()
        oom = False
        try:
            with self.progress.stage(f"loading model {shown}"):
                lm = model_class.create_from_arg_string(lm_eval_model_args(spec.model_args), extra)
        except ModelregError:
            raise
        except Exception as exc:  # any library error becomes one line naming the model
            if not (oom := is_out_of_memory(exc)):
                if "trust_remote_code" in str(exc):  # a hub model's code the cache did not show
                    name = split_model_args(spec.model_args).get("pretrained", spec.model)
                    raise remote_code_error(name, "custom code in its repository",
                                            redact_model_args(spec.model_args)) from None
                raise EvaluationError(f"could not load model {shown}: {_one_line(exc)}") from exc
        if oom:  # raised outside the except block: the traceback's tensors are freed first
            free_memory()
            raise out_of_memory_error(f"loading model {shown}", spec.batch_size)
        return lm, time.perf_counter() - start

    def close(self) -> None:
        self.release_models()

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, spec: EvalSpec) -> EvalResult:
        # Before the cache too: a missing opt-in fails the same way with a warm or a cold cache.
        check_model_files(spec.model, spec.model_args)
        manager = self.task_manager_for(spec.task)
        shown = f"{spec.task} on {spec.model}({redact_model_args(spec.model_args)})"
        tasks, loaded = self._build_tasks(spec, manager, shown)
        key = self._cache_key(spec, loaded)
        if key is not None and self.cache is not None:
            hit = self.cache.load(key, spec)
            if hit is not None:
                hit.aggregators = _corpus_aggregators(
                    hit.raw.get("configs", {}).get(spec.task, {}), hit.samples)
                hit.cache_key = key
                return hit
        result = self._evaluate(spec, manager, tasks, shown)
        if key is not None and self.cache is not None:
            self.cache.store(key, result)
            result.cache_key = key
        return result

    def _build_tasks(self, spec: EvalSpec, manager: Any, shown: str) -> tuple[list[Any], Any]:
        """lm-eval's task objects, built once: they give the cache its key (the docs' content)
        and then run, so the data is loaded once."""
        try:
            with _quiet_lm_eval():
                loaded = manager.load([spec.task])
        except ModelregError:
            raise
        except Exception as exc:
            raise EvaluationError(f"loading task {spec.task} failed: {_one_line(exc)}") from exc
        top = loaded["groups"].get(spec.task)
        return ([top] if top is not None else list(loaded["tasks"].values())), loaded

    def _cache_key(self, spec: EvalSpec, loaded: Any) -> str | None:
        if self.cache is None:
            return None
        identity = model_identity(spec.model, spec.model_args, self._hash_cache)
        if (reason := uncacheable_reason(identity, self.cache.endpoints)) is not None:
            log.info("not caching %s: %s", spec.task, reason)
            return None
        tasks = {name: _task_identity(task, spec) for name, task in sorted(loaded["tasks"].items())}
        tasks["groups"] = sorted(str(name) for name in loaded["groups"])
        # The plugin's own opt-ins (allow_pickle) do not change results: not part of the key.
        plain = replace(spec, model_args=lm_eval_model_args(spec.model_args))
        return cache_key(spec, model_key_part(plain, identity), tasks, library_versions())

    def _evaluate(self, spec: EvalSpec, manager: Any, tasks: list[Any], shown: str) -> EvalResult:
        lm, load_seconds = self.model(spec)
        import lm_eval

        start = time.perf_counter()
        oom = False
        try:
            with self.progress.stage(f"evaluating {shown}"), _quiet_lm_eval():
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=tasks, task_manager=manager, limit=spec.limit,
                    num_fewshot=spec.num_fewshot, log_samples=True,
                    bootstrap_iters=spec.bootstrap_iters, gen_kwargs=spec.gen_kwargs,
                    apply_chat_template=spec.apply_chat_template,
                    fewshot_as_multiturn=spec.fewshot_as_multiturn,
                    system_instruction=spec.system_instruction,
                    **spec.seed_dict(),
                )
        except ModelregError:
            raise
        except Exception as exc:
            if not (oom := is_out_of_memory(exc)):
                raise EvaluationError(f"evaluating {shown} failed: {_one_line(exc)}") from exc
        if oom:  # never retried with a smaller batch: the recorded settings stay the ones used
            free_memory()
            raise out_of_memory_error(f"evaluating {shown}", used_batch_size(spec.batch_size, lm))
        seconds = time.perf_counter() - start
        return self._result(spec, out, lm, seconds, load_seconds)

    def _result(self, spec: EvalSpec, out: dict[str, Any], lm: Any, seconds: float,
                load_seconds: float) -> EvalResult:
        return result_from_output(
            spec, out, device=str(getattr(lm, "device", None) or spec.device),
            batch_size=used_batch_size(spec.batch_size, lm, out.get("config")),
            rootdir=self.rootdir,
            model_identity=model_identity(spec.model, spec.model_args, self._hash_cache),
            seconds=seconds, model_load_seconds=load_seconds)


def result_from_output(spec: EvalSpec, out: dict[str, Any], *, device: str, batch_size: str,
                       rootdir: Path, model_identity: dict[str, Any], seconds: float = 0.0,
                       model_load_seconds: float = 0.0) -> EvalResult:
    """An ``EvalResult`` from the output of ``lm_eval.simple_evaluate(..., log_samples=True)``:
    metrics, stderr, per-sample outcomes, fingerprint and provenance, without a loaded model
    (``pytest-modelreg import`` builds baselines from lm-eval's results files with it)."""
    task = spec.task
    metrics, stderr, filters = _aggregate_metrics(out["results"].get(task, {}))
    higher = out.get("higher_is_better", {}).get(task, {})
    samples = _sample_outcomes(out.get("samples", {}), filters)
    n_samples = out.get("n-samples", {}).get(task, {}).get("effective", len(samples))
    task_config = out.get("configs", {}).get(task, {})
    fingerprint = {
        "task_version": out.get("versions", {}).get(task),
        "task_config": config_hash(task_config) if task_config else None,
        "docs": sha256_lines(f"{s.doc_id}:{s.doc_hash}" for s in samples),
        "n_docs": len(samples),
        "prompts": sha256_lines(f"{s.prompt_hash}:{s.target_hash}" for s in samples),
        "num_fewshot": out.get("n-shot", {}).get(task, spec.num_fewshot),
        "limit": spec.limit,
        "gen_kwargs": spec.gen_kwargs,
        "apply_chat_template": spec.apply_chat_template,
        "fewshot_as_multiturn": spec.fewshot_as_multiturn,
        "system_instruction": spec.system_instruction,
        "fewshot_seed": spec.seeds[3],
        "metrics": sorted(metrics),
        "lm_eval_major": ".".join(str(out.get("lm_eval_version", "0.4")).split(".")[:2]),
    }
    provenance = {
        "seeds": spec.seed_dict(),
        "versions": library_versions(),
        "hardware": hardware(device),
        "batch_size": batch_size,  # the one used: lm-eval's pick when "auto" was asked for
        "batch_size_requested": spec.batch_size,
        "git": git_state(rootdir),
        "model": model_identity,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    aggregators = _corpus_aggregators(task_config, samples)
    return EvalResult(
        aggregators=aggregators,
        spec=spec, metrics=metrics, stderr=stderr,
        higher_is_better={m: bool(higher.get(m.split(",")[0], True)) for m in metrics},
        samples=samples, fingerprint=fingerprint, provenance=provenance,
        n_samples=int(n_samples), seconds=seconds, model_load_seconds=model_load_seconds,
        raw=_json_safe({k: v for k, v in out.items() if k != "samples"}),
    )


def _task_identity(task: Any, spec: EvalSpec) -> dict[str, Any]:
    """What one lm-eval task evaluates: its config (functions by their source) and the content
    of the docs the limit keeps (and of the few-shot pool when shots are drawn)."""
    config = task.dump_config()
    docs = task.eval_docs
    count = _limited(len(docs), spec.limit)
    identity = {"config": digest(config), "n_docs": count,
                "docs": digest(list(itertools.islice(docs, count))),
                "version": getattr(task, "VERSION", None)}
    shots = spec.num_fewshot if spec.num_fewshot is not None else config.get("num_fewshot")
    if shots:
        with contextlib.suppress(Exception):  # a task without a few-shot split draws from its docs
            identity["fewshot_docs"] = digest(list(task.fewshot_docs() or []))
    return identity


def _limited(total: int, limit: int | float | None) -> int:
    """How many docs lm-eval evaluates under ``limit`` (a count, or a fraction rounded up)."""
    if limit is None:
        return total
    return min(total, math.ceil(total * limit) if limit < 1 else int(limit))


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM error, or a RuntimeError that says "out of memory" (older torch,
    cuBLAS/cuDNN allocations); torch is not imported for this."""
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom_type, type) and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def out_of_memory_error(doing: str, batch_size: str) -> EvaluationError:
    return EvaluationError(
        f"CUDA out of memory {doing} with batch size {batch_size}; the batch size is never "
        "lowered behind your back: set a smaller batch_size (marker/model, or "
        "--modelreg-batch-size), run fewer xdist workers per GPU, or set a smaller max_length "
        "in model_args")


def used_batch_size(requested: str, lm: Any, config: dict[str, Any] | None = None) -> str:
    """The batch size an evaluation ran with: lm-eval's detected sizes when ``auto`` was asked
    for (``results["config"]["batch_sizes"]``, or the model's own record), else the number."""
    config = config or {}
    detected = config.get("batch_sizes") or list(getattr(lm, "batch_sizes", {}).values())
    if detected:
        return ",".join(str(size) for size in detected)
    size = getattr(lm, "batch_size", None)
    return str(size if size is not None else config.get("batch_size") or requested)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every step at INFO; keep warnings, drop the chatter."""
    logger = logging.getLogger("lm-eval")
    previous = logger.level
    logger.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(previous)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _aggregate_metrics(task_results: dict[str, Any]) -> tuple[dict[str, float],
                                                               dict[str, float | None],
                                                               dict[str, int]]:
    """lm-eval's ``"acc,none"`` keys → ``{"acc": value}``; the filter stays in the name only
    when one metric is reported under several filters. Also returns filters per metric."""
    values: dict[tuple[str, str], float] = {}
    errors: dict[tuple[str, str], float | None] = {}
    for key, value in task_results.items():
        if "," not in key:
            continue
        name, filt = key.split(",", 1)
        if name.endswith("_stderr"):
            errors[(name[: -len("_stderr")], filt)] = _number(value)
        elif (number := _number(value)) is not None:
            values[(name, filt)] = number
    filters: dict[str, int] = {}
    for name, _ in values:
        filters[name] = filters.get(name, 0) + 1
    metrics: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    for (name, filt), value in sorted(values.items()):
        key = name if filters[name] == 1 else f"{name},{filt}"
        metrics[key] = value
        error = errors.get((name, filt))
        stderr[key] = error if error is not None and math.isfinite(error) else None
    return metrics, stderr, filters


def _sample_outcomes(samples: dict[str, list[dict[str, Any]]],
                     filters: dict[str, int]) -> list[SampleOutcome]:
    """One outcome per doc (merged across filters), keyed ``subtask/doc_id`` for groups."""
    merged: dict[tuple[str, Any], dict[str, Any]] = {}
    several_tasks = len(samples) > 1
    for task_name, task_samples in sorted(samples.items()):
        for sample in task_samples:
            doc_id = sample["doc_id"]
            key = (task_name, doc_id)
            entry = merged.setdefault(key, {
                "doc_id": f"{task_name}/{doc_id}" if several_tasks else doc_id,
                "doc_hash": str(sample.get("doc_hash", ""))[:_HASH_CHARS],
                "prompt_hash": str(sample.get("prompt_hash", ""))[:_HASH_CHARS],
                "target_hash": str(sample.get("target_hash", ""))[:_HASH_CHARS],
                "values": {},
                "prompt": _prompt_start(sample.get("arguments")),
            })
            for metric in sample.get("metrics", []):
                name = metric if filters.get(metric, 1) == 1 else f"{metric},{sample['filter']}"
                value = _number(sample.get(metric))
                if value is not None:
                    entry["values"][name] = value
                elif isinstance(sample.get(metric), (list, tuple)):
                    # Corpus metrics log (gold, prediction) items, aggregated over all docs.
                    entry.setdefault("items", {})[name] = _json_safe(sample[metric])
    return [SampleOutcome(**entry) for _, entry in sorted(merged.items(), key=_doc_order)]


def _corpus_aggregators(task_config: dict[str, Any], samples: list[SampleOutcome]
                        ) -> dict[str, Any]:
    """lm-eval's aggregation function of each metric that logs per-doc items."""
    from lm_eval.api.registry import get_aggregation, get_metric_aggregation

    named = {str(m.get("metric")): m.get("aggregation")
             for m in task_config.get("metric_list", []) if isinstance(m, dict)}
    found: dict[str, Any] = {}
    for metric in {name for s in samples for name in s.items}:
        base = metric.split(",")[0]
        aggregation = named.get(base)
        function = get_aggregation(aggregation) if isinstance(aggregation, str) else None
        function = function or get_metric_aggregation(base)
        if function is not None:
            found[metric] = function
    return found


def _prompt_start(arguments: Any, length: int = 60) -> str:
    """The first words of a doc's prompt (lm-eval logs each request's arguments)."""
    try:
        first = arguments[0]
        text = first[0] if isinstance(first, (list, tuple)) else first
    except (TypeError, IndexError, KeyError):
        return ""
    text = " ".join(str(text).split())
    return text if len(text) <= length else text[: length - 3] + "..."


def _doc_order(item: tuple[tuple[str, Any], dict[str, Any]]) -> tuple[str, int, str]:
    (task_name, doc_id), _ = item
    return (task_name, doc_id if isinstance(doc_id, int) else 0, str(doc_id))


def _json_safe(value: Any) -> Any:
    """lm-eval results hold numpy scalars and callables; make them plain JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    number = _number(value)
    if number is not None and hasattr(value, "dtype"):
        return number
    return str(value)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # silence the fork warning in workers
