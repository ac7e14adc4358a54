"""The MLflow tracker: the only module that imports mlflow (and only in the controller).

It talks to MLflow through ``MlflowClient`` (no fluent "active run" state, so nothing in the
user's process is changed and MLflow's atexit hook cannot mark our runs FINISHED), batches
params, metrics and tags with ``log_batch``, and bounds MLflow's HTTP retries so a dead server
costs seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..redact import known_secrets, redact_url, scrub
from . import (
    KEY_LIMIT,
    PARAM_LIMIT,
    SessionRecord,
    TestRecord,
    flipped_files,
    metrics_of,
    params_of,
    scrub_file,
)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
SESSION_TAG = "modelreg.session_id"
TEST_KEY_TAG = "modelreg.test_key"
COMPLETE_TAG = "modelreg.complete"
LONG_PARAMS = "params-long.json"  # params too long for MLflow, whole, in an artifact
TAG_LIMIT = 5000  # our own cap on free-text tags (MLflow accepts 8000), marked when applied
# Unless the user set their own: one retry, short timeouts (MLflow's defaults retry 5 times
# with exponential backoff and wait 120 s per request).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def bound_http_retries() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


class MlflowTracker:
    def __init__(self, tracking_uri: str | None, experiment: str,
                 parent_run_id: str | None = None, *, resume: bool = False,
                 secrets: Sequence[str] | None = None) -> None:
        bound_http_retries()
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # Against a server, MLflow prints "View run ..." for every run it ends: noise in the
        # test report, and one more request per run.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.tracking import MlflowClient

        for chatty in ("mlflow.store.db.utils", "alembic"):  # "Creating initial tables..."
            logging.getLogger(chatty).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = self.client.tracking_uri
        self.experiment_name = experiment
        self.parent_run_id = parent_run_id
        self.resume = resume
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        # Masked in every param, tag and artifact; by default the environment's secrets.
        self.secrets = tuple(known_secrets(os.environ) if secrets is None else secrets)
        self._long_params: dict[str, dict[str, str]] = {}  # run id -> full key -> full value

    # -- setup -----------------------------------------------------------------------------
    def connect(self) -> str:
        """The experiment's id, creating (and tagging) it when it does not exist yet."""
        if self.experiment_id is None and self.parent_run_id:
            # Nested under a CI job's run: live beside it, so the UI shows the nesting.
            self.experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        if self.experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self.experiment_id = found.experiment_id
            else:
                self.experiment_id = self.client.create_experiment(
                    self.experiment_name, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
        return self.experiment_id

    def _find(self, filter_string: str) -> Any | None:
        runs = self.client.search_runs([self.connect()], filter_string=filter_string, max_results=1)
        return runs[0] if runs else None

    # -- the session run -------------------------------------------------------------------
    def start(self, session: SessionRecord) -> None:
        experiment_id = self.connect()
        existing = self._find_session_run(session.session_id) if self.resume else None
        if existing is not None:
            self.run_id = existing.info.run_id
            return
        tags = dict(session.tags)
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(experiment_id, start_time=int(session.started_at * 1000),
                                     tags=tags, run_name=session.run_name)
        self.run_id = run.info.run_id
        self._log_batch(self.run_id, params=session.params)

    def _find_session_run(self, session_id: str) -> Any | None:
        for run in self.client.search_runs([self.connect()],
                                           filter_string=f"tags.`{SESSION_TAG}` = '{session_id}'"):
            if TEST_KEY_TAG not in run.data.tags:
                return run
        return None

    def log_test(self, session: SessionRecord, test: TestRecord) -> None:
        assert self.run_id is not None
        key = f"{session.session_id}::{test.nodeid}"
        child = self._find(f"tags.`{TEST_KEY_TAG}` = '{_quote(key)}'") if self.resume else None
        if child is not None and child.data.tags.get(COMPLETE_TAG) == "true":
            return
        if child is None:
            tags = {
                "mlflow.parentRunId": self.run_id,
                "mlflow.runType": session.tags.get("mlflow.runType", "test"),
                "mlflow.test.session_id": session.session_id,
                "mlflow.test.name": test.nodeid,
                SESSION_TAG: session.session_id,
                TEST_KEY_TAG: key,
            }
            child = self.client.create_run(self.connect(), tags=tags, run_name=test.nodeid,
                                           start_time=int(time.time() * 1000))
        run_id = child.info.run_id
        for evaluation in test.evaluations:
            for path in sorted(evaluation.get("artifacts", {}).values()):
                if Path(path).exists():
                    self._log_artifact(run_id, Path(path), f"evaluations/{evaluation['baseline']}")
        for name, text in flipped_files(test).items():
            self.client.log_text(run_id, scrub(text, self.secrets, pairs=False),
                                 f"flipped/{name}")
        metrics = metrics_of(test)
        self._log_batch(run_id, metrics=metrics, params=params_of(test), tags={
            "outcome": test.outcome, "verdict": test.verdict,
            "failed": "true" if test.failed else "false", "message": _capped(test.message),
            COMPLETE_TAG: "true"})
        self.client.set_terminated(run_id, "FAILED" if test.failed else "FINISHED")

    def finish(self, session: SessionRecord) -> None:
        assert self.run_id is not None
        metrics = {}
        for test in session.tests:
            metrics.update(metrics_of(test))
        for path in sorted(session.artifacts.values()):
            if Path(path).exists():
                self._log_artifact(self.run_id, Path(path))
        failed = sum(t.failed for t in session.tests)
        self._log_batch(self.run_id, metrics={**metrics, "tests": float(len(session.tests)),
                                              "tests_failed": float(failed)},
                        # No "failed" tag here: tags.failed = 'true' must find failed tests only.
                        tags={"outcome": session.tags.get("outcome", ""), COMPLETE_TAG: "true"})
        self.client.update_run(self.run_id, status=session.status, name=session.run_name)
        end = int((session.ended_at or time.time()) * 1000)
        self.client.set_terminated(self.run_id, session.status, end_time=end)

    def _log_batch(self, run_id: str, *, params: dict[str, str] | None = None,
                   metrics: dict[str, float] | None = None,
                   tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        params = self._fit_params(run_id, {k: scrub(str(v), self.secrets)
                                           for k, v in (params or {}).items()})
        tags = {short_key(k): scrub(str(v), self.secrets) for k, v in (tags or {}).items()}
        self.client.log_batch(
            run_id,
            metrics=[Metric(short_key(k), float(v), now, 0)
                     for k, v in sorted((metrics or {}).items())],
            params=[Param(k, v) for k, v in sorted(params.items())],
            tags=[RunTag(k, v) for k, v in sorted(tags.items())],
        )

    def _fit_params(self, run_id: str, params: dict[str, str]) -> dict[str, str]:
        """Params MLflow cannot take (value > 6000 or key > 250 characters) go whole into the
        run's ``params-long.json``; the param itself becomes a short pointer to it. Never
        silently truncated, never a failed batch."""
        fitted: dict[str, str] = {}
        long = self._long_params.setdefault(run_id, {})
        moved = False
        for key, value in params.items():
            if len(key) <= KEY_LIMIT and len(value) <= PARAM_LIMIT:
                fitted[key] = value
                continue
            long[key], moved = value, True
            fitted[short_key(key)] = f"({len(value)} characters; see {LONG_PARAMS})"
        if moved:  # the whole file again: one artifact per run, with every long param
            self.client.log_text(run_id, json.dumps(long, indent=2, sort_keys=True) + "\n",
                                 LONG_PARAMS)
        return fitted

    def _log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file; one holding a known secret is uploaded as a masked copy."""
        data = path.read_bytes() if self.secrets else b""
        if not any(secret.encode() in data for secret in self.secrets):
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)
            return
        with tempfile.TemporaryDirectory(prefix="modelreg-masked-") as folder:
            copy = Path(folder) / path.name
            shutil.copyfile(path, copy)
            scrub_file(copy, self.secrets)
            self.client.log_artifact(run_id, str(copy), artifact_path=artifact_path)

    def run_url(self) -> str | None:
        """The session run in the MLflow UI (HTTP servers only)."""
        if self.run_id is None or not self.tracking_uri.startswith(("http://", "https://")):
            return None
        base = redact_url(self.tracking_uri).rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def runs_table_url(self) -> str | None:
        """The experiment's runs table: MLflow 3's UI otherwise opens on its GenAI overview."""
        url = self.run_url()
        return None if url is None else url.rsplit("/", 1)[0]


def short_key(key: str) -> str:
    """A key MLflow accepts: one over 250 characters keeps its start and gets a hash of the
    whole, so two long keys never collide."""
    if len(key) <= KEY_LIMIT:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{key[: KEY_LIMIT - 14]}-{digest}"


def _capped(text: str) -> str:
    if len(text) <= TAG_LIMIT:
        return text
    return f"{text[: TAG_LIMIT - 40]}... ({len(text)} characters in all)"


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
