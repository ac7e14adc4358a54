"""Baselines from lm-eval's own output files (``lm_eval --output_path OUT --log_samples``).

``results_<time>.json`` holds the aggregates, the task configs and the run's settings; each
``samples_<task>_<time>.jsonl`` beside it one line per doc with its content hashes and per-sample
metric values. Both become the same ``EvalResult`` the plugin builds for the same evaluation
(through ``runner.lm_eval_runner.result_from_output``), so a later plugin run on the same model,
task and limit compares paired on the same docs instead of "incomparable".

Without the samples files the baseline holds the aggregates only, and the plugin falls back to
the unpaired comparison of the aggregates and their standard errors.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .baselines import Baseline
from .errors import BaselineError, ModelregUsageError
from .spec import DEFAULT_SEEDS, EvalSpec

_RESULTS = re.compile(r"^results_(?P<stamp>.+)\.json$")


@dataclass
class Imported:
    baseline: Baseline
    samples_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_results(path: Path) -> dict[str, Any]:
    """lm-eval's results file, checked to be one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelregUsageError(f"results file {path} does not exist; give the results_*.json "
                                 "that lm_eval --output_path wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"results file {path} is not readable JSON ({exc}); give the "
                            "results_*.json that lm_eval --output_path wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise BaselineError(f"{path} is not an lm-eval results file (no 'results' section); give "
                            "the results_*.json that lm_eval --output_path wrote")
    return data


def pick_task(data: Mapping[str, Any], task: str | None, path: Path) -> str:
    """The task to import: the one asked for, else the only top-level one in the file."""
    results = data["results"]
    groups = data.get("group_subtasks", {}) or {}
    members = {name for subtasks in groups.values() for name in subtasks}
    top = sorted(name for name in results if name not in members) or sorted(results)
    if task is not None:
        if task not in results:
            raise ModelregUsageError(f"{path} has no task {task!r}; it has: {', '.join(sorted(results))}")
        return task
    if len(top) != 1:
        raise ModelregUsageError(f"{path} holds several tasks ({', '.join(top)}); choose one "
                                 "with --task")
    return top[0]


def leaf_tasks(data: Mapping[str, Any], task: str) -> list[str]:
    """The tasks whose samples make up ``task`` (itself, or a group's subtasks, recursively)."""
    groups = data.get("group_subtasks", {}) or {}
    if task not in groups or not groups[task]:
        return [task]
    leaves: list[str] = []
    for sub in groups[task]:
        leaves.extend(leaf_tasks(data, sub))
    return leaves


def find_samples(results_path: Path, tasks: Sequence[str]) -> dict[str, Path]:
    """``samples_<task>_<time>.jsonl`` beside the results file: the same time stamp when there
    is one, else the newest file of that task."""
    match = _RESULTS.match(results_path.name)
    stamp = match.group("stamp") if match else None
    found: dict[str, Path] = {}
    for task in tasks:
        exact = results_path.parent / f"samples_{task}_{stamp}.jsonl" if stamp else None
        if exact is not None and exact.exists():
            found[task] = exact
            continue
        candidates = sorted(p for p in results_path.parent.glob(f"samples_{task}_*.jsonl")
                            if re.fullmatch(rf"samples_{re.escape(task)}_[0-9T:.\-]+\.jsonl", p.name))
        if candidates:
            found[task] = candidates[-1]
    return found


def task_of_samples_file(path: Path, tasks: Sequence[str]) -> str | None:
    """Which task a ``samples_<task>_<time>.jsonl`` belongs to (the longest name that fits)."""
    for task in sorted(tasks, key=len, reverse=True):
        if path.name.startswith(f"samples_{task}_"):
            return task
    return tasks[0] if len(tasks) == 1 else None


