"""Marker and fixture arguments, validated into an ``EvalSpec`` and a list of ``MetricCheck``.

An ``EvalSpec`` is the evaluation key: tests that build equal specs share one evaluation.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelregUsageError
from .settings import (
    SEED_RANGE,
    Settings,
    parse_batch_size,
    parse_limit,
    parse_model,
    shown,
    split_model_args,
)

# lm-eval's own defaults (lm_eval.evaluator.DEFAULT_*_SEED), so results match a plain lm-eval run.
DEFAULT_SEEDS: tuple[int, int, int, int] = (0, 1234, 1234, 1234)
SEED_NAMES = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")

EVAL_ARGS = (
    "model", "model_args", "limit", "num_fewshot", "batch_size", "gen_kwargs",
    "apply_chat_template", "fewshot_as_multiturn", "system_instruction", "seed",
    "bootstrap_iters", "baseline", "evaluator",
)
CHECK_ARGS = ("metrics", "min", "max", "tolerance", "max_gain")
REQUIREMENT_ARGS = ("gpu", "min_gpu_memory")  # where a test can run, not what it computes
MARKER_ARGS = ("task", *CHECK_ARGS, *EVAL_ARGS, *REQUIREMENT_ARGS)
THRESHOLD_KEYS = ("min", "max", "tolerance", "max_gain")


@dataclass(frozen=True)
class EvalSpec:
    """Everything that decides what one evaluation computes (hashable: the evaluation key)."""

    task: str
    model: str
    model_args: str
    limit: int | float | None = None
    num_fewshot: int | None = None
    batch_size: str = "1"
    device: str = "auto"
    gen_kwargs: str | None = None
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    seeds: tuple[int, int, int, int] = DEFAULT_SEEDS
    bootstrap_iters: int = 100_000
    baseline_name: str = ""
    # A user's function instead of lm-eval (models lm-eval does not evaluate); see custom.py.
    evaluator: Callable[..., Any] | None = None

    @property
    def model_key(self) -> tuple[str, str, str, str]:
        """What decides the loaded model: one load per distinct key per process."""
        return (self.model, self.model_args, self.device, self.batch_size)

    def seed_dict(self) -> dict[str, int]:
        return dict(zip(SEED_NAMES, self.seeds, strict=True))


@dataclass(frozen=True)
class Tolerance:
    """The tolerated drop: absolute (0.01) or relative to the baseline ("2%")."""

    value: float = 0.0
    relative: bool = False

    def allowed_drop(self, baseline: float) -> float:
        return abs(baseline) * self.value if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class MetricCheck:
    metric: str
    min: float | None = None
    max: float | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    max_gain: float | None = None  # a larger improvement is suspicious (a broken evaluation?)


def suggest(word: object, choices: list[str] | tuple[str, ...]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_threshold(name: str, value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ModelregUsageError(f"{where}: {name} must be a number, got {shown(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int beyond any float
        raise ModelregUsageError(f"{where}: {name} must be a number, got {shown(value)}") from None
    if not math.isfinite(number):
        raise ModelregUsageError(f"{where}: {name} must be a finite number, got {shown(value)}")
    return number


_PERCENT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")


def parse_tolerance(value: object, where: str) -> Tolerance:
    """0.01 (absolute) or "2%" (relative to the baseline); never negative."""
    if value is None:
        return Tolerance()
    match = _PERCENT.match(value) if isinstance(value, str) else None
    try:
        number = float(match.group(1)) / 100 if match else parse_threshold("tolerance", value, where)
    except ModelregUsageError:
        number = None
    if number is None or not 0 <= number < math.inf:  # "1e400%" is a float's inf
        raise ModelregUsageError(
            f"{where}: tolerance must be a drop >= 0, absolute (0.01) or relative ('2%'), "
            f"got {shown(value)}"
        )
    return Tolerance(number, relative=match is not None)


def _check(metric: str, bounds: Mapping[str, object], defaults: Mapping[str, object],
           where: str) -> MetricCheck:
    unknown = sorted(set(bounds) - set(THRESHOLD_KEYS), key=str)  # keys of any type
    if unknown:
        raise ModelregUsageError(
            f"{where}: unknown threshold {shown(unknown[0])} for metric {metric!r}"
            f"{suggest(unknown[0], THRESHOLD_KEYS)}; use min, max, tolerance or max_gain"
        )
    merged = {**defaults, **bounds}
    low = parse_threshold("min", merged.get("min"), where)
    high = parse_threshold("max", merged.get("max"), where)
    if low is not None and high is not None and low > high:
        raise ModelregUsageError(f"{where}: min {low:g} is above max {high:g} for {metric!r}")
    gain = parse_threshold("max_gain", merged.get("max_gain"), where)
    if gain is not None and gain <= 0:
        raise ModelregUsageError(f"{where}: max_gain must be a gain > 0, got {gain:g}")
    return MetricCheck(metric, low, high, parse_tolerance(merged.get("tolerance"), where), gain)


def parse_checks(metrics: object, defaults: Mapping[str, object], where: str) -> list[MetricCheck] | None:
    """Metric checks from ``metrics=`` (a name, a list, or a dict of per-metric thresholds).

    None means "every metric of the task", with the default thresholds.
    """
    if metrics is None:
        return None
    if isinstance(metrics, str):
        metrics = [metrics]
    if isinstance(metrics, Mapping):
        checks = []
        for name, bounds in metrics.items():
            if bounds is None:
                bounds = {}
            if not isinstance(name, str) or not isinstance(bounds, Mapping):
                raise ModelregUsageError(
                    f"{where}: metrics must map a metric name to its thresholds, e.g. "
                    f"{{'acc_norm': {{'min': 0.6}}}}; got {shown(name)}: {shown(bounds)}"
                )
            checks.append(_check(name, bounds, defaults, where))
        return checks
    if isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics):
        if not metrics:
            raise ModelregUsageError(f"{where}: metrics is empty; name at least one or leave it out")
        return [_check(name, {}, defaults, where) for name in metrics]
    raise ModelregUsageError(
        f"{where}: metrics must be a metric name, a list of names or a dict of thresholds; "
        f"got {shown(metrics)}"
    )


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _int_arg(name: str, value: object, where: str, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelregUsageError(f"{where}: {name} must be a whole number >= {minimum}, "
                                 f"got {shown(value)}")
    return value


def _gen_kwargs(value: object, where: str) -> str | None:
    """Normalise gen_kwargs (dict or "k=v,k=v") into a canonical string for the key."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = split_model_args(value, f"{where}: gen_kwargs")
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ModelregUsageError(f"{where}: gen_kwargs must be a dict or 'k=v,k=v', "
                                 f"got {shown(value)}")
    try:
        return ",".join(f"{k}={value[k]}" for k in sorted(value))
    except ValueError:  # a value that cannot be written out (an int of 5000 digits)
        raise ModelregUsageError(f"{where}: gen_kwargs has a value that cannot be written as "
                                 f"text: {shown(value)}") from None


