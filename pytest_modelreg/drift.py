"""The slow-drift check: each checked metric against the median of the recent sessions.

A model can slide a little in every session, each step within noise of a baseline that is
refreshed along the way, and no single comparison fails. The median of the last N sessions in
the tracking server does not move with it: a current value worse than that median by more than
two of its standard errors is reported, with a trend plot of the metric.

Plain code: the plugin hands in the history lookup (MLflow, through history.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DRIFT_SE = 2.0  # how many standard errors of the current value count as drift
MIN_SESSIONS = 2  # a median of one session is just that session


@dataclass(frozen=True)
class Drift:
    task: str
    metric: str
    current: float
    median: float
    sessions: int
    drifted: bool
    bound: float  # the allowed distance from the median

    def line(self) -> str:
        worse = "below" if self.current < self.median else "above"
        return (f"{self.task}/{self.metric} = {self.current:.4f} is {abs(self.current - self.median):.4f} "
                f"{worse} the median {self.median:.4f} of the last {self.sessions} sessions "
                f"(more than {DRIFT_SE:g} SE = {self.bound:.4f})")


def checked_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """One row per (task, metric) with a finite current value (the first test that checked it)."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        value = row.get("current")
        if isinstance(value, (int, float)) and math.isfinite(value):
            found.setdefault((row["task"], row["metric"]), row)
    return found


def check_drift(rows: Iterable[Mapping[str, Any]], history: Callable[[str, str], list[Any]],
                window: int, plot_dir: Path | None = None,
                higher_is_better: Callable[[str], bool] = lambda metric: True,
                ) -> tuple[list[Drift], dict[str, str]]:
    """(the drift of each metric with enough history, trend plots by artifact name)."""
    from .history import drift as median_drift
    from .history import plot_history

    results: list[Drift] = []
    plots: dict[str, str] = {}
    for (task, metric), row in checked_metrics(rows).items():
        points = history(task, metric)[-window:]
        current = float(row["current"])
        found = median_drift(points, current, window) if len(points) >= MIN_SESSIONS else None
        if found is not None:
            median, delta = found
            stderr = row.get("stderr") or 0.0
            bound = DRIFT_SE * stderr
            worse = -delta if higher_is_better(metric) else delta
            results.append(Drift(task, metric, current, median, len(points), worse > bound and
                                 stderr > 0, bound))
        if plot_dir is not None and points:
            now = replace(points[-1], time=datetime.now(timezone.utc), value=current,
                          stderr=row.get("stderr"), verdict=row.get("verdict"), run_id="current")
            name = f"trend--{task}--{metric}.png".replace("/", "_").replace(",", "_")
            plots[name] = str(plot_history([*points, now], plot_dir / name,
                                           f"{task}/{metric}: last {len(points)} sessions and now"))
    return results, plots
