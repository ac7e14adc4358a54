"""The baseline store: one readable JSON file per baseline name, per-sample outcomes beside it.

Layout under the baseline dir::

    piqa_local.json            aggregate metrics, stderr, settings, fingerprint, provenance
    piqa_local.samples.jsonl   one line per doc: id, content hashes, per-sample metric values

Writes are atomic (temp file in the same folder, fsync, rename) and serialised by a file lock,
so a crash mid-write leaves the old files intact and two writers never interleave. A store
remembers what it read; saving over a file another process changed since then is refused (the
new baseline is kept aside, never lost).

Schema history (older files are migrated in memory when read, never rewritten unasked):
1. the first layout;
2. adds ``samples_count``, the lines of the samples file, so a truncated one is told apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BaselineError
from .results import SampleOutcome, samples_jsonl

SCHEMA_VERSION = 2
_REQUIRED = ("schema_version", "name", "task", "metrics", "fingerprint")
CONFLICT_DIR = ".modelreg-conflicts"


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
    schema_version: int = SCHEMA_VERSION  # as read from the file (migrated in memory)

    def value(self, metric: str) -> float | None:
        entry = self.metrics.get(metric)
        return None if entry is None else entry.get("value")


def safe_name(name: str) -> str:
    """A file name for a baseline name: letters, digits, '.', '_', '-' and '@' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("._")
    return cleaned or "baseline"


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write ``text`` so that ``path`` holds either the old or the whole new content."""
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"atomic_write needs str or bytes, not {type(text).__name__}")
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 file's content in the current layout (in memory only)."""
    if data["schema_version"] == 1:
        data = {**data, "samples_count": None}  # unknown: the sha256 still guards the file
    return data


class BaselineConflict(BaselineError):
    """The baseline changed on disk after this session read it: another process updated it."""


