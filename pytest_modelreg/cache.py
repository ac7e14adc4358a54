"""The persistent result cache: never evaluate the same model on the same evaluation twice.

An entry's key is a hash of everything that decides the result: the model's identity (a hash of
its weights, config and tokenizer files, or the endpoint and model name of an API model), its
other model_args, device and batch size, the evaluation's settings and seeds, each task's config
and the content of the docs it evaluates, and the library versions. A model that cannot be
identified by content (a hub id at a moving revision; an endpoint, unless the user opts in) is
never cached, so one model's answers are never served for another (lm-eval's own request cache
is keyed by request alone: lm-eval issue 2715).

Plain code: the runner computes the task identity with lm-eval and hands it in.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .baselines import atomic_write
from .results import EvalResult, SampleOutcome
from .settings import split_model_args
from .spec import EvalSpec

CACHE_SCHEMA = 1
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_PATH_ARGS = ("pretrained", "gguf_file", "tokenizer")  # covered by the files' hash when local


def uncacheable_reason(identity: dict[str, Any], endpoints: bool = False) -> str | None:
    """Why a model's results may not be cached (None: they may)."""
    if identity.get("sha256"):
        return None
    if identity.get("endpoint"):
        return None if endpoints else (
            f"{identity['endpoint']} can serve new weights under the same URL and model name; "
            "set modelreg_cache_endpoints = true where a deployed name never changes")
    if _COMMIT.match(str(identity.get("revision", ""))):
        return None
    source = identity.get("source")
    if source:
        return (f"{source} is a hub id at revision {identity.get('revision', 'main')!r}, which "
                "can move; pin revision=<commit> or use a local folder to cache its results")
    return "the model has no identity to key results by (no local files, endpoint or revision)"


def model_key_part(spec: EvalSpec, identity: dict[str, Any]) -> dict[str, Any]:
    """The model's share of the key: its identity and every model_arg the identity leaves out."""
    args = split_model_args(spec.model_args)
    if identity.get("sha256"):
        # The files' hash stands for the paths: the same weights in another checkout still hit.
        args = {k: v for k, v in args.items() if k not in _PATH_ARGS}
    identity = {k: v for k, v in identity.items() if k not in ("model_args", "files")}
    return {"identity": identity, "args": digest(args), "device": spec.device,
            "batch_size": spec.batch_size}


def cache_key(spec: EvalSpec, model_part: dict[str, Any], tasks: dict[str, Any],
              versions: dict[str, str]) -> str:
    settings = {k: v for k, v in asdict(spec).items()
                if k not in ("task", "model_args", "device", "batch_size", "baseline_name")}
    parts = {"schema": CACHE_SCHEMA, "task": spec.task, "model": model_part,
             "settings": settings, "tasks": tasks, "versions": versions}
    return digest(parts)


def digest(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON; functions by their source, no memory addresses."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_stable).encode()).hexdigest()


def _stable(value: Any) -> str:
    """Functions (``!function`` in task YAMLs) by their source: an edit changes the key."""
    if callable(value):
        try:
            source = inspect.getsource(value)
        except (OSError, TypeError):
            source = ""
        name = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value)}"
        return f"{name}:{hashlib.sha256(source.encode()).hexdigest()}"
    return _ADDRESS.sub("", str(value))


class ResultCache:
    """One JSON file per result, written atomically: concurrent xdist workers are safe."""

    def __init__(self, folder: Path, endpoints: bool = False) -> None:
        self.folder = folder
        self.endpoints = endpoints  # API models too, keyed by endpoint and model name

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def load(self, key: str, spec: EvalSpec) -> EvalResult | None:
        """The cached result, or None when absent or unreadable (a damaged entry is a miss)."""
        path = self.path(key)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("schema") != CACHE_SCHEMA or payload.get("key") != key:
                return None
            return result_from_payload(spec, payload)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, key: str, result: EvalResult) -> Path:
        path = self.path(key)
        atomic_write(path, json.dumps({"schema": CACHE_SCHEMA, "key": key,
                                       **result_payload(result)}, default=str))
        return path


def result_payload(result: EvalResult) -> dict[str, Any]:
    return {
        "metrics": {k: _finite(v) for k, v in result.metrics.items()},
        "stderr": result.stderr, "higher_is_better": result.higher_is_better,
        "samples": [s.to_dict() for s in result.samples], "fingerprint": result.fingerprint,
        "provenance": result.provenance, "n_samples": result.n_samples,
        "seconds": result.seconds, "model_load_seconds": result.model_load_seconds,
        "raw": result.raw,
    }


def result_from_payload(spec: EvalSpec, payload: dict[str, Any]) -> EvalResult:
    provenance = dict(payload["provenance"])
    provenance["cached_from"] = {"recorded_at": provenance.get("recorded_at"),
                                 "seconds": payload["seconds"],
                                 "model_load_seconds": payload["model_load_seconds"]}
    return EvalResult(
        spec=spec, metrics={k: float(v) for k, v in payload["metrics"].items()},
        stderr=payload["stderr"], higher_is_better=payload["higher_is_better"],
        samples=[SampleOutcome.from_dict(s) for s in payload["samples"]],
        fingerprint=payload["fingerprint"], provenance=provenance,
        n_samples=int(payload["n_samples"]), raw=payload["raw"], cached=True)


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no NaN; float() reads it back
