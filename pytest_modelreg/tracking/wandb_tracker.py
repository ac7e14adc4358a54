"""The Weights & Biases tracker: the only module that imports wandb (and only in the controller).

W&B has no nested runs, so a session is one W&B run (id = the session id, group = the session
or the CI job it belongs to, job type ``pytest-modelreg``):

- history and summary: every checked metric as ``<task>/<metric>`` (the names of the MLflow
  session run), one ``log`` step per test, so the runs table compares sessions column by column;
- two tables, logged at the end: ``verdicts`` (one row per test metric: baseline, current,
  delta, confidence interval, p-value, verdict) and ``outcomes`` (one row per test: outcome,
  verdict, message), the per-test detail MLflow keeps in nested runs;
- config: the session's params and context (git, CI, the masked command line), dotted names
  nested the way W&B shows them (``version.lm_eval``), plus each task's evaluation settings;
- tags: the outcome (``passed``, ``failed``, ``interrupted``); summary ``status`` / ``outcome``;
- one artifact ``modelreg-session`` per session (reports and lm-eval's results/samples), aliased
  with the outcome, so ``modelreg-session:failed`` is the latest failed session;
- exit code: pytest's own, 0 FINISHED, 1 FAILED, 2 KILLED (W&B shows every non-zero as Failed).

WANDB_MODE (online, offline, disabled), WANDB_DIR, WANDB_ENTITY and the like are W&B's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..redact import redact_model_args
from . import SessionRecord, TestRecord, metrics_of, params_of

INSTALL_HINT = "W&B tracking needs the wandb package: pip install 'pytest-modelreg[wandb]'"
DEFAULT_PROJECT = "pytest-modelreg"  # the experiment's default: then WANDB_PROJECT may name one
JOB_TYPE = "pytest-modelreg"
ARTIFACT_NAME = "modelreg-session"
ARTIFACT_TYPE = "pytest-modelreg"
# pytest's exit codes for OK, TESTS_FAILED and INTERRUPTED.
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 2}
OUTCOMES = {"FINISHED": "passed", "FAILED": "failed", "KILLED": "interrupted"}
VERDICT_COLUMNS = ("test", "task", "metric", "baseline", "current", "delta", "stderr", "ci_low",
                   "ci_high", "p_value", "verdict", "message")
TEST_COLUMNS = ("test", "outcome", "verdict", "failed", "duration", "message", "model",
                "model_sha256")
# Our defaults where the user's environment does not set them: W&B quiet in the test output,
# pytest's capture left alone, and bounded waits for an unreachable server (W&B's are 90 s to
# start and unbounded to finish; what did not upload stays on disk for `wandb sync`).
SETTING_DEFAULTS: dict[str, tuple[str, Any]] = {
    "silent": ("WANDB_SILENT", True),
    "console": ("WANDB_CONSOLE", "off"),
    "init_timeout": ("WANDB_INIT_TIMEOUT", 30.0),
    "finish_timeout": ("WANDB_FINISH_TIMEOUT", 120.0),
}
# Always: W&B's run metadata records sys.argv (unmasked --modelreg-model-args), and saving the
# "code" would upload pytest's entry script.
FORCED_SETTINGS: dict[str, Any] = {"x_disable_meta": True, "save_code": False}
# Session tags that are MLflow conventions only; the outcome goes to the summary.
DROPPED_TAGS = frozenset({"mlflow.runType", "mlflow.test.session_id", "outcome"})


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return wandb


class WandbTracker:
    def __init__(self, experiment: str, parent_run_id: str | None = None, *,
                 resume: bool = False) -> None:
        # --mlflow-experiment names the project; left at its default, WANDB_PROJECT may.
        self.project = experiment
        if experiment == DEFAULT_PROJECT:
            self.project = os.environ.get("WANDB_PROJECT") or experiment
        self.parent_run_id = parent_run_id
        self.resume = resume
        self.run: Any = None
        self.run_id: str | None = None
        self.tracking_uri = f"wandb:{self.project}"
        self.offline_dir: Path | None = None  # the run's folder, for `wandb sync`, when offline
        self._run_url: str | None = None
        self._project_url: str | None = None
        self._wandb: Any = None
        self._artifact: Any = None
        self._artifact_names: set[str] = set()
        self._verdict_rows: list[list[Any]] = []
        self._test_rows: list[list[Any]] = []

    # -- setup -----------------------------------------------------------------------------
    def connect(self) -> str:
        """The project; fails fast, with the fix, when wandb is not installed."""
        if self._wandb is None:
            self._wandb = import_wandb()
        return self.project

    def _settings(self) -> Any:
        wandb = self._wandb
        known = getattr(wandb.Settings, "model_fields", {})  # older wandb lacks some settings
        values = {key: value for key, (variable, value) in SETTING_DEFAULTS.items()
                  if variable not in os.environ}
        values.update(FORCED_SETTINGS)
        return wandb.Settings(**{k: v for k, v in values.items() if not known or k in known})

    # -- the session run -------------------------------------------------------------------
    def start(self, session: SessionRecord) -> None:
        self.connect()
        wandb = self._wandb
        try:
            self.run = wandb.init(
                project=self.project, id=session.session_id, name=session.run_name,
                group=self.parent_run_id or os.environ.get("WANDB_RUN_GROUP") or session.session_id,
                job_type=JOB_TYPE, config=session_config(session), tags=["running"],
                resume="allow" if self.resume else None,
                # wandb reads the environment once per process; a session reads it as it starts.
                mode=os.environ.get("WANDB_MODE") or None, dir=os.environ.get("WANDB_DIR") or None,
                # Never the user's own wandb.run: their wandb.log calls stay out of our run.
                reinit="create_new", settings=self._settings())
        except wandb.errors.Error as exc:  # no API key, a bad one, no server in init_timeout
            raise RuntimeError(f"W&B could not start a run ({exc}); log in (`wandb login` or "
                               "WANDB_API_KEY), or set WANDB_MODE=offline and upload later with "
                               "`wandb sync`") from None
        if self._describe_run():
            self._artifact = wandb.Artifact(ARTIFACT_NAME, type=ARTIFACT_TYPE,
                                            metadata={"session_id": session.session_id})

    def _describe_run(self) -> bool:
        """Where the run went; False when W&B is disabled (WANDB_MODE=disabled)."""
        mode = self.run.settings.mode
        if mode == "disabled":
            self.tracking_uri = "wandb:disabled"  # nothing is kept: no run id to print
            return False
        self.run_id = self.run.id
        if mode in ("offline", "dryrun"):
            self.offline_dir = Path(self.run.dir).parent
            self.tracking_uri = str(self.offline_dir)
        else:
            settings = self.run.settings
            self._run_url = getattr(settings, "run_url", None)
            self._project_url = getattr(settings, "project_url", None)
            self.tracking_uri = self._project_url or settings.base_url
        return True

    def log_test(self, session: SessionRecord, test: TestRecord) -> None:
        assert self.run is not None
        if metrics := metrics_of(test):
            self.run.log(metrics)
        self.run.config.update(nest(task_settings(test)), allow_val_change=True)
        self._verdict_rows.extend(verdict_rows(test))
        self._test_rows.append(row_of_test(test))
        for evaluation in test.evaluations:
            for path in sorted(evaluation.get("artifacts", {}).values()):
                self._add_file(path, f"evaluations/{evaluation['baseline']}/{Path(path).name}")

    def _add_file(self, path: str, name: str) -> None:
        # Tests that share a baseline share its files: the first copy stands for all.
        if self._artifact is not None and Path(path).exists() and name not in self._artifact_names:
            self._artifact_names.add(name)
            self._artifact.add_file(path, name=name)

    def finish(self, session: SessionRecord) -> None:
        assert self.run is not None
        wandb, run = self._wandb, self.run
        outcome = OUTCOMES.get(session.status, "failed")  # the plugin's own words for a status
        run.log({"verdicts": wandb.Table(columns=list(VERDICT_COLUMNS), data=self._verdict_rows),
                 "outcomes": wandb.Table(columns=list(TEST_COLUMNS), data=self._test_rows)})
        failed = sum(t.failed for t in session.tests)
        run.summary.update({"status": session.status, "outcome": outcome,
                            "tests": len(session.tests), "tests_failed": failed})
        run.name = session.run_name
        run.tags = (outcome,)
        for name, path in sorted(session.artifacts.items()):
            self._add_file(path, name)
        if self._artifact_names:
            run.log_artifact(self._artifact, aliases=["latest", outcome])
        run.finish(exit_code=EXIT_CODES.get(session.status, 1))

    def run_url(self) -> str | None:
        """The session's run page (online runs only: an offline run has none until synced)."""
        return self._run_url

    def runs_table_url(self) -> str | None:
        """The project's runs: every session, one row each."""
        return self._project_url


