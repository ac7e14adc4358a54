"""pytest wiring only: options, the marker, the fixture and a few short hooks.

Nothing heavy is imported here: pytest loads this module in every run of every project that
has the plugin installed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .collect import ReportCollector
from .errors import CheckFailed, ModelregError, ModelregUsageError
from .properties import TEST_PROPERTY
from .settings import OPTIONS, Settings, build_settings

# Everything else is imported where it is used: pytest loads this module in every session of
# every project that has the plugin installed, and most never run a modelreg test.
if TYPE_CHECKING:
    from .fixture import ModelregFixture
    from .session import ModelregSession
    from .tracking import SessionRecord, SessionTracker, TestRecord

SESSION_KEY = pytest.StashKey["ModelregSession"]()
SETUP_KEY = pytest.StashKey["SessionSetup"]()
PARSED_KEY = pytest.StashKey[list]()
CALL_OUTCOME_KEY = pytest.StashKey[tuple]()
ARTIFACT_DIR_INPUT = "modelreg_artifact_dir"
PENDING_DIR_INPUT = "modelreg_pending_dir"
MARKER_HELP = ("modelreg(task, metrics=None, limit=None, num_fewshot=None, min=None, max=None, "
               "tolerance=None, model=None, model_args=None, ...): evaluate an lm-eval task and "
               "check its metrics against thresholds and the recorded baseline")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("modelreg", "model regression tests (pytest-modelreg)")
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=option.name,
                            help=option.help)
            if option.ini:
                parser.addini(option.name, option.help, type="bool", default=False)
        else:
            ini_note = f" (ini: {option.name})" if option.ini else ""
            group.addoption(option.flag, dest=option.name, default=None,
                            help=option.help + ini_note)
            if option.ini:
                parser.addini(option.name, option.help, default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = build_settings(
            config.getoption, config.getini, env=os.environ, rootdir=config.rootpath,
            inidir=config.inipath.parent if config.inipath else None)
    except ModelregUsageError as exc:
        raise pytest.UsageError(f"modelreg: {exc}") from None
    # Capture is suspended while plugins configure, so sys.stdout is the real terminal here.
    worker_input = getattr(config, "workerinput", None)
    setup = SessionSetup(settings, live=sys.stdout.isatty() and worker_input is None)
    config.stash[SETUP_KEY] = setup
    setup.pending_dir = pending_baselines_dir(worker_input)
    config.pluginmanager.register(
        BaselineWrites(setup.pending_dir.parent, settings, worker_input is not None),
        "modelreg-baseline-writes")
    if worker_input is not None:
        folder = worker_input.get(ARTIFACT_DIR_INPUT)
        setup.artifact_dir = Path(folder) if folder else None
        config.pluginmanager.register(XdistGroupIds(), "modelreg-xdist-group-ids")
        return
    if settings.tracking.enabled:
        # MLflow's own deprecation warnings (it works in a background thread, where a local
        # catch_warnings cannot reach) are not the user's to read in their session summary.
        config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:mlflow")
    if settings.tracking.enabled and settings.tracking.backend == "wandb" \
            and importlib.util.find_spec("wandb") is None:
        raise pytest.UsageError("modelreg: --modelreg-tracker wandb needs the wandb package: "
                                "pip install 'pytest-modelreg[wandb]'")
    controller = ModelregController(config, settings)
    setup.artifact_dir = controller.artifact_dir
    config.pluginmanager.register(controller, "modelreg-controller")
    if getattr(config.option, "xmlpath", None):  # only --junitxml needs flat properties
        config.pluginmanager.register(JunitProperties(), "modelreg-junit")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(controller), "modelreg-xdist")


class SessionSetup:
    """What pytest_configure knows; the session object itself is made on first use."""

    def __init__(self, settings: Settings, live: bool) -> None:
        self.settings = settings
        self.live = live
        self.artifact_dir: Path | None = None
        self.pending_dir = Path()


def pending_baselines_dir(worker_input: dict[str, Any] | None) -> Path:
    """This process's folder for approved baselines, under the session's (made when used)."""
    if worker_input is not None and PENDING_DIR_INPUT in worker_input:
        return Path(worker_input[PENDING_DIR_INPUT]) / str(worker_input.get("workerid", "gw"))
    root = Path(tempfile.gettempdir()) / f"pytest-modelreg-pending-{uuid.uuid4().hex}"
    return root / "main"


def modelreg_session(config: pytest.Config) -> ModelregSession:
    """The session object in ``config.stash``, made when something first needs it: a session
    without modelreg tests never imports the evaluation machinery."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        from .progress import TerminalProgress
        from .session import ModelregSession

        setup = config.stash[SETUP_KEY]
        session = ModelregSession(setup.settings, progress=TerminalProgress(config, live=setup.live),
                                  default_cache_dir=_pytest_cache_dir(config))
        session.artifact_dir = setup.artifact_dir
        session.pending_dir = setup.pending_dir
        config.stash[SESSION_KEY] = session
    return session


