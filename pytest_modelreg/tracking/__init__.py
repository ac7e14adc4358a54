"""Session tracking: what a session records, and how it reaches a tracker (MLflow) or a spool.

Only ``mlflow_tracker`` imports mlflow, and only the controller process ever creates one.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..baselines import atomic_write
from ..redact import redact_url, scrub

FAILED_OUTCOMES = frozenset({"failed", "error"})
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
PARAM_LIMIT = 6000  # MLflow's longest param value; longer values go to an artifact
KEY_LIMIT = 250  # MLflow's longest param, tag or metric key
# The longest the session end waits for the tracker. With the HTTP defaults of
# mlflow_tracker (10 s per request, one retry) a server that never answers costs ~20 s.
WAIT_BUDGET = 30.0
# W&B bounds its own start (30 s) and final upload (120 s): the session waits for those.
WANDB_WAIT_BUDGET = 150.0


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


_STATUS = re.compile(r"error code (\d{3})\b|too many (\d{3}) error|\b(\d{3}) (?:Client|Server) Error")
_ERROR_CODES = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
_UNKNOWN_HOST = re.compile(r"name or service not known|nodename nor servname|"
                           r"name resolution", re.IGNORECASE)
_REFUSED = re.compile(r"connection refused|failed to establish a new connection",
                      re.IGNORECASE)
_TIMED_OUT = re.compile(r"timed? ?out", re.IGNORECASE)
FIX_CREDENTIALS = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                   "(or MLFLOW_TRACKING_TOKEN)")


def http_status(exc: BaseException) -> int | None:
    """The HTTP status a tracking server answered with, when the error carries one."""
    code = _ERROR_CODES.get(str(getattr(exc, "error_code", "")))
    if code is not None:
        return code
    found = _STATUS.search(str(exc))
    return int(next(g for g in found.groups() if g)) if found else None


def describe_failure(exc: BaseException, backend: str, uri: str | None,
                     experiment: str) -> tuple[str, str]:
    """One line saying what went wrong with the tracking server, and the fix: 401, 403, 5xx,
    refused and timed-out connections each get their own; anything else its first line."""
    where = redact_url(uri or "the default tracking URI")
    status = http_status(exc)
    text = str(exc).strip()
    if status == 401:
        return (f"{where} answered 401 Unauthorized: credentials missing or rejected",
                FIX_CREDENTIALS)
    if status == 403:
        kind = "project" if backend == "wandb" else "experiment"
        return (f"{where} answered 403 Forbidden: no permission on {kind} '{experiment}'",
                f"ask for access to {kind} '{experiment}' or pick another one "
                "with --mlflow-experiment")
    if status is not None and 500 <= status < 600:
        return (f"{where} answered {status}: a server error",
                "check the tracking server's log; spooled sessions replay with: "
                "pytest-modelreg sync")
    if _UNKNOWN_HOST.search(text):
        return (f"ConnectionError: the host of {where} is unknown",
                "fix --mlflow-tracking-uri")
    if _REFUSED.search(text):
        return (f"ConnectionError: Connection refused by {where}",
                "start the server, fix --mlflow-tracking-uri")
    if _TIMED_OUT.search(text):
        seconds = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?")
        return (f"{where} did not answer within {seconds} s (MLFLOW_HTTP_REQUEST_TIMEOUT)",
                "check the server, or raise MLFLOW_HTTP_REQUEST_TIMEOUT")
    first = text.splitlines()[0][:300] if text else ""
    fix = ("log in to W&B or set WANDB_MODE=offline" if backend == "wandb"
           else "start the server, fix --mlflow-tracking-uri")
    return f"{type(exc).__name__}: {first}", fix


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

    The tracker works in one background daemon thread (calls keep their order), so logging a
    test overlaps with evaluating the next one. The session end waits for what is left at most
    ``wait_budget`` seconds: a server that stops answering cannot hold the session (or the
    interpreter's exit: the thread is a daemon) longer than that.
    """

    def __init__(self, session: SessionRecord, tracker_factory: Callable[[], Tracker] | None,
                 spool_dir: Path, warn: Callable[[str], None], *,
                 secrets: Sequence[str] = (), wait_budget: float = WAIT_BUDGET) -> None:
        self.session = session
        self.factory = tracker_factory
        self.tracker: Tracker | None = None
        self.spool_dir = spool_dir
        self.warn = warn
        self.secrets = tuple(secrets)
        self.wait_budget = wait_budget
        self.started = False
        self.failure: str | None = None
        self.spool_path: Path | None = None
        self.busy_seconds = 0.0  # time the tracker worked, in the background
        self.wait_seconds = 0.0  # time the session waited for it: what tracking cost the user
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending = 0  # submitted calls not yet done, under _done
        self._done = threading.Condition()
        self._warnings: list[str] = []  # raised in the worker, shown by the main thread

    def _submit(self, action: str, *args: Any) -> None:
        if self.factory is None and self.tracker is None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="modelreg-tracking",
                                            daemon=True)
            self._thread.start()
        with self._done:
            self._pending += 1
        self._queue.put((action, args))

    def _work(self) -> None:
        while True:
            action, args = self._queue.get()
            try:
                self._call(action, *args)
            finally:
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()

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
            reason, _fix = describe_failure(exc, self.session.backend,
                                            self.session.tracking_uri, self.session.experiment)
            self._fail(reason)
        finally:
            self.busy_seconds += time.perf_counter() - start

    def _fail(self, reason: str) -> None:
        if self.failure is not None:
            return
        self.failure = scrub(reason, self.secrets)
        self._warnings.append(
            f"{'W&B' if self.session.backend == 'wandb' else 'MLflow'} tracking failed "
            f"({self.failure}); the rest of this session is "
            f"spooled to {self.spool_file} (replay with: pytest-modelreg sync)")

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
        """Let the worker finish what was submitted, within what is left of the budget."""
        if self._thread is None:
            return
        start = time.perf_counter()
        left = max(self.wait_budget - self.wait_seconds, 0.0)
        with self._done:
            finished = self._done.wait_for(lambda: self._pending == 0, timeout=left)
        if not finished:
            self._fail(f"no answer within the {self.wait_budget:g} s the session waits for "
                       "tracking at its end")
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
                    name: _copy_into(Path(path), folder / "artifacts", self.secrets)
                    for name, path in evaluation.get("artifacts", {}).items()}
        record.artifacts = {name: _copy_into(Path(path), folder / "artifacts", self.secrets)
                            for name, path in record.artifacts.items()}
        if record.tracking_uri:  # sync logs in from MLFLOW_TRACKING_USERNAME/PASSWORD instead
            record.tracking_uri = redact_url(record.tracking_uri, "")
        atomic_write(self.spool_file, scrub(record.to_json(), self.secrets))  # pairs too
        self.spool_path = self.spool_file
        return self.spool_file


def _copy_into(source: Path, folder: Path, secrets: Sequence[str] = ()) -> str:
    if not source.exists():
        return str(source)
    target = folder / source.parent.name / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
        scrub_file(target, secrets)
    return str(target)


def scrub_file(path: Path, secrets: Sequence[str]) -> bool:
    """Mask known secret values in a text file in place; True when one was found."""
    if not secrets:
        return False
    data = path.read_bytes()
    if not any(secret.encode() in data for secret in secrets):
        return False
    atomic_write(path, scrub(data.decode("utf-8", errors="replace"), secrets, pairs=False))
    return True