def session_config(session: SessionRecord) -> dict[str, Any]:
    """The run's config: its params and context. Dotted keys nest, as W&B shows them."""
    context = {_tag_name(key): value for key, value in session.tags.items()
               if key not in DROPPED_TAGS}
    params = {key: redact_model_args(value) if key == "model_args" else value
              for key, value in session.params.items()}
    return nest({**context, **params})


def _tag_name(key: str) -> str:
    return key.replace("mlflow.source.", "", 1)  # mlflow.source.git.commit -> git.commit


def task_settings(test: TestRecord) -> dict[str, str]:
    """``<task>.<setting>`` and the weights' hash; model_args stay in the tests table."""
    return {key: value for key, value in params_of(test).items()
            if key not in ("model", "model_args")}


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"version.lm_eval": v}`` -> ``{"version": {"lm_eval": v}}``: W&B config keys must not
    hold dots, and its UI shows nested keys dotted again. A clash keeps the key flat (dots
    become underscores)."""
    nested: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                nested[key.replace(".", "_")] = value
                break
            node = child
        else:
            if isinstance(node.get(leaf), dict):
                nested[key.replace(".", "_")] = value
            else:
                node[leaf] = value
    return nested


def verdict_rows(test: TestRecord) -> Iterable[list[Any]]:
    for row in test.verdicts:
        yield [test.nodeid, *(row.get(column) for column in VERDICT_COLUMNS[1:])]


def row_of_test(test: TestRecord) -> list[Any]:
    first = test.evaluations[0] if test.evaluations else {}
    return [test.nodeid, test.outcome, test.verdict, test.failed, round(test.duration, 3),
            test.message[:5000], _model_text(first), first.get("model_sha256", "")]


def _model_text(evaluation: Mapping[str, Any]) -> str:
    if not evaluation:
        return ""
    model_args = redact_model_args(evaluation.get("model_args", ""))
    return f"{evaluation.get('model', '')}({model_args})" if model_args else evaluation.get("model", "")
