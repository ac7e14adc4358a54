"""Turn test reports (local, or sent by xdist workers) into verdict rows and test records.

Plain code: the plugin hands in each report's fields, so this is tested without pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .properties import EVALUATION_PROPERTY, FLAT_TEST_PROPERTY, TEST_PROPERTY, VERDICT_PROPERTY

if TYPE_CHECKING:  # the tracking records load with the first modelreg test
    from .tracking import TestRecord


class ReportCollector:
    def __init__(self, on_test_done: Callable[[TestRecord], None]) -> None:
        self.on_test_done = on_test_done
        self.rows: list[dict[str, Any]] = []
        self.pending: dict[str, TestRecord] = {}
        self.first_evaluation: dict[str, Any] | None = None
        self.evaluations: list[dict[str, Any]] = []  # each distinct evaluation once

    def add(self, nodeid: str, when: str, outcome: str, duration: float, message: str,
            properties: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        """Take one report; returns the evaluations it announces for the first time.

        ``when == "???"`` is xdist's report for a test whose worker died under it: it carries no
        properties, so it is taken for a modelreg test whose setup report came earlier.
        """
        ours = any(name in (TEST_PROPERTY, FLAT_TEST_PROPERTY) for name, _ in properties)
        if not ours and not (when == "???" and nodeid in self.pending):
            return []
        from .tracking import TestRecord
        record = self.pending.setdefault(nodeid, TestRecord(nodeid))
        record.duration += duration
        fresh: list[dict[str, Any]] = []
        if outcome == "failed" and not record.failed:
            record.outcome = "failed" if when in ("call", "???") else "error"
            record.message = message
        elif outcome == "skipped" and record.outcome == "passed":
            record.outcome, record.message = "skipped", message
        if when in ("call", "???"):  # "???": xdist's report for a crashed worker
            for name, value in properties:
                if name == VERDICT_PROPERTY:
                    record.verdicts.append(value)
                    self.rows.append({"test": nodeid, **value})
                elif name == EVALUATION_PROPERTY:
                    record.evaluations.append(value)
                    self.first_evaluation = self.first_evaluation or value
                    if value["fresh"]:
                        fresh.append(value)
                        self.evaluations.append({**value, "nodeid": nodeid})
        if when in ("teardown", "???"):
            self.finish(nodeid)
        return fresh

    def finish(self, nodeid: str) -> None:
        record = self.pending.pop(nodeid, None)
        if record is not None:
            self.on_test_done(record)

    def flush(self) -> None:
        """Tests whose teardown never came (an interrupted or crashed session). Every one is
        handed on even when one of them fails; the first failure is raised at the end."""
        failure: Exception | None = None
        for nodeid in list(self.pending):
            try:
                self.finish(nodeid)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
