"""pytest wiring only: options, the marker, the fixture and a few short hooks.

Nothing heavy is imported here: pytest loads this module in every run of every project that
has the plugin installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import Any

import pytest

from .errors import CheckFailed, ModelregError, ModelregUsageError
from .fixture import EVALUATION_PROPERTY, VERDICT_PROPERTY, ModelregFixture, run_marker_checks
from .progress import TerminalProgress
from .report import write_table
from .session import ModelregSession
from .settings import OPTIONS, build_settings
from .spec import parse_marker

SESSION_KEY = pytest.StashKey[ModelregSession]()
PARSED_KEY = pytest.StashKey[list]()
MARKER_HELP = ("modelreg(task, metrics=None, limit=None, num_fewshot=None, min=None, max=None, "
               "tolerance=None, model=None, model_args=None, ...): evaluate an lm-eval task and "
               "check its metrics against thresholds and the recorded baseline")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("modelreg", "model regression tests (pytest-modelreg)")
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=option.name,
                            help=option.help)
            parser.addini(option.name, option.help, type="bool", default=False)
        else:
            group.addoption(option.flag, dest=option.name, default=None,
                            help=f"{option.help} (ini: {option.name})")
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
    live = sys.stdout.isatty() and not hasattr(config, "workerinput")
    progress = TerminalProgress(config, live=live)
    config.stash[SESSION_KEY] = ModelregSession(settings, progress=progress)
    config.pluginmanager.register(ModelregReporter(config), "modelreg-reporter")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    markers = list(item.iter_markers("modelreg"))
    if markers:
        settings = item.config.stash[SESSION_KEY].settings
        item.stash[PARSED_KEY] = [parse_marker(m.args, m.kwargs, settings, item.nodeid)
                                  for m in reversed(markers)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    outcome = yield
    parsed = item.stash.get(PARSED_KEY, None)
    if parsed:
        run_marker_checks(item.config.stash[SESSION_KEY], item, parsed)
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
    return ModelregFixture(request.config.stash[SESSION_KEY], request.node)


class ModelregReporter:
    """Collects verdicts from test reports (also those sent by xdist workers) and prints them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == VERDICT_PROPERTY:
                self.rows.append({"test": report.nodeid, **value})
            elif name == EVALUATION_PROPERTY and value["fresh"]:
                load = value["model_load_seconds"]
                model = f"model loaded in {load:.1f} s" if load else "model reused"
                self._write(f"modelreg: evaluated {value['task']} on {value['model']} "
                            f"({value['n_samples']} docs in {value['seconds']:.1f} s; {model})")

    def _write(self, line: str) -> None:
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None and not hasattr(self.config, "workerinput"):
            reporter.write_line(line)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        terminalreporter.section("modelreg")
        write_table(terminalreporter, self.rows)
        recorded = sorted({r["task"] for r in self.rows if r["verdict"] == "recorded"})
        if recorded:
            folder = self.config.stash[SESSION_KEY].settings.baseline_dir
            terminalreporter.write_line(f"modelreg: recorded baselines for {', '.join(recorded)} "
                                        f"in {folder}")