def _pytest_cache_dir(config: pytest.Config) -> Callable[[], Path] | None:
    """pytest's own cache folder (``--cache-clear`` empties it), created only when used."""
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    return None if cache is None else lambda: cache.mkdir("modelreg")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """``modelreg*.yaml`` / ``.yml`` files are suites: one test item per task (see suite.py)."""
    if not fnmatch.fnmatch(file_path.name, "modelreg*.y*ml") or file_path.suffix not in (".yaml",
                                                                                       ".yml"):
        return None
    from .suite import SuiteFile

    return SuiteFile.from_parent(parent, path=file_path)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.get_closest_marker("modelreg") is not None
            or "modelreg" in getattr(item, "fixturenames", ())]
    if not ours:
        return
    from .session import count_planned_checks

    session = modelreg_session(config)
    # Every process (xdist workers too) collects the same items, so all count the same m.
    session.planned_checks = count_planned_checks(
        ([m.kwargs.get("metrics") for m in item.iter_markers("modelreg")],
         "modelreg" in getattr(item, "fixturenames", ())) for item in ours)
    if session.settings.xdist_group == "model" and config.pluginmanager.hasplugin("xdist"):
        for item in ours:
            group_by_model(item, session.settings)


def group_by_model(item: pytest.Item, settings: Settings) -> None:
    """Tests of one model share an xdist group: under --dist loadgroup each model loads once.
    A test that names its own xdist_group keeps it. ``item`` is a modelreg test."""
    if item.get_closest_marker("xdist_group") is not None:
        return
    from .spec import short_hash

    marker = item.get_closest_marker("modelreg")  # None: a fixture test, on the session's model
    kwargs = marker.kwargs if marker is not None else {}
    model = kwargs.get("model") or settings.model
    model_args = settings.model_args if kwargs.get("model_args") is None else kwargs["model_args"]
    item.add_marker(pytest.mark.xdist_group(f"modelreg-{model}-{short_hash(model, model_args)}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    markers = list(item.iter_markers("modelreg"))
    if markers or "modelreg" in getattr(item, "fixturenames", ()):
        item.user_properties.append((TEST_PROPERTY, True))
    if markers:
        from .spec import parse_marker

        settings = item.config.stash[SETUP_KEY].settings
        item.stash[PARSED_KEY] = [parse_marker(m.args, m.kwargs, settings, item.nodeid)
                                  for m in reversed(markers)]
        skip_unless_gpu_fits(markers, item.nodeid)


def skip_unless_gpu_fits(markers: list[pytest.Mark], nodeid: str) -> None:
    """``gpu=True`` / ``min_gpu_memory=...``: skip, saying why, where no such GPU is visible."""
    from .gpus import unmet_gpu_requirement
    from .spec import parse_requirements

    needs = [parse_requirements(m.kwargs, nodeid) for m in markers]
    need_gpu = any(gpu for gpu, _ in needs)
    least = max((memory for _, memory in needs if memory is not None), default=None)
    if (reason := unmet_gpu_requirement(need_gpu, least)) is not None:
        # Reported at the test's own location (file:line), not this hook's.
        raise pytest.skip.Exception(f"modelreg: {reason}", _use_item_location=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    outcome = yield
    parsed = item.stash.get(PARSED_KEY, None)
    if parsed:
        from .fixture import run_marker_checks

        run_marker_checks(modelreg_session(item.config), item, parsed)
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, (ModelregError, CheckFailed)) and report.failed:
        report.longrepr = f"modelreg: {error}"  # one clear message, no library traceback
    if SESSION_KEY in item.config.stash:
        settle_recorded_baselines(item, call, report)
    return report


def settle_recorded_baselines(item: pytest.Item, call: pytest.CallInfo[None],
                              report: pytest.TestReport) -> None:
    """A test's recorded baselines are approved once its teardown is over, only when its call
    completed (passed, or failed only modelreg's checks) and nothing else errored."""
    if call.when == "call":
        item.stash[CALL_OUTCOME_KEY] = call_outcome(call, report)
    elif call.when == "teardown":
        completed, why = item.stash.get(CALL_OUTCOME_KEY, (False, "the test's setup failed"))
        if completed and report.failed:
            completed, why = False, "the test's teardown failed"
        modelreg_session(item.config).end_test(completed, f"{why} ({item.nodeid})")


def call_outcome(call: pytest.CallInfo[None], report: pytest.TestReport) -> tuple[bool, str]:
    if call.excinfo is None:
        return True, ""
    if isinstance(call.excinfo.value, CheckFailed):
        return True, ""  # a failed check is a verdict about the model: its results stand
    if report.skipped:
        return False, "the test was skipped or xfailed"
    text = str(call.excinfo.value).strip().splitlines()
    return False, f"the test raised {call.excinfo.typename}{': ' + text[0] if text else ''}"


class BaselineWrites:
    """Recorded baselines wait in a pending folder (one per process) and the controller writes
    them all when the session ends: those of a crashed xdist worker too, none after Ctrl-C."""

    def __init__(self, root: Path, settings: Settings, worker: bool) -> None:
        self.root = root
        self.settings = settings
        self.worker = worker
        self.lines: list[str] = []
        self.refused = False
        self.modelreg_tests: set[str] = set()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[PENDING_DIR_INPUT] = str(self.root)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        try:
            self._finish(session, exitstatus)
        except Exception:  # a bug of ours: pytest's internal error, and the other hooks still run
            session.config.notify_exception(pytest.ExceptionInfo.from_current(),
                                            session.config.option)
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _finish(self, session: pytest.Session, exitstatus: int) -> None:
        modelreg = session.config.stash.get(SESSION_KEY, None)
        if modelreg is not None:
            self.lines.extend(modelreg.not_updated_lines())
        if self.worker:
            session.config.workeroutput[PENDING_DIR_INPUT] = self.lines  # type: ignore[attr-defined]
            return
        if not self.root.exists():
            return
        from .baselines import BaselineStore
        from .session import write_pending_baselines

        written, lines, refused = write_pending_baselines(
            self.root, BaselineStore(self.settings.baseline_dir),
            interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
        if written:
            self.lines.insert(0, f"wrote {len(written)} baseline(s) to "
                                 f"{self.settings.baseline_dir}: {', '.join(written)}")
        self.lines.extend(lines)
        self.refused = refused
        if refused and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # an update was refused

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A crashed worker sends no lines: say here that its test's baselines stay as they were."""
        if self.worker or not (self.settings.update or self.settings.record_missing):
            return
        if any(name == TEST_PROPERTY for name, _ in report.user_properties):
            self.modelreg_tests.add(report.nodeid)
        elif report.when == "???" and report.nodeid in self.modelreg_tests:
            self.lines.append(f"nothing {report.nodeid} recorded was written: its xdist worker "
                              "crashed")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.lines.extend(getattr(node, "workeroutput", {}).get(PENDING_DIR_INPUT, []))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.lines:
            terminalreporter.write_line(f"modelreg: {line}", yellow=not line.startswith("wrote "))


@pytest.fixture
def modelreg(request: pytest.FixtureRequest) -> ModelregFixture:
    """Evaluate lm-eval tasks in a test: ``modelreg.evaluate("piqa").check("acc", min=0.6)``."""
    from .fixture import ModelregFixture

    return ModelregFixture(modelreg_session(request.config), request.node)


class ModelregController:
    """Controller-only work: the verdict table, the MLflow run, the session report.

    Under xdist, workers never get this object: everything reaches it on the test reports.
    """

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.tracking = settings.tracking
        self.collector = ReportCollector(self._test_done)
        self.deselected = 0
        self.unused_baselines: list[str] = []
        self.drift_lines: list[str] = []
        self.artifact_dir: Path | None = None
        self.session_tracker: SessionTracker | None = None
        self.session: pytest.Session | None = None
        self.summary = LineRecorder()  # the terminal summary, rendered at session finish
        self.started_at = time.time()
        if self.tracking.enabled:
            self.artifact_dir = Path(tempfile.mkdtemp(prefix="pytest-modelreg-"))
            if self.tracking.strict:
                self.session_tracker = self._session_tracker()
                self._connect_or_fail()

    # -- tracking --------------------------------------------------------------------------
    def _session_tracker(self) -> SessionTracker:
        """Made when the first modelreg test reports (or at start under --mlflow-strict): a
        session without modelreg tests never asks git for its state or starts a thread."""
        session_id = uuid.uuid4().hex
        started = self.started_at
        from .provenance import git_state
        from .tracking import SessionRecord, SessionTracker
        from .tracking import context as tracking_context

        label = tracking_context.model_label(self.settings.model, self.settings.model_args)
        record = SessionRecord(
            session_id=session_id, started_at=started,
            run_name=tracking_context.run_name(started, label, "running"),
            tags=tracking_context.session_tags(
                session_id, tracking_context.redact_command(self.config.invocation_params.args),
                git_state(self.settings.rootdir), os.environ),
            params=tracking_context.session_params(self.settings),
            tracking_uri=self.tracking.tracking_uri, experiment=self.tracking.experiment,
            parent_run_id=self.tracking.parent_run_id, backend=self.tracking.backend)
        from .redact import known_secrets

        # Masked wherever tracking writes: secret env variables and the session's model_args.
        secrets = known_secrets(os.environ, self.settings.model_args)
        from .tracking import WAIT_BUDGET, WANDB_WAIT_BUDGET

        budget = WANDB_WAIT_BUDGET if self.tracking.backend == "wandb" else WAIT_BUDGET
        return SessionTracker(record, self._make_tracker, self.tracking.spool_dir, self._warn,
                              secrets=secrets, wait_budget=budget)

    def _make_tracker(self) -> Any:
        if self.tracking.backend == "wandb":
            from .tracking.wandb_tracker import WandbTracker

            return WandbTracker(self.tracking.experiment, self.tracking.parent_run_id)
        from .redact import known_secrets
        from .tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker(self.tracking.tracking_uri, self.tracking.experiment,
                             self.tracking.parent_run_id,
                             secrets=known_secrets(os.environ, self.settings.model_args))

    def _connect_or_fail(self) -> None:
        """--mlflow-strict: a usable server before any model loads, or a usage error (bounded
        by the tracker's own HTTP timeouts and retries)."""
        try:
            tracker = self._make_tracker()
            tracker.connect()
        except Exception as exc:
            from .redact import known_secrets, scrub
            from .tracking import describe_failure

            reason, fix = describe_failure(exc, self.tracking.backend, self.tracking.tracking_uri,
                                           self.tracking.experiment)
            raise pytest.UsageError(scrub(
                f"modelreg: {self._backend_name()} tracking at {self._uri_text()} is not usable "
                f"({reason}); {fix}, or drop --mlflow-strict",
                known_secrets(os.environ, self.settings.model_args))) from None
        assert self.session_tracker is not None
        self.session_tracker.tracker = tracker

    def _uri_text(self) -> str:
        if self.tracking.backend == "wandb":
            return f"W&B ({os.environ.get('WANDB_MODE', 'online')})"
        from .redact import redact_url

        return redact_url(self.tracking.tracking_uri or "MLflow's default (sqlite:///mlflow.db)")

    def _backend_name(self) -> str:
        return "W&B" if self.tracking.backend == "wandb" else "MLflow"

    def _warn(self, message: str) -> None:
        from .redact import known_secrets, scrub

        # At the session's end the progress line ("[100%]") has no newline yet.
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
            reporter._tw.line()
        secrets = known_secrets(os.environ, self.settings.model_args)
        self._write(scrub(f"modelreg: WARNING: {message}", secrets), yellow=True)

    def _test_done(self, test: TestRecord) -> None:
        if not self.tracking.enabled:
            return
        if self.session_tracker is None:
            self.session_tracker = self._session_tracker()
        first = self.collector.first_evaluation
        if first is not None and not self.session_tracker.started:
            from .tracking import context as tracking_context

            self.session_tracker.session.params.update(tracking_context.environment_params(first))
        self.session_tracker.log_test(test)

    # -- hooks -----------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if not self.settings.configured:  # a project that merely has the plugin installed
            return []
        lines = [f"modelreg: model {self.settings.model}, baselines in {self.settings.baseline_dir}"]
        if self.tracking.enabled:
            where = "project" if self.tracking.backend == "wandb" else "experiment"
            lines.append(f"modelreg: {self._backend_name()} tracking at {self._uri_text()}, "
                         f"{where} '{self.tracking.experiment}'")
        return lines

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        message = report.longreprtext.strip().splitlines()[-1] if report.failed and \
            report.longreprtext.strip() else ""
        fresh = self.collector.add(report.nodeid, report.when, report.outcome, report.duration,
                                   message, list(report.user_properties))
        if fresh:
            from .report import evaluation_line

            for value in fresh:
                self._write(f"modelreg: {evaluation_line(value)}")

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def full_session(self) -> bool:
        """Every test of the project was selected: no paths, -k, -m or deselection."""
        option = self.config.option
        return (self.config.args_source != pytest.Config.ArgsSource.ARGS and not self.deselected
                and not getattr(option, "keyword", "") and not getattr(option, "markexpr", "")
                and not getattr(option, "lf", False))

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session  # an error of ours at the end sets its exit status

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Each step runs even when one before it failed, and the run is always ended: an error
        of the plugin's own becomes pytest's internal error (exit 3) and ends the run FAILED."""
        with self._internal_errors():
            self.collector.flush()
        with self._internal_errors():
            self._write_manifest(int(session.exitstatus))  # after a refused baseline write: 1
        tracker = self.session_tracker if self.session_tracker is not None \
            and self.session_tracker.session.tests else None
        artifacts: dict[str, str] = {}
        if tracker is not None:
            with self._internal_errors():
                artifacts.update(self._check_drift())
        with self._internal_errors():  # rendered now, so that an error in it ends the run FAILED
            self._summarise_results(self.summary)
        if tracker is not None:
            self._finish_tracking(tracker, session, artifacts)
        with self._internal_errors():
            self._write_requested_reports(int(session.exitstatus))

    @contextlib.contextmanager
    def _internal_errors(self) -> Iterator[None]:
        """A bug of ours at the session's end, shown as pytest shows its internal errors
        (``INTERNALERROR>`` lines, exit 3) instead of escaping the hook: an exception out of
        pytest_sessionfinish would skip the other plugins' finish and exit 1 with a bare traceback."""
        try:
            yield
        except Exception:
            self.config.notify_exception(pytest.ExceptionInfo.from_current(), self.config.option)
            if self.session is not None:
                self.session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _cache_line(self) -> str | None:
        from .report import cache_summary

        return cache_summary(self.collector.evaluations, modelreg_session(self.config).cache_dir())

    def _unused_line(self) -> str | None:
        if not self.unused_baselines:
            return None
        return (f"{len(self.unused_baselines)} baseline(s) in {self.settings.baseline_dir} no test "
                f"used: {', '.join(self.unused_baselines)} (delete them, or see: "
                "pytest-modelreg baselines list --unused)")

    def _notes(self) -> list[str]:
        """The lines under the table: correction, power, drift, unused baselines, cache."""
        from .report import holm_summary, underpowered_summary

        notes = [holm_summary(self.collector.rows, self.settings),
                 underpowered_summary(self.collector.rows), *self.drift_lines,
                 self._unused_line(), self._cache_line() if self.collector.evaluations else None]
        return [note for note in notes if note]

    def _report(self, exitstatus: int) -> dict[str, Any]:
        """Everything the session decided, for --modelreg-json (and the MLflow artifact)."""
        tracker = self.session_tracker
        inner = tracker.tracker if tracker is not None else None
        return {
            "exitstatus": exitstatus,
            "model": self.settings.model,
            "baseline_dir": str(self.settings.baseline_dir),
            "alpha": self.settings.alpha, "correction": self.settings.correction,
            "rows": self.collector.rows,
            "evaluations": self.collector.evaluations,
            "notes": self._notes(),
            "unused_baselines": self.unused_baselines,
            "mlflow_run_id": getattr(inner, "run_id", None),
            "mlflow_run_url": inner.run_url() if inner is not None and inner.run_id else None,
            "spooled_to": str(tracker.spool_path) if tracker and tracker.spool_path else None,
        }

    def _write_requested_reports(self, exitstatus: int) -> None:
        if not self.collector.evaluations and not self.collector.rows:
            return
        from .baselines import atomic_write
        from .report import finite_json, markdown_report

        if self.settings.json_report is not None:  # first: it needs no rendering that could fail
            atomic_write(self.settings.json_report, json.dumps(
                finite_json(self._report(exitstatus)), indent=2, default=str, allow_nan=False)
                + "\n")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if self.settings.markdown_report is None and not summary:
            return
        markdown = markdown_report(self.collector.rows, notes=self._notes())
        if self.settings.markdown_report is not None:
            atomic_write(self.settings.markdown_report, markdown)
        if summary:  # GitHub Actions shows this file on the run's summary page
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")

    def _write_manifest(self, exitstatus: int) -> None:
        """What the session evaluated, for ``baselines accept`` and ``baselines list --unused``."""
        self.unused_baselines = []
        if not self.collector.evaluations:
            return
        from .manifest import write_manifest

        modelreg = modelreg_session(self.config)
        # Also with --modelreg-no-cache: accept must not see an older session's manifest.
        folder = modelreg.state_dir()
        full = self.full_session() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        if folder is not None:
            write_manifest(folder, baseline_dir=self.settings.baseline_dir, full_session=full,
                           exitstatus=int(exitstatus), evaluations=self.collector.evaluations)
        if full:
            used = {v["baseline"] for v in self.collector.evaluations}
            self.unused_baselines = sorted(set(modelreg.store.names()) - used)

    def _finish_tracking(self, tracker: SessionTracker, session: pytest.Session,
                         artifacts: dict[str, str]) -> None:
        """End the run whatever fails on the way; after an error of ours it ends FAILED."""
        record = tracker.session
        record.artifacts.update(artifacts)
        # The report artifact is written before the run ends: give it the status it ends with.
        record.status = run_status(session.exitstatus, record.tests)
        with self._internal_errors():
            record.artifacts.update(self._write_reports(record))
        with self._internal_errors():
            self._name_run(record, run_status(session.exitstatus, record.tests))
        with self._internal_errors():
            tracker.finish(run_status(session.exitstatus, record.tests))

    def _name_run(self, record: SessionRecord, status: str) -> None:
        outcome = {"FINISHED": "passed", "KILLED": "interrupted"}.get(status, "failed")
        record.tags["outcome"] = outcome
        from .tracking import context as tracking_context

        label = tracking_context.model_label(self.settings.model, self.settings.model_args)
        record.run_name = self.tracking.run_name or tracking_context.run_name(
            record.started_at, label, outcome)

    def _check_drift(self) -> dict[str, str]:
        """--modelreg-drift-window N: each metric against the median of the last N sessions."""
        window = self.settings.drift_window
        if not window or self.tracking.backend != "mlflow" or not self.collector.rows:
            return {}
        if self.session_tracker is not None and self.session_tracker.failure is not None:
            # The server already failed: asking it again would add minutes to the session.
            self.drift_lines = ["the drift check was skipped: MLflow was not reachable"]
            return {}
        from .drift import check_drift
        from .history import higher_is_better, metric_history

        def history(task: str, metric: str) -> list[Any]:
            return metric_history(self.tracking.tracking_uri, self.tracking.experiment, task,
                                  metric, last=window, verdicts=False)

        try:
            found, plots = check_drift(self.collector.rows, history, window, self.artifact_dir,
                                       higher_is_better)
        except Exception as exc:  # the drift check never decides a test
            from .redact import scrub

            self.drift_lines = [scrub(f"the drift check could not read the session history "
                                      f"({type(exc).__name__}: {str(exc).strip()[:200]})",
                                      self.session_tracker.secrets if self.session_tracker
                                      else ())]
            return {}
        self.drift_lines = [f"slow drift: {d.line()}" for d in found if d.drifted]
        return plots

    def _write_reports(self, record: SessionRecord) -> dict[str, str]:
        assert self.artifact_dir is not None
        report_json = self.artifact_dir / "modelreg-report.json"
        report_md = self.artifact_dir / "modelreg-report.md"
        from .baselines import atomic_write
        from .report import markdown_report

        atomic_write(report_json, record.to_json())
        atomic_write(report_md, markdown_report(self.collector.rows, notes=self._notes()))
        return {"modelreg-report.json": str(report_json), "modelreg-report.md": str(report_md)}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.collector.rows:
            terminalreporter.section("modelreg")
        for line, markup in self.summary.lines:
            terminalreporter.write_line(line, **markup)
        with self._internal_errors():
            self._summarise_tracking(terminalreporter)

    def _summarise_results(self, terminalreporter: Any) -> None:
        rows = self.collector.rows
        if rows:
            from .report import write_table

            write_table(terminalreporter, rows)  # which baselines were written: BaselineWrites
        self._summarise_correction(terminalreporter)
        for line in self.drift_lines:
            terminalreporter.write_line(f"modelreg: WARNING: {line}", yellow=True)
        if unused := self._unused_line():
            terminalreporter.write_line(f"modelreg: {unused}", yellow=True)
        if self.collector.evaluations and (line := self._cache_line()):
            terminalreporter.write_line(f"modelreg: {line}")

    def _summarise_correction(self, terminalreporter: Any) -> None:
        if not self.collector.rows:
            return
        from .report import holm_summary, underpowered_summary

        line = holm_summary(self.collector.rows, self.settings)
        if line:
            terminalreporter.write_line(f"modelreg: {line}")
        warning = underpowered_summary(self.collector.rows)
        if warning:
            terminalreporter.write_line(f"modelreg: {warning}", yellow=True)

    def _summarise_tracking(self, terminalreporter: Any) -> None:
        tracker = self.session_tracker
        if tracker is None or not tracker.session.tests:
            return
        if tracker.spool_path is not None:
            terminalreporter.write_line(
                f"modelreg: {self._backend_name()} was not reachable; the session is spooled in "
                f"{tracker.spool_path}; replay it with: pytest-modelreg sync", yellow=True)
            terminalreporter.write_line(
                f"modelreg: tracking cost this session {tracker.wait_seconds:.2f} s of waiting "
                f"(at most {tracker.wait_budget:g} s; {tracker.busy_seconds:.2f} s in the "
                "background)")
        elif tracker.tracker is not None and tracker.tracker.run_id:
            from .redact import redact_url

            inner = tracker.tracker
            line = (f"modelreg: {self._backend_name()} run {inner.run_id} in "
                    f"{'project' if self.tracking.backend == 'wandb' else 'experiment'} "
                    f"'{self.tracking.experiment}' at "
                    f"{redact_url(getattr(inner, 'tracking_uri', '') or '')} "
                    f"(logging: {tracker.busy_seconds:.2f} s in the background, "
                    f"{tracker.wait_seconds:.2f} s waited)")
            terminalreporter.write_line(line)
            if offline := getattr(inner, "offline_dir", None):
                terminalreporter.write_line(f"modelreg: upload it with: wandb sync {offline}")
            if url := inner.run_url():
                terminalreporter.write_line(f"modelreg: this session: {url}")
                terminalreporter.write_line(f"modelreg: all sessions: {inner.runs_table_url()}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.artifact_dir is not None:
            shutil.rmtree(self.artifact_dir, ignore_errors=True)

    def _write(self, line: str, **markup: bool) -> None:
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line, **markup)


class LineRecorder:
    """A terminal writer that keeps its lines, to be written out later."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, bool]]] = []

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append((line, markup))


def run_status(exitstatus: int, tests: list[TestRecord]) -> str:
    """How the session's run ends: FINISHED, KILLED (interrupted) or FAILED (failed tests, an
    internal error, a crashed worker, anything else)."""
    status = {pytest.ExitCode.OK: "FINISHED", pytest.ExitCode.NO_TESTS_COLLECTED: "FINISHED",
              pytest.ExitCode.INTERRUPTED: "KILLED"}.get(exitstatus, "FAILED")
    return "FAILED" if status == "FINISHED" and any(t.failed for t in tests) else status


class JunitProperties:
    """Flat ``modelreg.<task>.<metric>.<field>`` properties for JUnit XML readers, written on
    the teardown report (the one junitxml reads them from) before junitxml sees it; the
    controller has taken what it needs from the call report by then."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when in ("teardown", "???"):
            from .report import junit_properties

            report.user_properties = junit_properties(report.user_properties)


class XdistHooks:
    """Registered only when pytest-xdist is installed (``-p no:xdist`` must keep working)."""

    def __init__(self, controller: ModelregController) -> None:
        self.controller = controller

    def pytest_configure_node(self, node: Any) -> None:
        if self.controller.artifact_dir is not None:
            node.workerinput[ARTIFACT_DIR_INPUT] = str(self.controller.artifact_dir)

    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: list[Any]) -> None:
        """Pin each worker to its own GPU(s) through its execnet spec: the variable is set in
        the worker before anything there can touch CUDA, and a worker that replaces a crashed
        one is started from the same spec, so it gets the same GPUs."""
        settings = self.controller.settings
        if not settings.configured or settings.gpus_per_worker == 0:
            return
        from .gpus import visible_gpus, worker_gpus

        gpus = visible_gpus(os.environ)
        if not gpus:
            return
        shares = [worker_gpus(i, gpus, settings.gpus_per_worker) for i in range(len(specs))]
        for spec, share in zip(specs, shares, strict=True):
            spec.env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(share))
        shown = ", ".join(f"worker {i}: {spec.env['CUDA_VISIBLE_DEVICES']}"
                          for i, spec in enumerate(specs))
        self.controller._write(f"modelreg: CUDA_VISIBLE_DEVICES per xdist worker: {shown}")
        if len(specs) * settings.gpus_per_worker > len(gpus):
            self.controller._warn(f"{len(specs)} workers x {settings.gpus_per_worker} GPU(s) "
                                  f"share {len(gpus)} GPU(s); use -n "
                                  f"{max(len(gpus) // settings.gpus_per_worker, 1)} for one each")


class XdistGroupIds:
    """Workaround for pytest-xdist#1386: on pytest >= 9.2, ``--dist loadgroup`` appends the group
    to a node id field pytest no longer reads, so no test is grouped. After xdist's own hook,
    put the ``@group`` suffix where the node id now lives (only when it is missing)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]
                                      ) -> None:
        if not getattr(config.option, "loadgroup", False):
            return
        for item in items:
            names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                            for m in item.iter_markers("xdist_group")})
            if names and "@" not in item.nodeid.rsplit("]", 1)[-1] and hasattr(item, "_id"):
                from _pytest.nodeid import coerce_node_id

                item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
