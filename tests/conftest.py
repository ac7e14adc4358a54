"""Session-wide tiny models and tasks (built offline, seeded) and helpers for pytester runs."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer
from tests.tiny import SLIGHT_NOISE, STRONG_NOISE, build_tiny_model, degrade_model, write_tiny_task

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class TinyWorld:
    tasks: Path  # include path with tiny_qa (60 docs) and tiny_qa2 (40 docs)
    good: Path  # trained: accuracy ~1.0 on both tasks
    degraded: Path  # the same weights with strong noise: a real regression
    slight: Path  # slight noise: about 5 points worse on tiny_big (400 docs)

    def ini(self, model: Path | None = None, *, mlflow: bool = False, **extra: str) -> str:
        """An ini file for the tiny world; MLflow stays off unless a test is about it."""
        if not mlflow:
            extra.setdefault("no_mlflow", "true")
        lines = {
            "modelreg_model": "hf",
            "modelreg_model_args": f"pretrained={model or self.good}",
            "modelreg_include_path": str(self.tasks),
            "modelreg_baseline_dir": "baselines",
            "modelreg_device": "cpu",
            **extra,
        }
        body = "\n".join(f"{k} = {v}" for k, v in lines.items())
        return f"[pytest]\n{body}\n"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    root = tmp_path_factory.mktemp("tiny")
    tasks = root / "tasks"
    tasks.mkdir()
    write_tiny_task(tasks, "tiny_qa", n_docs=60, seed=0)
    write_tiny_task(tasks, "tiny_qa2", n_docs=40, seed=1)
    write_tiny_task(tasks, "tiny_big", n_docs=400, seed=2)
    good = build_tiny_model(root / "good", seed=0)  # trained on every fact: serves both tasks
    degraded = degrade_model(good, root / "degraded", STRONG_NOISE, seed=0)
    slight = degrade_model(good, root / "slight", SLIGHT_NOISE, seed=0)
    return TinyWorld(tasks=tasks, good=good, degraded=degraded, slight=slight)


@pytest.fixture(scope="session")
def heavy_imports(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run one evaluation in this process first: pytester's inline runs drop the modules they
    imported afterwards, and lm-eval's stack cannot be imported twice (pyarrow registers types
    once; lm-eval checks model classes by identity)."""
    from pytest_modelreg.runner.lm_eval_runner import LmEvalRunner
    from pytest_modelreg.spec import EvalSpec

    runner = LmEvalRunner(include_paths=(tiny.tasks,))
    runner.evaluate(EvalSpec(task="tiny_qa", model="hf", model_args=f"pretrained={tiny.good}",
                             device="cpu", limit=2))
    runner.close()
    # The same for MLflow: after an inline run that imported it first, pytest's entry points
    # (this plugin's too) vanished from importlib.metadata in the next inline run.
    from pytest_modelreg.tracking import SessionRecord
    from pytest_modelreg.tracking.mlflow_tracker import MlflowTracker

    store = tmp_path_factory.mktemp("mlflow-warmup")
    tracker = MlflowTracker(f"sqlite:///{store / 'mlflow.db'}", "warmup")
    session = SessionRecord(session_id="warmup", started_at=0.0, status="FINISHED")
    tracker.start(session)
    tracker.finish(session)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` for the tests of one module."""
    running = MlflowServer(tmp_path_factory.mktemp("server")).start()
    yield running
    running.stop()


@pytest.fixture
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` with an empty database, for a test that counts every run in it
    or kills and restarts the server."""
    running = MlflowServer(tmp_path_factory.mktemp("fresh-server")).start()
    yield running
    running.stop()


@pytest.fixture
def project(pytester: pytest.Pytester, tiny: TinyWorld, heavy_imports: None,
            monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester project whose ini points the plugin at the tiny model and tasks."""
    # An inline run finds this plugin already imported and warns that it cannot rewrite its
    # asserts (seen with a non-editable install): noise in the summaries the tests read.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-W ignore::pytest.PytestAssertRewriteWarning")
    # Inner sessions must not append to a real CI run's summary page.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makefile(".ini", pytest=tiny.ini())
    return pytester


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
