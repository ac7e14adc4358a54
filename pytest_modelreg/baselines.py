"""The baseline store: one readable JSON file per baseline name, per-sample outcomes beside it.

Layout under the baseline dir::

    piqa_local.json            aggregate metrics, stderr, settings, fingerprint, provenance
    piqa_local.samples.jsonl   one line per doc: id, content hashes, per-sample metric values

Writes are atomic (temp file in the same folder, fsync, rename) and serialised by a file lock,
so a crash mid-write leaves the old files intact and two writers never interleave.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BaselineError
from .results import SampleOutcome, samples_jsonl

SCHEMA_VERSION = 1
_REQUIRED = ("schema_version", "name", "task", "metrics", "fingerprint")


@dataclass
class Baseline:
    name: str
    task: str
    metrics: dict[str, dict[str, Any]]  # metric -> {"value", "stderr", "higher_is_better"}
    fingerprint: dict[str, Any]
    n_samples: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    samples: list[SampleOutcome] | None = None
    schema_version: int = SCHEMA_VERSION

    def value(self, metric: str) -> float | None:
        entry = self.metrics.get(metric)
        return None if entry is None else entry.get("value")


def safe_name(name: str) -> str:
    """A file name for a baseline name: letters, digits, '.', '_', '-' and '@' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("._")
    return cleaned or "baseline"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` so that ``path`` holds either the old or the whole new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BaselineStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def json_path(self, name: str) -> Path:
        return self.folder / f"{safe_name(name)}.json"

    def samples_path(self, name: str) -> Path:
        return self.folder / f"{safe_name(name)}.samples.jsonl"

    def _lock(self):  # noqa: ANN202 - filelock's type
        from filelock import FileLock

        self.folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.folder / ".modelreg.lock"), timeout=120)

    def names(self) -> dict[str, Path]:
        """Every baseline in the folder: its name (from the file, else the file's stem) -> file."""
        found: dict[str, Path] = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                name = json.loads(path.read_text(encoding="utf-8")).get("name") or path.stem
            except (OSError, ValueError, AttributeError):
                name = path.stem  # a damaged file is still a baseline someone should look at
            found[str(name)] = path
        return found

    # -- reading ---------------------------------------------------------------------------
    def load(self, name: str) -> Baseline | None:
        """The baseline called ``name``, None when there is none; a damaged file raises."""
        path = self.json_path(name)
        if not path.exists():
            return None
        return self.load_file(path)

    def load_file(self, path: Path) -> Baseline:
        """A baseline from its JSON file (and the samples file beside it); damage raises."""
        data = self._read_json(path)
        baseline = Baseline(
            name=data["name"], task=data["task"], metrics=data["metrics"],
            fingerprint=data["fingerprint"], n_samples=int(data.get("n_samples", 0)),
            settings=data.get("settings", {}), provenance=data.get("provenance", {}),
            schema_version=int(data["schema_version"]),
        )
        samples_file = data.get("samples_file")
        if samples_file:
            baseline.samples = self._read_samples(path.parent / samples_file,
                                                  data.get("samples_sha256"), path)
        return baseline

    def _read_json(self, path: Path) -> dict[str, Any]:
        fix = "restore it from version control or re-record it with --modelreg-update"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BaselineError(f"baseline file {path} is corrupt ({exc}); {fix}") from None
        if not isinstance(data, dict) or any(key not in data for key in _REQUIRED):
            missing = [k for k in _REQUIRED if not isinstance(data, dict) or k not in data]
            raise BaselineError(
                f"baseline file {path} is corrupt (missing {', '.join(missing)}); {fix}")
        version = data["schema_version"]
        if not isinstance(version, int) or version < 1:
            raise BaselineError(f"baseline file {path} has an invalid schema_version {version!r}; {fix}")
        if version > SCHEMA_VERSION:
            raise BaselineError(
                f"baseline file {path} was written with schema version {version}, newer than "
                f"this pytest-modelreg reads ({SCHEMA_VERSION}); upgrade pytest-modelreg")
        if not isinstance(data["metrics"], dict) or not all(
                isinstance(v, dict) and isinstance(v.get("value"), (int, float))
                for v in data["metrics"].values()):
            raise BaselineError(f"baseline file {path} is corrupt (bad metrics); {fix}")
        return data

    def _read_samples(self, path: Path, expected_sha: str | None, owner: Path) -> list[SampleOutcome]:
        fix = "restore both files from version control or re-record with --modelreg-update"
        if not path.exists():
            raise BaselineError(f"baseline {owner} refers to {path.name}, which is missing; {fix}")
        raw = path.read_bytes()
        if expected_sha and hashlib.sha256(raw).hexdigest() != expected_sha:
            raise BaselineError(f"samples file {path} does not match {owner.name} (truncated or "
                                f"edited); {fix}")
        samples = []
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                samples.append(SampleOutcome.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BaselineError(f"samples file {path} is corrupt at line {number} ({exc}); "
                                    f"{fix}") from None
        return samples

    # -- writing ---------------------------------------------------------------------------
    def save(self, baseline: Baseline) -> Path:
        """Write the samples file, then the JSON that vouches for it (both atomically)."""
        path = self.json_path(baseline.name)
        samples_text = samples_jsonl(baseline.samples or [])
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": baseline.name,
            "task": baseline.task,
            "n_samples": baseline.n_samples,
            "metrics": baseline.metrics,
            "fingerprint": baseline.fingerprint,
            "settings": baseline.settings,
            "provenance": baseline.provenance,
        }
        if baseline.samples is not None:
            data["samples_file"] = self.samples_path(baseline.name).name
            data["samples_sha256"] = hashlib.sha256(samples_text.encode()).hexdigest()
        with self._lock():
            if baseline.samples is not None:
                atomic_write(self.samples_path(baseline.name), samples_text)
            atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return path
