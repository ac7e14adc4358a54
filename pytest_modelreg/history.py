"""A metric across sessions, from MLflow: history, trend plot, slow-drift check, two runs side
by side. Plain functions (``pytest-modelreg history`` / ``compare`` and the plugin call them);
mlflow and matplotlib are imported inside the functions that need them.

What the plugin logs (see tracking/): one session run per pytest session, tagged
``modelreg.session_id``, with every checked metric as ``<task>/<metric>`` (and ``_stderr``,
``_baseline``, ``_delta``, ...); one nested run per test, tagged ``modelreg.test_key``, with the
model's weights hash as param ``model_sha256`` and the worst verdict of its metrics as tag
``verdict``; the session's ``modelreg-report.json`` artifact holds each metric's own verdict.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ModelregError
from .tracking import metric_key
from .verdict import worst

SESSION_TAG = "modelreg.session_id"
TEST_KEY_TAG = "modelreg.test_key"
VERDICT_TAG_PREFIX = "modelreg.verdict."  # per-metric verdict tags, where a tracker logs them
REPORT_ARTIFACT = "modelreg-report.json"
SUFFIXES = ("_stderr", "_baseline", "_delta", "_ci_low", "_ci_high", "_p_value", "_mde")
BOOKKEEPING = ("eval_seconds", "model_load_seconds", "n_samples")
# lm-eval metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte",
                             "ter", "wer", "cer", "loss", "brier_score"})
DROP_Z = 2.0  # compare: a drop beyond 2 combined standard errors (about 97.7 % one-sided)
_PAGE = 500
_MAX_PAGES = 40


class TrackingError(ModelregError):
    """MLflow cannot be reached, or holds nothing to show."""


@dataclass(frozen=True)
class Point:
    """One session's value of one metric."""

    time: datetime  # the session run's start (UTC)
    run_id: str
    session_id: str
    value: float
    stderr: float | None
    model_sha: str | None  # the model's weights hash (sha256 of its files), when known
    verdict: str | None = None  # the metric's verdict in that session
    run_name: str = ""
    model_args: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "run_id": self.run_id,
                "session_id": self.session_id, "value": self.value, "stderr": self.stderr,
                "model_sha": self.model_sha, "verdict": self.verdict, "run_name": self.run_name,
                "model_args": self.model_args}


# -- MLflow access ---------------------------------------------------------------------------

def client(tracking_uri: str | None) -> Any:
    """An ``MlflowClient`` with bounded HTTP retries; a missing SQLite file is an error here
    (MLflow would silently create an empty database)."""
    from .tracking.mlflow_tracker import bound_http_retries

    bound_http_retries()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri and uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.exists():
            raise TrackingError(f"no MLflow database at {path} (from {uri}); point --tracking-uri "
                                "at the one the sessions logged to (mlflow_tracking_uri)")
    elif uri is None and not Path("mlflow.db").exists() and not Path("mlruns").exists():
        raise TrackingError("no MLflow tracking URI given and no mlflow.db here; pass "
                            "--tracking-uri (or set MLFLOW_TRACKING_URI)")
    import logging

    for chatty in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _guard(what: str, client_: Any, call: Any) -> Any:
    try:
        return call()
    except TrackingError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise TrackingError(
            f"MLflow at {getattr(client_, 'tracking_uri', '?')} failed while {what} "
            f"({type(exc).__name__}: {text[0][:200] if text else ''}); start the server or fix "
            "--tracking-uri") from None


def experiment_id(client_: Any, experiment: str) -> str:
    found = _guard("looking up the experiment", client_,
                   lambda: client_.get_experiment_by_name(experiment))
    if found is None:
        names = _guard("listing experiments", client_, lambda: [
            e.name for e in client_.search_experiments(max_results=50)])
        raise TrackingError(f"no experiment {experiment!r} at {client_.tracking_uri}; it has: "
                            f"{', '.join(sorted(names)) or 'none'} (--experiment)")
    return found.experiment_id


