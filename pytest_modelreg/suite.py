"""Suites without Python: ``modelreg*.yaml`` files are collected as tests, one item per task.

Two formats are read: this plugin's own (``model``/``model_args``/``tasks`` with the marker's
settings and thresholds) and vLLM's lm-eval CI configs (``model_name``, metric ``value``s and
``rtol``), unchanged. Each task becomes an item carrying an ordinary ``modelreg`` marker, so the
plugin evaluates, checks, counts (Holm), groups (xdist) and skips (GPU needs) it exactly as it
does a marked test function. Bad input is a collection error of one line: ``file:line: what``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from .errors import CheckFailed, ModelregError, ModelregUsageError
from .settings import Settings, expand_env, parse_model_args, split_model_args
from .spec import (
    EVAL_ARGS,
    REQUIREMENT_ARGS,
    THRESHOLD_KEYS,
    parse_checks,
    parse_marker,
    parse_requirements,
    suggest,
)

# Evaluation settings a file or task may set: the marker's, less what only Python can give.
SETTING_KEYS = tuple(k for k in EVAL_ARGS if k not in ("evaluator", "baseline"))
FILE_KEYS = ("tasks", *SETTING_KEYS, *THRESHOLD_KEYS, *REQUIREMENT_ARGS)
TASK_KEYS = ("name", "metrics", "baseline", *SETTING_KEYS, *THRESHOLD_KEYS, *REQUIREMENT_ARGS)
METRIC_KEYS = ("name", *THRESHOLD_KEYS)

# vLLM's .buildkite/lm-eval-harness/test_lm_eval_correctness.py: a metric passes when
# measured >= value * (1 - rtol), with rtol 0.08 unless the file sets one.
VLLM_DEFAULT_RTOL = 0.08
# The engine arguments vLLM's runner adds to model_args, with its defaults (None: only if set).
VLLM_ENGINE_ARGS: tuple[tuple[str, str, object], ...] = (
    # (file key, model_args key, default)
    ("enforce_eager", "enforce_eager", "true"),
    ("kv_cache_dtype", "kv_cache_dtype", "auto"),
    ("max_model_len", "max_model_len", 4096),
    ("moe_backend", "moe_backend", None),
    ("tokenizer_mode", "tokenizer_mode", None),
)
_MODEL_TYPE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class SuiteError(Exception):
    """A suite file that cannot be read: the message is one line, ``file:line: what``."""


@dataclass(frozen=True)
class SuiteCase:
    """One task of a suite file: the ``modelreg`` marker it becomes and where it was written."""

    name: str  # the item's name: the task, or its baseline name when one is given
    line: int  # 1-based line of the task's entry
    kwargs: dict[str, Any]  # the marker's arguments
    notes: tuple[str, ...] = ()  # shown with a failure (how vLLM's values became bounds)


# -- YAML with line numbers --------------------------------------------------------------------
class LinedMap(dict[Any, Any]):
    """A YAML mapping that remembers its line and each key's line (1-based)."""

    line: int = 1
    key_lines: dict[object, int]


class LinedList(list[Any]):
    """A YAML sequence that remembers its line and each item's line (1-based)."""

    line: int = 1
    item_lines: list[int]


def line_of(container: object, key: object = None) -> int:
    """The line of ``key`` in a mapping (or of the mapping itself), 1 when unknown."""
    if isinstance(container, LinedMap):
        return container.key_lines.get(key, container.line)
    return getattr(container, "line", 1)


def load_yaml(text: str, file: str) -> Any:
    """Parse ``text``, keeping lines; a syntax error names the line PyYAML stopped at."""
    import yaml

    try:
        return yaml.load(text, Loader=_lined_loader())  # a SafeLoader subclass: no Python tags
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(str(exc.problem or exc.context or "").split())
        if exc.problem and exc.context and exc.context_mark is not None \
                and exc.context_mark.line + 1 != line:  # an unclosed bracket: where it opened
            what += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise SuiteError(f"{file}:{line}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{file}:1: not valid YAML: {' '.join(str(exc).split())}") from None


