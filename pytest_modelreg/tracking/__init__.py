"""Session tracking: what a session records, and how it reaches a tracker (MLflow) or a spool.

Only ``mlflow_tracker`` imports mlflow, and only the controller process ever creates one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..baselines import atomic_write

FAILED_OUTCOMES = frozenset({"failed", "error"})
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
PARAM_LIMIT = 6000  # MLflow's longest param value; longer values go to an artifact


@dataclass
class TestRecord:
    """One modelreg test as the controller saw it on the test reports."""

    __test__ = False  # not a pytest test class, despite its name

    nodeid: str
    outcome: str = "passed"  # passed | failed | error | skipped
    duration: float = 0.0
    message: str = ""
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    @property
    def verdict(self) -> str:
        """The worst verdict of the test's metrics (or its outcome when none was reached)."""
        from ..verdict import worst

        return worst([v["verdict"] for v in self.verdicts]) or self.outcome


@dataclass
class SessionRecord:
    session_id: str
    started_at: float
    run_name: str = ""
    status: str = "RUNNING"  # FINISHED | FAILED | KILLED when the session ends
    ended_at: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tests: list[TestRecord] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # name in the run -> local file
    # Where the session was meant to go, so a spooled one can be replayed there.
    tracking_uri: str | None = None
    experiment: str = "pytest-modelreg"
    parent_run_id: str | None = None
    backend: str = "mlflow"  # or "wandb": where sync replays it

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        data = json.loads(text)
        data["tests"] = [TestRecord(**t) for t in data.get("tests", [])]
        return cls(**data)


def metric_key(*parts: str) -> str:
    """``<task>/<metric>`` with characters MLflow rejects replaced."""
    return _METRIC_KEY.sub("_", "/".join(parts))


def metrics_of(test: TestRecord) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for row in test.verdicts:
        key = metric_key(row["task"], row["metric"])
        if row.get("current") is not None:
            metrics[key] = row["current"]
        for suffix in ("stderr", "baseline", "delta", "ci_low", "ci_high", "p_value", "mde"):
            value = row.get(suffix)
            if value is not None:
                metrics[f"{key}_{suffix}"] = value
    for evaluation in test.evaluations:
        task = evaluation["task"]
        metrics[metric_key(task, "eval_seconds")] = evaluation["seconds"]
        metrics[metric_key(task, "model_load_seconds")] = evaluation["model_load_seconds"]
        metrics[metric_key(task, "n_samples")] = float(evaluation["n_samples"])
    return metrics


def params_of(test: TestRecord) -> dict[str, str]:
    params: dict[str, str] = {}
    for evaluation in test.evaluations:
        prefix = evaluation["task"]
        for key, value in sorted(evaluation.get("settings", {}).items()):
            params[f"{prefix}.{key}"] = str(value)
        params["model"] = evaluation["model"]
        params["model_args"] = evaluation["model_args"]
        if evaluation.get("model_sha256"):
            params["model_sha256"] = evaluation["model_sha256"]
    return params


def flipped_files(test: TestRecord) -> dict[str, str]:
    """A regression's docs that got worse, all of them, as JSON lines per task and metric."""
    files: dict[str, str] = {}
    for row in test.verdicts:
        if row.get("flipped"):
            name = metric_key(row["task"], row["metric"]).replace("/", "--") + ".jsonl"
            files[name] = "".join(json.dumps(w, sort_keys=True, default=str) + "\n"
                                  for w in row["flipped"])
    return files


class Tracker(Protocol):
    """Where a session goes. ``resume`` makes every call idempotent (used by sync)."""

    run_id: str | None

    def start(self, session: SessionRecord) -> None: ...

    def log_test(self, session: SessionRecord, test: TestRecord) -> None: ...

    def finish(self, session: SessionRecord) -> None: ...

    def run_url(self) -> str | None: ...

    def runs_table_url(self) -> str | None: ...


class SessionTracker:
    """Feeds a tracker as the session goes; on its first failure warns once and spools the
    whole session to disk instead, for ``pytest-modelreg sync`` to replay later.

    The tracker works in one background thread (calls keep their order), so logging a test
    overlaps with evaluating the next one; the session waits only for what is left at its end.
    """

    def __init__(self, session: SessionRecord, tracker_factory: Callable[[], Tracker] | None,
                 spool_dir: Path, warn: Callable[[str], None]) -> None:
        self.session = session
        self.factory = tracker_factory
        self.tracker: Tracker | None = None
        self.spool_dir = spool_dir
        self.warn = warn
        self.started = False
        self.failure: str | None = None
        self.spool_path: Path | None = None
        self.busy_seconds = 0.0  # time the tracker worked, in the background
        self.wait_seconds = 0.0  # time the session waited for it: what tracking cost the user
        self._executor: ThreadPoolExecutor | None = None
        self._warnings: list[str] = []  # raised in the worker, shown by the main thread

    def _submit(self, action: str, *args: Any) -> None:
        if self.factory is None and self.tracker is None:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelreg-tracking")
        self._executor.submit(self._call, action, *args)

    def _call(self, action: str, *args: Any) -> None:
        if self.failure is not None:
            return
        start = time.perf_counter()
        try:
            # MLflow's own deprecation warnings are not the user's to read in their test report.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.tracker is None:
                    assert self.factory is not None
                    self.tracker = self.factory()
                getattr(self.tracker, action)(self.session, *args)
        except Exception as exc:  # the tracker never decides a test's outcome
            text = str(exc).strip()
            self.failure = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
            self._warnings.append(
                f"{'W&B' if self.session.backend == 'wandb' else 'MLflow'} tracking failed "
                f"({self.failure}); the rest of this session is "
                f"spooled to {self.spool_file} (replay with: pytest-modelreg sync)")
        finally:
            self.busy_seconds += time.perf_counter() - start

    def _show_warnings(self) -> None:
        while self._warnings:
            self.warn(self._warnings.pop(0))

    def ensure_started(self) -> None:
        if not self.started:
            self.started = True
            self._submit("start")

    def log_test(self, test: TestRecord) -> None:
        self.session.tests.append(test)
        self.ensure_started()
        self._submit("log_test", test)
        self._show_warnings()
        if self.failure is not None:
            self.write_spool()

    def finish(self, status: str) -> None:
        self.session.status = status
        self.session.ended_at = time.time()
        self.ensure_started()
        self._submit("finish")
        self.wait()
        self._show_warnings()
        if self.failure is not None:
            self.write_spool()

    def wait(self) -> None:
        """Let the worker finish what was submitted."""
        if self._executor is not None:
            start = time.perf_counter()
            self._executor.shutdown(wait=True)
            self._executor = None
            self.wait_seconds += time.perf_counter() - start

    @property
    def spool_file(self) -> Path:
        return self.spool_dir / self.session.session_id / "session.json"

    def write_spool(self) -> Path:
        """The session and copies of its artifact files, so a later sync has all it needs."""
        folder = self.spool_file.parent
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        record = SessionRecord.from_json(self.session.to_json())
        for test in record.tests:
            for evaluation in test.evaluations:
                evaluation["artifacts"] = {
                    name: _copy_into(Path(path), folder / "artifacts")
                    for name, path in evaluation.get("artifacts", {}).items()}
        record.artifacts = {name: _copy_into(Path(path), folder / "artifacts")
                            for name, path in record.artifacts.items()}
        atomic_write(self.spool_file, record.to_json())
        self.spool_path = self.spool_file
        return self.spool_file


def _copy_into(source: Path, folder: Path) -> str:
    if not source.exists():
        return str(source)
    target = folder / source.parent.name / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return str(target)