def file_digest(path: Path) -> str | None:
    """The sha256 of a file, None when there is none (unreadable ones are told by the reader)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable: {exc.errno}"


class BaselineStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # baseline name -> sha256 of its JSON file when this store first read it (None: absent)
        self.read_digests: dict[str, str | None] = {}

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
            except (OSError, ValueError, AttributeError, RecursionError):
                name = path.stem  # a damaged file is still a baseline someone should look at
            found[str(name)] = path
        return found

    # -- reading ---------------------------------------------------------------------------
    def load(self, name: str) -> Baseline | None:
        """The baseline called ``name``, None when there is none; a damaged file raises."""
        path = self.json_path(name)
        self.read_digests.setdefault(name, file_digest(path))
        if not path.exists():
            return None
        return self.load_file(path)

    def load_file(self, path: Path) -> Baseline:
        """A baseline from its JSON file (and the samples file beside it); damage raises."""
        data = migrate(self._read_json(path))
        baseline = Baseline(
            name=data["name"], task=data["task"], metrics=data["metrics"],
            fingerprint=data["fingerprint"], n_samples=data.get("n_samples", 0),
            settings=data.get("settings", {}), provenance=data.get("provenance", {}),
            schema_version=int(data["schema_version"]),
        )
        samples_file = data.get("samples_file")
        if samples_file:
            baseline.samples = self._read_samples(path.parent / samples_file,
                                                  data.get("samples_sha256"), path,
                                                  data.get("samples_count"))
        return baseline

    def _read_json(self, path: Path) -> dict[str, Any]:
        fix = "restore it from version control or re-record it with --modelreg-update"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:  # a folder, no permission: not a corrupt file, but unreadable
            raise BaselineError(f"baseline file {path} cannot be read ({exc}); {fix}") from None
        except (ValueError, RecursionError) as exc:
            # ValueError: bad JSON, bad UTF-8, a number of over 4300 digits; RecursionError:
            # nesting deeper than the parser's stack
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
        if (bad := _bad_field(data)) is not None:
            raise BaselineError(f"baseline file {path} is corrupt (bad {bad}); {fix}")
        return data

    def _read_samples(self, path: Path, expected_sha: str | None, owner: Path,
                      expected_count: int | None = None) -> list[SampleOutcome]:
        fix = "restore both files from version control or re-record with --modelreg-update"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise BaselineError(f"baseline {owner} refers to {path.name}, which is missing; "
                                f"{fix}") from None
        except OSError as exc:
            raise BaselineError(f"samples file {path} cannot be read ({exc}); {fix}") from None
        if expected_sha and hashlib.sha256(raw).hexdigest() != expected_sha:
            previous = _previous_copy(path)  # a save killed between the two renames
            if previous.exists() and hashlib.sha256(previous.read_bytes()).hexdigest() == expected_sha:
                raw = previous.read_bytes()
            else:
                lines = raw.count(b"\n")
                how = (f"truncated: {lines} of {expected_count} lines"
                       if isinstance(expected_count, int) and lines < expected_count
                       else "truncated or edited")
                raise BaselineError(f"samples file {path} does not match {owner.name} ({how}); "
                                    f"{fix}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BaselineError(f"samples file {path} is corrupt ({exc}); {fix}") from None
        samples = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                samples.append(_sample(json.loads(line)))
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                    RecursionError) as exc:
                raise BaselineError(f"samples file {path} is corrupt at line {number} ({exc}); "
                                    f"{fix}") from None
        return samples

    # -- writing ---------------------------------------------------------------------------
    def save(self, baseline: Baseline) -> Path:
        """Write the samples file, then the JSON that vouches for it (both atomically).

        When this store read the baseline before, the file must still be as it was read;
        otherwise another process updated it meanwhile: this baseline is kept aside in
        ``.modelreg-conflicts/`` and BaselineConflict says where.
        """
        path = self.json_path(baseline.name)
        text, samples_text = self._serialise(baseline)
        with self._lock():
            if baseline.name in self.read_digests:
                self._check_unchanged(baseline, path)
            self._write_pair(path, text, samples_text)
            self.read_digests[baseline.name] = hashlib.sha256(text.encode()).hexdigest()
        return path

    def _check_unchanged(self, baseline: Baseline, path: Path) -> None:
        read, now = self.read_digests[baseline.name], file_digest(path)
        if now == read:
            return
        try:  # the same result written by another process (two xdist workers) is no conflict
            if now is not None and same_result(self.load_file(path), baseline):
                return
        except BaselineError:
            pass
        aside = BaselineStore(self.folder / CONFLICT_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}"
                                                           f"-{os.getpid()}")
        aside._write_pair(aside.json_path(baseline.name), *aside._serialise(baseline))
        what = "created" if read is None else "deleted" if now is None else "changed"
        raise BaselineConflict(
            f"baseline {path} was {what} by another process after this session read it; this "
            f"session's result is kept in {aside.json_path(baseline.name)} (copy it over the "
            "baseline if it should win, or re-run with --modelreg-update)")

    def _write_pair(self, path: Path, text: str, samples_text: str | None) -> None:
        """Samples first, then the JSON. The samples file the old JSON vouches for is kept as a
        ``.prev`` copy meanwhile (bytes, as they are), so a kill between the two renames still
        leaves the old pair readable: the reader falls back to it."""
        if samples_text is None:
            atomic_write(path, text)
            return
        samples = path.parent / json.loads(text)["samples_file"]
        previous = _previous_copy(samples)
        current = _bytes_or_none(samples)
        if current is not None and hashlib.sha256(current).hexdigest() == _vouched_sha(path):
            atomic_write(previous, current)  # else: keep a .prev from an earlier killed write
        atomic_write(samples, samples_text)
        atomic_write(path, text)
        previous.unlink(missing_ok=True)

    def _serialise(self, baseline: Baseline) -> tuple[str, str | None]:
        """The JSON file's text and the samples file's (None when there are no samples)."""
        samples_text = None if baseline.samples is None else samples_jsonl(baseline.samples)
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
        if baseline.samples is not None and samples_text is not None:
            data["samples_file"] = self.samples_path(baseline.name).name
            data["samples_sha256"] = hashlib.sha256(samples_text.encode()).hexdigest()
            data["samples_count"] = len(baseline.samples)
        return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", samples_text


class PendingBaselines:
    """Baselines approved during a session, waiting on disk for its end: one folder per
    process (xdist worker), so the controller can write those of a crashed worker too, and
    none at all after Ctrl-C. Each keeps the digest its session read, for the conflict check."""

    JOURNAL = ".read-digests.json"  # a leading dot: no baseline's file name can be this

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _digests(self) -> dict[str, str | None]:
        journal = self.folder / self.JOURNAL
        return json.loads(journal.read_text()) if journal.exists() else {}

    def add(self, baseline: Baseline, read_digest: str | None) -> None:
        BaselineStore(self.folder).save(baseline)
        digests = self._digests()
        digests[baseline.name] = read_digest
        atomic_write(self.folder / self.JOURNAL, json.dumps(digests, sort_keys=True))

    def discard(self, name: str) -> None:
        """A baseline approved earlier in the session that must not be written after all."""
        digests = self._digests()
        if digests.pop(name, "absent") != "absent":
            atomic_write(self.folder / self.JOURNAL, json.dumps(digests, sort_keys=True))

    @classmethod
    def names_under(cls, root: Path) -> list[str]:
        """The baselines waiting under ``root``, of every process."""
        return sorted({name for journal in root.glob(f"*/{cls.JOURNAL}")
                       for name in cls(journal.parent)._digests()})

    @classmethod
    def commit_all(cls, root: Path, store: BaselineStore
                   ) -> tuple[list[str], list[str], bool]:
        """Write every pending baseline under ``root`` into ``store``.

        Returns the names written, a line per baseline not written, and whether everything
        pending is either written or kept aside (only then may ``root`` be removed)."""
        written: list[str] = []
        refusals: list[str] = []
        safe = True
        for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            try:
                digests = cls(folder)._digests()
            except (OSError, ValueError) as exc:
                refusals.append(f"pending baselines in {folder} could not be read ({exc}); "
                                "they are left there")
                safe = False
                continue
            pending = BaselineStore(folder)
            for name in sorted(digests):
                if name in written:  # two xdist workers of this session: the last one wins
                    store.read_digests[name] = file_digest(store.json_path(name))
                else:
                    store.read_digests[name] = digests[name]
                try:
                    store.save(pending.load_file(pending.json_path(name)))
                    written.append(name)
                except BaselineConflict as exc:  # kept aside in .modelreg-conflicts
                    refusals.append(str(exc))
                except Exception as exc:  # a disk or lock error: the result must not be lost
                    refusals.append(f"baseline {name} could not be written "
                                    f"({type(exc).__name__}: {exc}); the result is kept in "
                                    f"{pending.json_path(name)}")
                    safe = False
        return written, refusals, safe


def _bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _vouched_sha(path: Path) -> str | None:
    """The samples sha256 the JSON file at ``path`` vouches for (None: none, or unreadable)."""
    try:
        found = json.loads(path.read_bytes()).get("samples_sha256")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return found if isinstance(found, str) else None


def same_result(a: Baseline, b: Baseline) -> bool:
    """Two recordings of one evaluation: equal metrics, settings and per-doc outcomes."""
    def content(baseline: Baseline) -> str:  # as the file holds it: tuples are lists there
        samples = None if baseline.samples is None else [s.to_dict() for s in baseline.samples]
        return json.dumps([baseline.metrics, baseline.fingerprint, samples], sort_keys=True,
                          default=str)

    return content(a) == content(b)


# Fields the session uses as these types (a wrong one would crash it later, far from the file).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "task": str, "metrics": dict, "fingerprint": dict, "settings": dict,
    "provenance": dict, "n_samples": int, "samples_file": str, "samples_sha256": str,
    "samples_count": int,
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad_field(data: dict[str, Any]) -> str | None:
    """The first field of a baseline's JSON with a wrong type or value (None: all good)."""
    for key, kind in _FIELD_TYPES.items():
        value = data.get(key)
        may_be_none = key not in data or key.startswith("samples_")  # schema 1: no count
        if not (value is None and may_be_none) and (not isinstance(value, kind)
                                                     or isinstance(value, bool)):
            return key
    for key in ("n_samples", "samples_count"):
        if (data.get(key) or 0) < 0:
            return key
    samples_file = data.get("samples_file")
    if samples_file is not None and (Path(samples_file).name != samples_file
                                     or samples_file in ("", ".", "..") or "\x00" in samples_file):
        return "samples_file"  # a plain file name beside the baseline, nothing elsewhere
    for name, entry in data["metrics"].items():
        if not isinstance(entry, dict) or not _is_number(entry.get("value")) \
                or not (entry.get("stderr") is None or _is_number(entry["stderr"])) \
                or not isinstance(entry.get("higher_is_better", True), bool):
            return f"metrics ({name!r})"
    return None


def _sample(data: Any) -> SampleOutcome:
    """One line of a samples file, with the types the comparison relies on."""
    sample = SampleOutcome.from_dict(data)
    if not isinstance(sample.doc_id, (int, str)) or not all(
            isinstance(h, str) for h in (sample.doc_hash, sample.prompt_hash, sample.target_hash)):
        raise ValueError("bad doc_id or hashes")
    return sample


def _previous_copy(samples: Path) -> Path:
    return samples.with_name(f".{samples.name}.prev")