def _lined_loader() -> type:
    import yaml

    class LinedLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LinedMap:
        loader.flatten_mapping(node)  # YAML merge keys (<<: *defaults)
        data = LinedMap()
        data.line, data.key_lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in data
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name, got {key!r}", key_node.start_mark) from None
            if duplicate:  # PyYAML would silently keep the last one
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            data[key] = loader.construct_object(value_node, deep=True)
            data.key_lines[key] = key_node.start_mark.line + 1
        return data

    def sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LinedList:
        data = LinedList(loader.construct_object(child, deep=True) for child in node.value)
        data.line = node.start_mark.line + 1
        data.item_lines = [child.start_mark.line + 1 for child in node.value]
        return data

    LinedLoader.add_constructor("tag:yaml.org,2002:map", mapping)
    LinedLoader.add_constructor("tag:yaml.org,2002:seq", sequence)
    return LinedLoader


# -- reading a suite ---------------------------------------------------------------------------
def read_suite(data: object, file: str, settings: Settings, model_type_set: bool
               ) -> tuple[list[SuiteCase], list[tuple[int, str]]]:
    """The cases of a parsed suite file, and (line, warning) for what it asks but is not done.

    ``model_type_set``: the session names a model type itself (flag, ini or environment).
    """
    if not isinstance(data, LinedMap):
        kind = "an empty file" if data is None else "a list" if isinstance(data, list) else \
            repr(data)
        raise SuiteError(f"{file}:{line_of(data)}: a modelreg suite is a mapping with tasks:, "
                         f"got {kind}")
    if "tasks" not in data:
        raise SuiteError(f"{file}:{data.line}: no tasks: list; a modelreg suite lists its lm-eval "
                         "tasks under tasks:, e.g. 'tasks: [{name: piqa, limit: 500}]'")
    tasks = data["tasks"]
    if not isinstance(tasks, LinedList) or not tasks:
        raise SuiteError(f"{file}:{line_of(data, 'tasks')}: tasks must list at least one task, "
                         f"e.g. 'tasks: [{{name: piqa, limit: 500}}]', got {tasks!r}")
    if "model_name" in data or _has_metric_values(tasks):
        cases, notes = read_vllm(data, tasks, file, settings, model_type_set)
    else:
        cases, notes = read_modelreg(data, tasks, file, settings), []
    _check_unique(cases, file)
    return cases, notes


def read_modelreg(data: LinedMap, tasks: LinedList, file: str, settings: Settings
                  ) -> list[SuiteCase]:
    """This plugin's format: file-level settings and thresholds, overridden per task."""
    _check_keys(data, FILE_KEYS, file, "at the top of the file")
    shared = _settings_of(data, file, settings, skip=("tasks",))
    cases = []
    for entry, line in zip(tasks, tasks.item_lines, strict=True):
        if isinstance(entry, str):  # "- piqa": a task with the file's settings
            entry = LinedMap(name=entry)
            entry.line, entry.key_lines = line, {}
        name = _task_name(entry, line, file)
        _check_keys(entry, TASK_KEYS, file, f"in task {name!r}")
        kwargs = {**shared, **_settings_of(entry, file, settings, skip=("name", "metrics"),
                                           task=name)}
        kwargs["task"] = name
        if "metrics" in entry:
            kwargs["metrics"] = _metrics(entry["metrics"], line_of(entry, "metrics"), file, name)
        _validate(kwargs, f"{file}:{line}: task {name!r}", settings)
        cases.append(SuiteCase(str(kwargs.get("baseline") or name), line, kwargs))
    return cases