def read_samples(path: Path) -> list[dict[str, Any]]:
    """lm-eval's per-sample lines, with ``arguments`` in the shape simple_evaluate returns."""
    samples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelregUsageError(f"samples file {path} cannot be read ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
            if "doc_id" not in sample:
                raise KeyError("doc_id")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BaselineError(f"samples file {path} is corrupt at line {number} ({exc}); "
                                "re-run lm_eval with --log_samples") from None
        sample["arguments"] = _arguments(sample.get("arguments"))
        samples.append(sample)
    return samples


def _arguments(arguments: Any) -> Any:
    """The file has ``{"gen_args_0": {"arg_0": ..., "arg_1": ...}}``; simple_evaluate returns
    a list of argument tuples per request. The plugin reads the prompt's start from it."""
    if not isinstance(arguments, dict):
        return arguments

    def number(key: str) -> int:
        digits = re.sub(r"\D", "", key)
        return int(digits) if digits else 0

    requests = []
    for key in sorted(arguments, key=number):
        request = arguments[key]
        if isinstance(request, dict):
            requests.append(tuple(request[k] for k in sorted(request, key=number)))
        else:
            requests.append(request)
    return requests


def model_args_text(value: Any) -> str:
    """lm-eval's config holds model_args as the string given or as a parsed dict."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


def _limit(value: Any) -> int | float | None:
    if value is None:
        return None
    number = float(value)
    return int(number) if number >= 1 and number.is_integer() else number


def _gen_kwargs(value: Any) -> str | None:
    """The plugin's canonical ``k=v,k=v`` (sorted), None when empty."""
    if not value:
        return None
    if isinstance(value, str):
        from .settings import split_model_args

        value = split_model_args(value, "gen_kwargs")
    return ",".join(f"{k}={value[k]}" for k in sorted(value))


def spec_from_results(data: Mapping[str, Any], task: str, name: str) -> EvalSpec:
    """The ``EvalSpec`` a plugin test with the same settings would have built."""
    config = data.get("config", {}) or {}
    seeds = tuple(int(config[k]) if config.get(k) is not None else default for k, default in zip(
        ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed"), DEFAULT_SEEDS, strict=True))
    chat = data.get("chat_template")
    return EvalSpec(
        task=task,
        model=str(config.get("model") or data.get("model_source") or "hf"),
        model_args=model_args_text(config.get("model_args")),
        limit=_limit(config.get("limit")),
        num_fewshot=None,  # the effective number is in the fingerprint (lm-eval's n-shot)
        batch_size=str(config.get("batch_size", "1")),
        device=str(config.get("device") or "auto"),
        gen_kwargs=_gen_kwargs(config.get("gen_kwargs")),
        apply_chat_template=bool(chat),
        fewshot_as_multiturn=bool(data.get("fewshot_as_multiturn")),
        system_instruction=data.get("system_instruction"),
        seeds=seeds,  # type: ignore[arg-type]
        bootstrap_iters=int(config.get("bootstrap_iters") or 100_000),
        baseline_name=name,
    )


def import_results(results_path: Path, *, task: str | None = None, name: str | None = None,
                   samples_files: Sequence[Path] | None = None, with_samples: bool = True,
                   rootdir: Path | None = None) -> Imported:
    """A ``Baseline`` from an lm-eval results file and its samples files.

    ``samples_files`` None: found beside the results file. ``with_samples`` False: the
    aggregates only (the plugin then compares unpaired).
    """
    from .models import model_identity
    from .runner.lm_eval_runner import result_from_output
    from .session import baseline_from_result

    data = read_results(results_path)
    task = pick_task(data, task, results_path)
    spec = spec_from_results(data, task, name or task)
    leaves = leaf_tasks(data, task)
    notes: list[str] = []
    used: list[Path] = []
    samples: dict[str, list[dict[str, Any]]] = {}
    if with_samples:
        if samples_files:
            for path in samples_files:
                owner = task_of_samples_file(path, leaves)
                if owner is None:
                    raise ModelregUsageError(
                        f"samples file {path.name} belongs to none of {', '.join(leaves)}; "
                        "give the samples_<task>_*.jsonl files of this results file")
                samples.setdefault(owner, []).extend(read_samples(path))
                used.append(path)
        else:
            found = find_samples(results_path, leaves)
            for owner, path in found.items():
                samples[owner] = read_samples(path)
                used.append(path)
        missing = [t for t in leaves if t not in samples]
        if samples and missing:
            raise ModelregUsageError(
                f"no samples file for {', '.join(missing)} beside {results_path} (found "
                f"{', '.join(p.name for p in used)}); give them all with --samples, or none "
                "with --no-samples")
    out = {**data, "samples": samples}
    config = data.get("config", {}) or {}
    identity = model_identity(spec.model, spec.model_args)
    result = result_from_output(spec, out, device=spec.device, batch_size=spec.batch_size,
                                rootdir=rootdir or results_path.parent, model_identity=identity)
    if not result.metrics:
        raise BaselineError(f"{results_path} has no numeric metrics for {task}; nothing to import")
    _imported_provenance(result.provenance, data, results_path, config)
    baseline = baseline_from_result(result)
    if samples:
        expected = data.get("n-samples", {}).get(task, {}).get("effective")
        if expected is not None and int(expected) != len(result.samples):
            notes.append(f"the samples files hold {len(result.samples)} docs, the results file "
                         f"says {expected}")
    else:
        baseline.samples = None  # no per-sample file at all: the plugin compares unpaired
        baseline.fingerprint = _aggregate_fingerprint(result.fingerprint, data, task)
        notes.append("no per-sample outcomes (run lm_eval with --log_samples and keep the "
                     "samples_*.jsonl beside the results file): this baseline holds aggregates "
                     "only, so the plugin compares them unpaired with their standard errors, "
                     "and the doc set cannot be checked")
    if "sha256" not in identity:
        where = identity.get("source") or identity.get("endpoint") or spec.model_args
        notes.append(f"the model ({where}) is not a local folder here: the baseline names it "
                     "but holds no hash of its weights")
    return Imported(baseline, used, notes)


def _aggregate_fingerprint(fingerprint: dict[str, Any], data: Mapping[str, Any], task: str
                           ) -> dict[str, Any]:
    """Without samples the doc set is unknown: drop the fields computed from the samples, so
    a plugin run is not called incomparable merely for lack of them."""
    kept = {k: v for k, v in fingerprint.items() if k not in ("docs", "prompts", "n_docs")}
    effective = data.get("n-samples", {}).get(task, {}).get("effective")
    if effective is not None:
        kept["n_docs"] = int(effective)
    return kept


def _imported_provenance(provenance: dict[str, Any], data: Mapping[str, Any], path: Path,
                         config: Mapping[str, Any]) -> None:
    """Where the numbers came from: lm-eval's run, not this machine at import time."""
    versions = dict(provenance.get("versions", {}))
    for key, name in (("lm_eval_version", "lm_eval"), ("transformers_version", "transformers")):
        if data.get(key):
            versions[name] = str(data[key])
    provenance["versions"] = versions
    provenance["hardware"] = {"device": str(config.get("device") or "unknown")}
    provenance["git"] = {"commit": data["git_hash"]} if data.get("git_hash") else {}
    date = data.get("date")
    with contextlib.suppress(TypeError, ValueError):
        provenance["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(date)))
    provenance["imported_from"] = {
        "results_file": str(path.resolve()),
        "model_name": data.get("model_name"),
        "evaluation_seconds": data.get("total_evaluation_time_seconds"),
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
