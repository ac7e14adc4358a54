"""pytest wiring only: options, the marker, the fixture and a few short hooks.

Nothing heavy is imported here: pytest loads this module in every run of every project that
has the plugin installed.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator
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
ARTIFACT_DIR_INPUT = "modelreg_artifact_dir"
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
    return report


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
        return SessionTracker(record, self._make_tracker, self.tracking.spool_dir, self._warn)

    def _make_tracker(self) -> Any:
        if self.tracking.backend == "wandb":
            from .tracking.wandb_tracker import WandbTracker

            return WandbTracker(self.tracking.experiment, self.tracking.parent_run_id)
        from .tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker(self.tracking.tracking_uri, self.tracking.experiment,
                             self.tracking.parent_run_id)

    def _connect_or_fail(self) -> None:
        try:
            tracker = self._make_tracker()
            tracker.connect()
        except Exception as exc:
            fix = ("log in to W&B or set WANDB_MODE=offline" if self.tracking.backend == "wandb"
                   else "start the server, fix --mlflow-tracking-uri")
            raise pytest.UsageError(
                f"modelreg: {self._backend_name()} tracking at {self._uri_text()} is not usable "
                f"({type(exc).__name__}: {str(exc).strip()[:300]}); {fix}, or drop "
                "--mlflow-strict") from None
        assert self.session_tracker is not None
        self.session_tracker.tracker = tracker

    def _uri_text(self) -> str:
        if self.tracking.backend == "wandb":
            return f"W&B ({os.environ.get('WANDB_MODE', 'online')})"
        return self.tracking.tracking_uri or "MLflow's default (sqlite:///mlflow.db)"

    def _backend_name(self) -> str:
        return "W&B" if self.tracking.backend == "wandb" else "MLflow"

    def _warn(self, message: str) -> None:
        self._write(f"modelreg: WARNING: {message}", yellow=True)

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

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.collector.flush()
        self._write_manifest(exitstatus)
        self._finish_tracking(exitstatus)
        self._write_requested_reports(int(exitstatus))

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
        from .report import markdown_report

        markdown = markdown_report(self.collector.rows, notes=self._notes())
        if self.settings.json_report is not None:
            atomic_write(self.settings.json_report,
                         json.dumps(self._report(exitstatus), indent=2, default=str) + "\n")
        if self.settings.markdown_report is not None:
            atomic_write(self.settings.markdown_report, markdown)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
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

    def _finish_tracking(self, exitstatus: int) -> None:
        tracker = self.session_tracker
        if tracker is None or not tracker.session.tests:
            return
        status = {pytest.ExitCode.OK: "FINISHED", pytest.ExitCode.NO_TESTS_COLLECTED: "FINISHED",
                  pytest.ExitCode.INTERRUPTED: "KILLED"}.get(exitstatus, "FAILED")
        failed = any(t.failed for t in tracker.session.tests)
        if status == "FINISHED" and failed:
            status = "FAILED"
        outcome = {"FINISHED": "passed", "KILLED": "interrupted"}.get(status, "failed")
        record = tracker.session
        record.tags["outcome"] = outcome
        from .tracking import context as tracking_context

        label = tracking_context.model_label(self.settings.model, self.settings.model_args)
        record.run_name = self.tracking.run_name or tracking_context.run_name(
            record.started_at, label, outcome)
        record.artifacts.update(self._check_drift())
        record.artifacts.update(self._write_reports(record))
        tracker.finish(status)

    def _check_drift(self) -> dict[str, str]:
        """--modelreg-drift-window N: each metric against the median of the last N sessions."""
        window = self.settings.drift_window
        if not window or self.tracking.backend != "mlflow" or not self.collector.rows:
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
            self.drift_lines = [f"the drift check could not read the session history "
                                f"({type(exc).__name__}: {str(exc).strip()[:200]})"]
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
        rows = self.collector.rows
        if rows:
            from .report import write_table

            terminalreporter.section("modelreg")
            write_table(terminalreporter, rows)
            recorded = sorted({r["task"] for r in rows if r["verdict"] == "recorded"})
            if recorded:
                terminalreporter.write_line(f"modelreg: recorded baselines for "
                                            f"{', '.join(recorded)} in {self.settings.baseline_dir}")
        self._summarise_correction(terminalreporter)
        for line in self.drift_lines:
            terminalreporter.write_line(f"modelreg: WARNING: {line}", yellow=True)
        if unused := self._unused_line():
            terminalreporter.write_line(f"modelreg: {unused}", yellow=True)
        if self.collector.evaluations and (line := self._cache_line()):
            terminalreporter.write_line(f"modelreg: {line}")
        self._summarise_tracking(terminalreporter)

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
        elif tracker.tracker is not None and tracker.tracker.run_id:
            inner = tracker.tracker
            line = (f"modelreg: {self._backend_name()} run {inner.run_id} in "
                    f"{'project' if self.tracking.backend == 'wandb' else 'experiment'} "
                    f"'{self.tracking.experiment}' at {getattr(inner, 'tracking_uri', '')} "
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