def read_vllm(data: LinedMap, tasks: LinedList, file: str, settings: Settings,
              model_type_set: bool) -> tuple[list[SuiteCase], list[tuple[int, str]]]:
    """vLLM's lm-eval CI config, read the way vLLM's runner reads it (other keys are ignored)."""
    rtol = _number(data.get("rtol", VLLM_DEFAULT_RTOL), "rtol", f"{file}:{line_of(data, 'rtol')}")
    if rtol < 0:
        raise SuiteError(f"{file}:{line_of(data, 'rtol')}: rtol must be >= 0, got {rtol:g}")
    shared = _vllm_model(data, file, settings, model_type_set)
    for key in ("limit", "num_fewshot", "batch_size", "gen_kwargs", "apply_chat_template",
                "fewshot_as_multiturn"):
        if data.get(key) is not None:
            shared[key] = _checked_setting(key, data[key], f"{file}:{line_of(data, key)}",
                                           settings)
    if "apply_chat_template" not in shared and shared.get("model") == "vllm-vlm":
        shared["apply_chat_template"] = True  # vLLM's runner does this for vision models
    cases = []
    for entry, line in zip(tasks, tasks.item_lines, strict=True):
        name = _task_name(entry, line, file)
        metrics, notes = _vllm_metrics(entry, line, file, name, rtol)
        kwargs = {**shared, "task": name, "metrics": metrics}
        _validate(kwargs, f"{file}:{line}: task {name!r}", settings)
        cases.append(SuiteCase(name, line, kwargs, notes))
    warned = []
    if data.get("env_vars"):  # vLLM sets these around its evaluation; a session cannot
        warned.append((line_of(data, "env_vars"), "modelreg: env_vars of a vLLM config are "
                       "not applied; set them in the environment pytest runs in"))
    return cases, warned


def _vllm_model(data: LinedMap, file: str, settings: Settings, model_type_set: bool
                ) -> dict[str, Any]:
    """model and model_args from model_name (and backend), as vLLM's runner builds them.

    The model type is the file's ``backend``, else the session's when it names one, else
    ``vllm`` (what vLLM's runner uses). The session's other model_args are kept when the model
    type is the session's (tensor_parallel_size and the like come from there, as --tp-size does
    for vLLM's runner).
    """
    where = f"{file}:{line_of(data, 'backend')}"
    backend = data.get("backend")
    if backend is not None and (not isinstance(backend, str) or not _MODEL_TYPE.match(backend)):
        raise SuiteError(f"{where}: backend must be an lm-eval model type such as vllm, "
                         f"got {backend!r}")
    model = backend or (settings.model if model_type_set else "vllm")
    if "model_name" not in data:
        return {} if backend is None else {"model": model}
    name = data["model_name"]
    where = f"{file}:{line_of(data, 'model_name')}"
    if not isinstance(name, str) or not name.strip() or "," in name:
        raise SuiteError(f"{where}: model_name must be a model id or folder, got {name!r}")
    args: dict[str, object] = {}
    if model == settings.model:
        args.update(split_model_args(settings.model_args))
    args["pretrained"] = _convert(expand_env, name.strip(), where, os.environ)
    if "trust_remote_code" in data:
        args["trust_remote_code"] = data["trust_remote_code"]
    if model.startswith("vllm"):
        # The file's engine arguments win; vLLM's defaults only fill in what the session left.
        args.setdefault("add_bos_token", "true")
        args.setdefault("trust_remote_code", False)
        for key, arg, default in VLLM_ENGINE_ARGS:
            if data.get(key) is not None:
                args[arg] = data[key]
            elif default is not None:
                args.setdefault(arg, default)
    return {"model": model, "model_args": ",".join(f"{k}={v}" for k, v in args.items())}


def _vllm_metrics(entry: LinedMap, line: int, file: str, task: str, rtol: float
                  ) -> tuple[dict[str, dict[str, float]], tuple[str, ...]]:
    """Each metric's value becomes a floor: value * (1 - rtol), as vLLM's runner checks."""
    metrics = entry.get("metrics")
    where = f"{file}:{line_of(entry, 'metrics')}"
    if not isinstance(metrics, LinedList) or not metrics:
        raise SuiteError(f"{where}: task {task!r} needs metrics: a list of name: and value:")
    bounds: dict[str, dict[str, float]] = {}
    notes = []
    for metric, metric_line in zip(metrics, metrics.item_lines, strict=True):
        at = f"{file}:{metric_line}"
        if not isinstance(metric, LinedMap) or not isinstance(metric.get("name"), str):
            raise SuiteError(f"{at}: a metric of task {task!r} has no name:")
        # lm-eval's "acc,none" is this plugin's "acc" (the filter stays only where it matters)
        name = metric["name"].strip().removesuffix(",none")
        if "value" not in metric:
            raise SuiteError(f"{at}: metric {metric['name']!r} of task {task!r} has no value:")
        value = _number(metric["value"], "value", f"{file}:{line_of(metric, 'value')}")
        floor = value - abs(value) * rtol  # value * (1 - rtol) for the usual value >= 0
        if name in bounds:
            raise SuiteError(f"{at}: metric {name!r} of task {task!r} is listed twice")
        bounds[name] = {"min": floor}
        notes.append(f"{task}/{name}: vLLM config value {value:g} with rtol {rtol:g}: passes "
                     f"at >= {floor:.4f} (measured >= value * (1 - rtol), as vLLM's CI checks)")
    return bounds, tuple(notes)