def short_hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:8]


def _model(args: Mapping[str, Any], settings: Settings, where: str) -> tuple[str, str]:
    """(model type, model_args) of a marker/fixture call, or the session's."""
    model = args.get("model")
    model = settings.model if model in (None, "") else parse_model(model, f"{where}: model")
    model_args = args.get("model_args")
    if model_args is None:
        model_args = settings.model_args
    elif not isinstance(model_args, str):
        raise ModelregUsageError(f"{where}: model_args must be 'key=value,key=value' text, got "
                                 f"{shown(model_args)}")
    split_model_args(model_args, f"{where}: model_args")
    return model, model_args


def _seeds(args: Mapping[str, Any], settings: Settings, where: str) -> tuple[int, int, int, int]:
    seed = args.get("seed", settings.seed)
    if seed is None:
        return DEFAULT_SEEDS
    if type(seed) is not int or not 0 <= seed < SEED_RANGE:  # numpy refuses others, late
        raise ModelregUsageError(f"{where}: seed must be a whole number from 0 to "
                                 f"{SEED_RANGE - 1}, got {shown(seed)}")
    return (seed, seed, seed, seed)


def _chat(args: Mapping[str, Any], where: str) -> tuple[bool | str, bool, str | None]:
    """(apply_chat_template, fewshot_as_multiturn, system_instruction), type-checked: they are
    part of the evaluation key, which must be hashable and mean what it says."""
    template = args.get("apply_chat_template")
    multiturn = args.get("fewshot_as_multiturn")
    instruction = args.get("system_instruction")
    if template is not None and not isinstance(template, (bool, str)):
        raise ModelregUsageError(f"{where}: apply_chat_template must be True, False or a "
                                 f"template name, got {shown(template)}")
    if multiturn is not None and not isinstance(multiturn, bool):
        raise ModelregUsageError(f"{where}: fewshot_as_multiturn must be True or False, got "
                                 f"{shown(multiturn)}")
    if instruction is not None and not isinstance(instruction, str):
        raise ModelregUsageError(f"{where}: system_instruction must be text, got "
                                 f"{shown(instruction)}")
    return template or False, bool(multiturn), instruction