def _search(client_: Any, experiment: str, filter_string: str, limit: int | None = None
            ) -> list[Any]:
    """Runs, newest first, across pages."""
    ids = [experiment_id(client_, experiment)]
    runs: list[Any] = []
    token = None
    for _ in range(_MAX_PAGES):
        page = _guard("searching runs", client_, lambda t=token: client_.search_runs(
            ids, filter_string=filter_string, max_results=_PAGE,
            order_by=["attributes.start_time DESC"], page_token=t))
        runs.extend(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            break
    return runs


def is_session_run(run: Any) -> bool:
    tags = run.data.tags
    return SESSION_TAG in tags and TEST_KEY_TAG not in tags


def _utc(millis: int | None) -> datetime:
    return datetime.fromtimestamp((millis or 0) / 1000, tz=timezone.utc)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def report_verdicts(client_: Any, run_id: str) -> dict[str, str]:
    """Each metric's verdict in a session (``<task>/<metric>`` -> verdict), from the session's
    report artifact; {} when it cannot be read."""
    try:
        with tempfile.TemporaryDirectory(prefix="modelreg-report-") as folder:
            path = client_.download_artifacts(run_id, REPORT_ARTIFACT, folder)
            record = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:
        return {}
    found: dict[str, list[str]] = {}
    for test in record.get("tests", []):
        for row in test.get("verdicts", []):
            if row.get("task") and row.get("metric") and row.get("verdict"):
                found.setdefault(metric_key(row["task"], row["metric"]), []).append(row["verdict"])
    return {key: worst(values) or values[0] for key, values in found.items()}


def run_verdicts(client_: Any, run: Any, children: Sequence[Any] = ()) -> dict[str, str]:
    """Per-metric verdicts of a session run: its ``modelreg.verdict.<key>`` tags where present,
    else its report artifact, else the worst verdict of the tests that logged the metric."""
    tagged = {k.removeprefix(VERDICT_TAG_PREFIX): v for k, v in run.data.tags.items()
              if k.startswith(VERDICT_TAG_PREFIX)}
    if tagged:
        return tagged
    verdicts = report_verdicts(client_, run.info.run_id)
    if verdicts:
        return verdicts
    by_key: dict[str, list[str]] = {}
    for child in children:
        verdict = child.data.tags.get("verdict")
        for key in base_metrics(child.data.metrics):
            if verdict:
                by_key.setdefault(key, []).append(verdict)
    return {key: worst(values) or values[0] for key, values in by_key.items()}


def base_metrics(metrics: Mapping[str, float]) -> list[str]:
    """The checked metrics' keys (``task/metric``), without their companions and bookkeeping."""
    keys = []
    for key in metrics:
        if "/" not in key or key.rsplit("/", 1)[1] in BOOKKEEPING:
            continue
        if any(key.endswith(s) and key[: -len(s)] in metrics for s in SUFFIXES):
            continue
        keys.append(key)
    return sorted(keys)


def higher_is_better(key: str) -> bool:
    """From the metric's name (MLflow does not hold lm-eval's higher_is_better)."""
    name = key.rsplit("/", 1)[-1]
    return not any(name == low or name.startswith(f"{low}_") for low in LOWER_IS_BETTER)


# -- history ---------------------------------------------------------------------------------

def metric_history(tracking_uri: str | None, experiment: str, task: str, metric: str,
                   last: int = 20, *, verdicts: bool = True) -> list[Point]:
    """The metric in the ``last`` most recent sessions that logged it, oldest first.

    Raises ``TrackingError`` when MLflow cannot be reached or the experiment does not exist.
    """
    if last < 1:
        raise ValueError(f"last must be at least 1, got {last}")
    client_ = client(tracking_uri)
    key = metric_key(task, metric)
    runs = _search(client_, experiment, f"metrics.`{key}` >= -1e308 and tags.`{SESSION_TAG}` != ''")
    sessions = [r for r in runs if is_session_run(r)][:last]
    children: dict[str, list[Any]] = {}
    for run in runs:
        if not is_session_run(run):
            children.setdefault(run.data.tags.get(SESSION_TAG, ""), []).append(run)
    points = []
    for run in sessions:
        session_id = run.data.tags[SESSION_TAG]
        own = children.get(session_id, [])
        shas = sorted({c.data.params.get("model_sha256") for c in own
                       if c.data.params.get("model_sha256")})
        verdict = run_verdicts(client_, run, own).get(key) if verdicts else None
        points.append(Point(
            time=_utc(run.info.start_time), run_id=run.info.run_id, session_id=session_id,
            value=float(run.data.metrics[key]),
            stderr=_finite(run.data.metrics.get(f"{key}_stderr")),
            model_sha=",".join(shas) or None, verdict=verdict,
            run_name=run.info.run_name or "", model_args=run.data.params.get("model_args", "")))
    return sorted(points, key=lambda p: p.time)


def logged_metrics(tracking_uri: str | None, experiment: str, sessions: int = 10) -> list[str]:
    """The ``task/metric`` keys the recent sessions logged (for "did you mean")."""
    client_ = client(tracking_uri)
    runs = _search(client_, experiment, f"tags.`{SESSION_TAG}` != ''", limit=_PAGE)
    keys: set[str] = set()
    for run in [r for r in runs if is_session_run(r)][:sessions]:
        keys.update(base_metrics(run.data.metrics))
    return sorted(keys)


def drift(points: Sequence[Point], current: float, window: int = 10
          ) -> tuple[float, float] | None:
    """Slow drift: the median of the last ``window`` sessions in ``points`` (oldest first, the
    current session not among them: ``[p for p in points if p.run_id != current_run_id]``) and
    ``current`` minus that median, in the metric's own units and direction; None without
    history.

    A slow slide that no single session flags (each within noise of its baseline, baselines
    refreshed along the way) shows here as a growing delta against the recent median."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    values = [p.value for p in list(points)[-window:] if math.isfinite(p.value)]
    if not values or not math.isfinite(current):
        return None
    median = float(statistics.median(values))
    return median, current - median


def plot_history(points: Sequence[Point], path: Path, title: str = "") -> Path:
    """A trend PNG: the value per session with +-1 stderr bars, failing verdicts in red, the
    median of the shown sessions dashed. Drawn on an Agg canvas without pyplot, so the
    process's matplotlib backend and open figures are left alone."""
    if not points:
        raise ValueError("no points to plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise ModelregError("plotting needs matplotlib, which is not installed; "
                            "pip install 'pytest-modelreg[plot]'") from None
    from .verdict import FAILING

    times = [p.time for p in points]
    values = [p.value for p in points]
    errors = [p.stderr or 0.0 for p in points]
    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.errorbar(times, values, yerr=errors, fmt="-o", color="#1f77b4", ecolor="#9ecae1",
                  capsize=3, markersize=4, label="value (±1 stderr)")
    failing = [p for p in points if p.verdict in FAILING]
    if failing:
        axes.scatter([p.time for p in failing], [p.value for p in failing], color="#d62728",
                     marker="x", s=60, zorder=3, label="failing verdict")
    axes.axhline(statistics.median(values), color="grey", linestyle="--", linewidth=1,
                 label="median")
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_title(title or "metric history")
    axes.set_ylabel("value")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# -- two sessions side by side ---------------------------------------------------------------

@dataclass
class SessionRun:
    run_id: str
    run_name: str
    time: datetime
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, tuple[float, float | None]]  # task/metric -> (value, stderr)
    verdicts: dict[str, str]
    model_sha: str | None


