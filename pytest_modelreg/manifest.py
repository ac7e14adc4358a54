"""The last session's manifest: what each test evaluated, where its result is cached, and which
baselines the session used. ``pytest-modelreg baselines accept`` records baselines from it
without running the models again; ``baselines list --unused`` reads the used names from it.

Plain code: the controller hands in the evaluation summaries it collected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .baselines import atomic_write

MANIFEST_NAME = "last-session.json"
MANIFEST_SCHEMA = 1


def manifest_path(cache_dir: Path) -> Path:
    return cache_dir / MANIFEST_NAME


def write_manifest(cache_dir: Path, *, baseline_dir: Path, full_session: bool,
                   exitstatus: int, evaluations: Iterable[Mapping[str, Any]]) -> Path:
    """One entry per distinct evaluation (first test that asked for it)."""
    entries: dict[str, dict[str, Any]] = {}
    for value in evaluations:
        spec = value.get("spec") or {}
        key = json.dumps(spec, sort_keys=True, default=str)
        entries.setdefault(key, {"nodeid": value.get("nodeid"), "task": value["task"],
                                 "baseline": value["baseline"], "spec": spec,
                                 "cache_key": value.get("cache_key")})
    finished = time.time()
    used = sorted({e["baseline"] for e in entries.values()})
    previous = read_manifest(cache_dir) or {}
    # A partial session (-k, paths) must not hide what the last full one used.
    last_full = ({"finished_at": finished, "baseline_dir": str(baseline_dir),
                  "used_baselines": used} if full_session else previous.get("last_full"))
    payload = {"schema": MANIFEST_SCHEMA, "finished_at": finished, "exitstatus": exitstatus,
               "baseline_dir": str(baseline_dir), "full_session": full_session,
               "used_baselines": used, "last_full": last_full,
               "evaluations": list(entries.values())}
    path = manifest_path(cache_dir)
    atomic_write(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
    return path


def read_manifest(cache_dir: Path) -> dict[str, Any] | None:
    """The last session's manifest, or None when no session wrote one here."""
    try:
        payload = json.loads(manifest_path(cache_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if payload.get("schema") == MANIFEST_SCHEMA else None
