"""Soak: many small, distinct evaluations in one ``-n 2`` session against a real MLflow server.

Memory stays flat on the workers (which evaluate) and on the controller (which logs to MLflow),
and every result reaches MLflow exactly once. ``benchmarks/soak.py`` runs the same session with
200 evaluations and prints the figures; this test runs a shorter one with the same asserts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TinyWorld, dedent
from tests.mlflow_server import MlflowServer

N_TESTS = 200  # the soak: about 60 s on 2 cores
# Readings skipped before the reference RSS: a worker has loaded the model and lm-eval by its
# first test; the controller imports MLflow in the background during its first ~10 tests.
WARMUP = {"worker": 5, "controller": 15}
# Allowed RSS growth after the warm-up. Measured (benchmarks/soak.py, 200 evaluations): each
# worker +3 MB over ~95 evaluations, the controller +6 MB over 185 tests (it keeps every test's
# report) and +8 MB more while writing the final reports. A leak of 1 MB per test (model
# outputs, samples, an MLflow client per run) crosses these bounds well within 200 (checked
# by hand: a worker keeping 1 MB per test grew 14 MB over 15 tests).
MAX_GROWTH_MB = {"worker": 15.0, "controller": 30.0}
EXPERIMENT = "soak"

# The inner project: each test is its own evaluation (a distinct seed and limit: a distinct
# evaluation key, nothing shared), and writes its process's RSS after the evaluation.
CONFTEST = dedent("""
    import json, os
    from pathlib import Path

    def rss_mb():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def note(name, record):
        with (Path(__file__).parent / "rss" / f"{name}.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\\n")

    def pytest_configure(config):
        (Path(__file__).parent / "rss").mkdir(exist_ok=True)
        config._soak_controller = not hasattr(config, "workerinput")

    def pytest_runtest_logreport(report):
        # On the controller (under xdist) a test's reports arrive here and go to MLflow.
        if report.when == "teardown" and os.environ.get("PYTEST_XDIST_WORKER") is None:
            note("controller", {"test": report.nodeid, "rss": rss_mb()})

    def pytest_unconfigure(config):
        if os.environ.get("PYTEST_XDIST_WORKER") is None:
            note("controller", {"test": "<end>", "rss": rss_mb()})
""")
TESTS = dedent("""
    import os
    import pytest
    from conftest import note, rss_mb

    @pytest.mark.parametrize("i", range({n}))
    def test_eval(i, modelreg):
        limit = 5 + i % 4
        result = modelreg.evaluate("tiny_big", limit=limit, seed=i)
        assert result.n_samples == limit and not result.cached
        result.check("acc", min=0.0)
        note(os.environ["PYTEST_XDIST_WORKER"], {{"test": i, "rss": rss_mb()}})
""")


@dataclass
class SoakFigures:
    seconds: float
    rss: dict[str, list[float]]  # process (gw0, gw1, controller) -> RSS in MB, in order

    def reference(self, process: str) -> float:
        """The RSS after the warm-up: what the process needs before any growth counts."""
        kind = "controller" if process == "controller" else "worker"
        values = self.rss[process]
        return values[min(WARMUP[kind], len(values) - 1)]

    def growth(self, process: str) -> float:
        return self.rss[process][-1] - self.reference(process)

    def too_much(self) -> list[str]:
        return [process for process in self.rss if self.growth(process) >= MAX_GROWTH_MB[
            "controller" if process == "controller" else "worker"]]

    def lines(self) -> list[str]:
        out = [f"soak: {self.seconds:.0f} s"]
        for process, values in sorted(self.rss.items()):
            out.append(f"  {process}: {len(values)} readings, RSS first {values[0]:.0f} MB, "
                       f"after warm-up {self.reference(process):.0f} MB, max {max(values):.0f} MB, "
                       f"end {values[-1]:.0f} MB, growth {self.growth(process):+.1f} MB")
            step = max(1, len(values) // 8)
            curve = " ".join(f"{v:.0f}" for v in values[::step])
            out.append(f"    curve (every {step} readings): {curve}")
        return out


def soak_project(folder: Path, tiny: TinyWorld, uri: str, n_tests: int) -> None:
    (folder / "pytest.ini").write_text(tiny.ini(mlflow=True, mlflow_tracking_uri=uri,
                                                mlflow_experiment=EXPERIMENT))
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_soak.py").write_text(TESTS.format(n=n_tests))


def read_rss(folder: Path) -> dict[str, list[float]]:
    return {path.stem: [json.loads(line)["rss"] for line in path.read_text().splitlines()]
            for path in sorted((folder / "rss").glob("*.jsonl"))}


def check_mlflow(uri: str, n_tests: int) -> None:
    """One parent run, one FINISHED child per test (each name once, each freshly evaluated)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    all_runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(all_runs) == n_tests + 1
    names = sorted(c.info.run_name for c in children)
    assert names == sorted(f"test_soak.py::test_eval[{i}]" for i in range(n_tests))
    assert parent.info.status == "FINISHED"
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        i = int(child.info.run_name.rsplit("[", 1)[1].rstrip("]"))
        assert child.data.metrics["tiny_big/n_samples"] == 5 + i % 4
        assert child.data.metrics["tiny_big/eval_seconds"] > 0  # evaluated, not shared
        assert child.data.params["tiny_big.random_seed"] == str(i)


def check_session(folder: Path, uri: str, n_tests: int, seconds: float) -> SoakFigures:
    """Every test's RSS was written by one of two workers, and MLflow holds every result once."""
    figures = SoakFigures(seconds, read_rss(folder))
    assert sorted(figures.rss) == ["controller", "gw0", "gw1"]
    assert sum(len(figures.rss[w]) for w in ("gw0", "gw1")) == n_tests
    check_mlflow(uri, n_tests)
    return figures


def run_soak(pytester: pytest.Pytester, tiny: TinyWorld, uri: str, n_tests: int) -> SoakFigures:
    soak_project(pytester.path, tiny, uri, n_tests)
    start = time.monotonic()
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider",
                                           "--modelreg-no-cache")
    seconds = time.monotonic() - start
    result.assert_outcomes(passed=n_tests)
    return check_session(pytester.path, uri, n_tests, seconds)


def test_soak_memory_flat_and_every_result_once(project: pytest.Pytester, tiny: TinyWorld,
                                                fresh_server: MlflowServer):
    figures = run_soak(project, tiny, fresh_server.uri, N_TESTS)
    print("\n".join(figures.lines()))
    assert not figures.too_much(), figures.lines()
