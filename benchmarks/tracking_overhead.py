"""Share of a 20-test session's time spent in MLflow tracking, against a real MLflow server.

Run from the repository root:  python benchmarks/tracking_overhead.py

It builds the tiny offline model and task of the test suite, starts ``mlflow server`` (SQLite,
127.0.0.1), and runs the same 20-test session twice, side by side: with tracking to the server
and with --no-mlflow. It prints the tracking work the plugin reports (MLflow import included, done in a
background thread), the time the session had to wait for it and that wait's share of the
session, and the wall-time ratio of the two runs. Goal: under 5 %.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
                  OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

from tests.mlflow_server import MlflowServer  # noqa: E402
from tests.tiny import build_tiny_model, write_tiny_task  # noqa: E402

N_TESTS = 20


def project(folder: Path, tasks: Path, model: Path, uri: str) -> None:
    (folder / "pytest.ini").write_text(
        "[pytest]\n"
        f"modelreg_model_args = pretrained={model}\n"
        f"modelreg_include_path = {tasks}\n"
        "modelreg_device = cpu\n"
        "modelreg_record_missing = true\n"
        f"mlflow_tracking_uri = {uri}\n"
        "mlflow_experiment = benchmark\n")
    tests = "\n".join(
        f"@pytest.mark.modelreg(task='tiny_qa', limit={10 + i}, baseline='qa_{i}')\n"
        f"def test_{i}(): pass\n" for i in range(N_TESTS))
    (folder / "test_many.py").write_text("import pytest\n\n" + tests)


def run(folder: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=folder, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    return elapsed, done.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks = root / "tasks"
        tasks.mkdir()
        write_tiny_task(tasks, "tiny_qa", n_docs=60)
        model = build_tiny_model(root / "model")
        server = MlflowServer(root / "server")
        (root / "server").mkdir()
        server.start()
        try:
            results = {}
            for name, args in (("tracked", ()), ("untracked", ("--no-mlflow",))):
                folder = root / name
                folder.mkdir()
                project(folder, tasks, model, server.uri)
                run(folder, *args)  # first run records the baselines
                results[name] = run(folder, *args)
        finally:
            server.stop()
    tracked_wall, output = results["tracked"]
    untracked_wall, _ = results["untracked"]
    found = re.search(r"logging: ([0-9.]+) s in the background, ([0-9.]+) s waited", output)
    busy, waited = float(found.group(1)), float(found.group(2))
    session = float(re.search(r" in ([0-9.]+)s", output.splitlines()[-1]).group(1))
    print(f"{N_TESTS}-test session against a real MLflow server ({server.uri}):")
    print(f"  session time (pytest's own figure):  {session:7.2f} s")
    print(f"  tracking work, in a background thread: {busy:7.2f} s "
          f"(= {100 * busy / session:.1f} % of the session if it were not overlapped)")
    print(f"  time the session waited for tracking:  {waited:7.2f} s  "
          f"= {100 * waited / session:.1f} % of the session (goal < 5 %)")
    print(f"  wall time tracked / --no-mlflow:     {tracked_wall:.2f} s / {untracked_wall:.2f} s "
          f"= {tracked_wall / untracked_wall:.2f}")


if __name__ == "__main__":
    main()