def _has_metric_values(tasks: LinedList) -> bool:
    """A metric with a ``value:`` is vLLM's format, even without model_name."""
    return any(isinstance(m, Mapping) and "value" in m
               for t in tasks if isinstance(t, Mapping)
               for m in (t.get("metrics") if isinstance(t.get("metrics"), list) else []))


def _task_name(entry: object, line: int, file: str) -> str:
    if not isinstance(entry, LinedMap):
        raise SuiteError(f"{file}:{line}: a task is a mapping with name: (and its settings), "
                         f"got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SuiteError(f"{file}:{line_of(entry, 'name')}: a task needs a name: "
                         f"(an lm-eval task), got {name!r}")
    return name.strip()


def _check_keys(entry: LinedMap, allowed: tuple[str, ...], file: str, place: str) -> None:
    for key in entry:
        if key not in allowed:
            hint = suggest(str(key), allowed) or f"; allowed: {', '.join(allowed)}"
            raise SuiteError(f"{file}:{line_of(entry, key)}: unknown key {key!r} {place}{hint}")


def _settings_of(entry: LinedMap, file: str, settings: Settings, skip: tuple[str, ...],
                 task: str = "_") -> dict[str, Any]:
    """The marker arguments of one mapping, each checked on its own line."""
    return {key: _checked_setting(key, value, f"{file}:{line_of(entry, key)}", settings, task)
            for key, value in entry.items() if key not in skip}


def _checked_setting(key: str, value: object, where: str, settings: Settings,
                     task: str = "_") -> object:
    """One setting checked alone, so that its error names its own line."""
    if key == "model" and (not isinstance(value, str) or not _MODEL_TYPE.match(value)):
        raise SuiteError(f"{where}: model must be an lm-eval model type such as hf or vllm, "
                         f"got {value!r}")
    if key == "model_args":
        if not isinstance(value, str):
            raise SuiteError(f"{where}: model_args must be 'key=value,key=value', got {value!r}")
        value = _expand(value, where)
    if key in ("fewshot_as_multiturn", "gpu") and not isinstance(value, bool):
        raise SuiteError(f"{where}: {key} must be true or false, got {value!r}")
    if key == "apply_chat_template" and not isinstance(value, (bool, str)):
        raise SuiteError(f"{where}: apply_chat_template must be true, false or a template "
                         f"name, got {value!r}")
    if key in ("system_instruction", "baseline") and not isinstance(value, str):
        raise SuiteError(f"{where}: {key} must be text, got {value!r}")
    _validate({"task": task, key: value}, where, settings)
    return value


def _metrics(value: object, line: int, file: str, task: str) -> dict[str, dict[str, Any]]:
    """``metrics:`` as a name, a list of names or of {name:, min:, ...}, or a mapping of names
    to thresholds (the marker's dict form), into the marker's dict form."""
    where = f"{file}:{line}"
    if isinstance(value, str):
        value = LinedList([value])
        value.line, value.item_lines = line, [line]
    if isinstance(value, LinedMap):
        entries = [(name, {} if bounds is None else bounds, line_of(value, name))
                   for name, bounds in value.items()]
    elif isinstance(value, LinedList):
        entries = [_metric_entry(item, item_line, file, task)
                   for item, item_line in zip(value, value.item_lines, strict=True)]
    else:
        raise SuiteError(f"{where}: metrics of task {task!r} must be a list of names or of "
                         f"name: with thresholds, got {value!r}")
    if not entries:
        raise SuiteError(f"{where}: metrics of task {task!r} is empty; name at least one or "
                         "leave metrics out (every metric of the task is then checked)")
    metrics: dict[str, dict[str, Any]] = {}
    for name, bounds, at in entries:
        if not isinstance(name, str) or not isinstance(bounds, Mapping):
            raise SuiteError(f"{file}:{at}: metric {name!r} of task {task!r} must map to its "
                             f"thresholds (min, max, tolerance, max_gain), got {bounds!r}")
        if name in metrics:
            raise SuiteError(f"{file}:{at}: metric {name!r} of task {task!r} is listed twice")
        _convert(parse_checks, {name: dict(bounds)}, {}, f"{file}:{at}: task {task!r}")
        metrics[name] = dict(bounds)
    return metrics