@dataclass
class MetricRow:
    key: str
    a: float | None
    b: float | None
    a_stderr: float | None
    b_stderr: float | None
    a_verdict: str | None
    b_verdict: str | None
    higher_is_better: bool
    regressed: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def bound(self) -> float | None:
        """DROP_Z combined standard errors (None when a side has none)."""
        if self.a_stderr is None or self.b_stderr is None:
            return None
        return DROP_Z * math.hypot(self.a_stderr, self.b_stderr)


def load_session_run(client_: Any, run_id: str) -> SessionRun:
    try:
        run = client_.get_run(run_id)
    except Exception as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(f"no run {run_id!r} at {client_.tracking_uri}; give a session "
                                "run's id (the session summary names it: 'modelreg: MLflow run "
                                "<id> ...')") from None
        run = _guard(f"reading run {run_id}", client_, lambda: client_.get_run(run_id))
    if not is_session_run(run):
        parent = run.data.tags.get("mlflow.parentRunId")
        hint = f"; its session run is {parent}" if parent else ""
        raise TrackingError(f"run {run_id} is not a pytest-modelreg session run{hint}")
    session_id = run.data.tags[SESSION_TAG]
    children = _guard("searching the session's test runs", client_, lambda: client_.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{SESSION_TAG}` = '{session_id}'",
        max_results=_PAGE))
    children = [c for c in children if not is_session_run(c)]
    metrics = {key: (float(run.data.metrics[key]), _finite(run.data.metrics.get(f"{key}_stderr")))
               for key in base_metrics(run.data.metrics)}
    shas = sorted({c.data.params.get("model_sha256") for c in children
                   if c.data.params.get("model_sha256")})
    return SessionRun(run.info.run_id, run.info.run_name or "", _utc(run.info.start_time),
                      run.info.status, dict(run.data.params), dict(run.data.tags), metrics,
                      run_verdicts(client_, run, children), ",".join(shas) or None)


def compare_runs(tracking_uri: str | None, run_a: str, run_b: str
                 ) -> tuple[SessionRun, SessionRun, list[MetricRow]]:
    """Two session runs, metric by metric. B regressed against A on a metric when B's own
    verdict there is "regressed", or when B is worse than A by more than ``DROP_Z`` combined
    standard errors (``sqrt(se_A^2 + se_B^2)``; not applied where a side has no stderr)."""
    client_ = client(tracking_uri)
    a, b = load_session_run(client_, run_a), load_session_run(client_, run_b)
    rows = []
    for key in sorted(set(a.metrics) | set(b.metrics)):
        (va, sa), (vb, sb) = a.metrics.get(key, (None, None)), b.metrics.get(key, (None, None))
        row = MetricRow(key, va, vb, sa, sb, a.verdicts.get(key), b.verdicts.get(key),
                        higher_is_better(key))
        if row.b_verdict == "regressed":
            row.reasons.append("B's verdict: regressed")
        if row.delta is not None and row.bound is not None:
            gain = row.delta if row.higher_is_better else -row.delta
            if -gain > row.bound:
                row.reasons.append(f"worse by {abs(row.delta):.4f} > {DROP_Z:g} x combined "
                                   f"stderr {row.bound / DROP_Z:.4f}")
        row.regressed = bool(row.reasons)
        rows.append(row)
    return a, b, rows


def points_table(points: Iterable[Point]) -> list[list[str]]:
    """Rows for the history table: time, run, model, value, stderr, verdict."""
    rows = []
    for p in points:
        model = (p.model_sha or "")[:12] or _short_args(p.model_args)
        rows.append([p.time.astimezone().strftime("%Y-%m-%d %H:%M"), p.run_id[:8], model,
                     f"{p.value:.4f}", "-" if p.stderr is None else f"{p.stderr:.4f}",
                     p.verdict or "-"])
    return rows


def _short_args(model_args: str, width: int = 30) -> str:
    return model_args if len(model_args) <= width else "..." + model_args[-width + 3:]