def build_spec(task: object, args: Mapping[str, Any], settings: Settings, where: str) -> EvalSpec:
    """An ``EvalSpec`` from marker/fixture arguments, falling back to the session settings."""
    if not isinstance(task, str) or not task.strip():
        raise ModelregUsageError(f"{where}: task must be a task name, got {shown(task)}")
    unknown = sorted(set(args) - set(EVAL_ARGS), key=str)
    if unknown:
        raise ModelregUsageError(
            f"{where}: unknown argument {shown(unknown[0])}{suggest(unknown[0], EVAL_ARGS)}"
        )
    model, model_args = _model(args, settings, where)
    limit = settings.limit if args.get("limit") is None else parse_limit(args["limit"], f"{where}: limit")
    overridden = args.get("model") not in (None, "") or args.get("model_args") is not None
    baseline = args.get("baseline")
    if baseline is not None and (not isinstance(baseline, str) or not baseline.strip()):
        raise ModelregUsageError(f"{where}: baseline must be a name, got {shown(baseline)}")
    default_name = f"{task}--{model}-{short_hash(model, model_args)}" if overridden else task
    evaluator = args.get("evaluator")
    if evaluator is not None and not callable(evaluator):
        raise ModelregUsageError(f"{where}: evaluator must be a function that evaluates the model, "
                                 f"got {shown(evaluator)}")
    template, multiturn, instruction = _chat(args, where)
    return EvalSpec(
        task=task.strip(),
        model=model,
        model_args=model_args,
        limit=limit,
        num_fewshot=_int_arg("num_fewshot", args.get("num_fewshot"), where),
        batch_size=parse_batch_size(args.get("batch_size", settings.batch_size), f"{where}: batch_size"),
        device=settings.device,
        gen_kwargs=_gen_kwargs(args.get("gen_kwargs"), where),
        apply_chat_template=template,
        fewshot_as_multiturn=multiturn,
        system_instruction=instruction,
        seeds=_seeds(args, settings, where),
        bootstrap_iters=_default(_int_arg("bootstrap_iters", args.get("bootstrap_iters"), where),
                                 100_000),  # 0 turns lm-eval's bootstrap off; keep it
        baseline_name=(baseline or default_name).strip(),
        evaluator=evaluator,
    )


def parse_marker(args: tuple[Any, ...], kwargs: Mapping[str, Any], settings: Settings,
                 where: str) -> tuple[EvalSpec, list[MetricCheck] | None, dict[str, object]]:
    """Validate ``@pytest.mark.modelreg(...)`` into (spec, checks, default thresholds)."""
    if len(args) > 1 or (args and "task" in kwargs):
        raise ModelregUsageError(f"{where}: @pytest.mark.modelreg takes one task, e.g. task='piqa'")
    unknown = sorted(set(kwargs) - set(MARKER_ARGS))
    if unknown:
        raise ModelregUsageError(
            f"{where}: @pytest.mark.modelreg got unknown argument {unknown[0]!r}"
            f"{suggest(unknown[0], MARKER_ARGS)}; allowed: {', '.join(MARKER_ARGS)}"
        )
    task = args[0] if args else kwargs.get("task")
    if task is None:
        raise ModelregUsageError(f"{where}: @pytest.mark.modelreg needs task=..., e.g. task='piqa'")
    defaults = {k: kwargs[k] for k in THRESHOLD_KEYS if k in kwargs}
    # Validate the shared thresholds even when no metric list is given.
    _check("(all)", {}, defaults, where)
    checks = parse_checks(kwargs.get("metrics"), defaults, where)
    eval_args = {k: v for k, v in kwargs.items() if k in EVAL_ARGS}
    return build_spec(task, eval_args, settings, where), checks, defaults


def parse_requirements(kwargs: Mapping[str, Any], where: str) -> tuple[bool, float | None]:
    """(needs a GPU, least GPU memory in GiB) from ``gpu=True`` / ``min_gpu_memory='40GB'``."""
    from .gpus import parse_memory

    gpu = kwargs.get("gpu", False)
    if not isinstance(gpu, bool):
        raise ModelregUsageError(f"{where}: gpu must be True or False, got {shown(gpu)}")
    memory = kwargs.get("min_gpu_memory")
    least = None if memory is None else parse_memory(memory, f"{where}: min_gpu_memory")
    return gpu or least is not None, least


def function_name(function: Callable[..., Any]) -> str:
    """``module.qualname`` of a user's evaluator, for params, reports and baselines (a
    ``functools.partial`` by the function it wraps: its repr holds a memory address)."""
    while hasattr(function, "func"):  # functools.partial, possibly nested
        function = function.func
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{getattr(function, '__module__', '?')}.{name}"


def spec_record(spec: EvalSpec) -> dict[str, Any]:
    """An ``EvalSpec`` as plain JSON (a user's evaluator by its name), for ``spec_from_record``."""
    from dataclasses import asdict

    from .redact import redact_model_args

    record = {k: v for k, v in asdict(spec).items() if k != "evaluator"}
    record["model_args"] = redact_model_args(spec.model_args)  # reports must not carry secrets
    record["seeds"] = list(spec.seeds)
    if spec.evaluator is not None:
        record["evaluator_name"] = function_name(spec.evaluator)
    return record


def spec_from_record(record: Mapping[str, Any]) -> EvalSpec:
    """The ``EvalSpec`` of ``spec_record`` (without a user's evaluator function)."""
    fields = {k: v for k, v in record.items() if k in EvalSpec.__dataclass_fields__}
    fields["seeds"] = tuple(fields.get("seeds", DEFAULT_SEEDS))
    return EvalSpec(**fields)