def _metric_entry(item: object, line: int, file: str, task: str
                  ) -> tuple[object, Mapping[str, Any], int]:
    if isinstance(item, str):
        return item, {}, line
    if not isinstance(item, LinedMap):
        raise SuiteError(f"{file}:{line}: a metric of task {task!r} is a name or a mapping with "
                         f"name:, got {item!r}")
    if not isinstance(item.get("name"), str) or not item["name"].strip():
        raise SuiteError(f"{file}:{line_of(item, 'name')}: a metric of task {task!r} has no "
                         "name:")
    _check_keys(item, METRIC_KEYS, file, f"in metric {item['name']!r} of task {task!r}")
    return item["name"].strip(), {k: v for k, v in item.items() if k != "name"}, line


def _validate(kwargs: Mapping[str, Any], where: str, settings: Settings) -> None:
    """The marker's own checks (and the GPU requirement's), as a one-line suite error."""
    _convert(parse_marker, (), kwargs, settings, where)
    _convert(parse_requirements, kwargs, where)


def _convert(check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, its usage error turned into a one-line suite error."""
    try:
        return check(*args)
    except ModelregUsageError as exc:
        raise SuiteError(" ".join(str(exc).split())) from None


def _number(value: object, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SuiteError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _expand(text: str, where: str) -> str:
    """``${VAR}`` from the environment, as in --modelreg-model-args."""
    return _convert(parse_model_args, text, where, os.environ)


def _check_unique(cases: list[SuiteCase], file: str) -> None:
    seen: dict[str, int] = {}
    for case in cases:
        if case.name in seen:
            raise SuiteError(f"{file}:{case.line}: task {case.name!r} is listed twice (first on "
                             f"line {seen[case.name]}); give one of them its own baseline: name")
        seen[case.name] = case.line


# -- pytest nodes ------------------------------------------------------------------------------
class SuiteFile(pytest.File):
    """A ``modelreg*.yaml`` file: one test item per task."""

    def collect(self) -> Iterator[SuiteItem]:
        from .plugin import SETUP_KEY

        settings = self.config.stash[SETUP_KEY].settings
        try:
            text = self.path.read_text(encoding="utf-8")
            cases, notes = read_suite(load_yaml(text, self.nodeid), self.nodeid, settings,
                                      model_type_set(self.config))
        except UnicodeDecodeError:
            raise self.CollectError(f"{self.nodeid}:1: not UTF-8 text") from None
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from None
        for line, note in notes:  # shown in the summary at the YAML file's line
            warnings.warn_explicit(pytest.PytestWarning(note), None, str(self.path), line)
        for case in cases:
            yield SuiteItem.from_parent(self, name=case.name, case=case)


class SuiteItem(pytest.Item):
    """One task of a suite. It carries a ``modelreg`` marker: the plugin's marker hooks
    evaluate and check it after ``runtest``, exactly as for a marked test function."""

    def __init__(self, *, case: SuiteCase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.add_marker(pytest.mark.modelreg.with_args(**case.kwargs))

    def runtest(self) -> None:
        if self.case.notes:  # shown under a failure: where the bounds came from
            self.add_report_section("call", "modelreg suite", "\n".join(self.case.notes))

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, self.case.line - 1, f"modelreg suite: {self.case.kwargs['task']}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, (ModelregError, CheckFailed)):
            return f"modelreg: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)


def model_type_set(config: pytest.Config) -> bool:
    """Whether the session names a model type (flag, ini or MODELREG_MODEL), not the default."""
    return bool(config.getoption("modelreg_model", None) or config.getini("modelreg_model")
                or os.environ.get("MODELREG_MODEL"))
