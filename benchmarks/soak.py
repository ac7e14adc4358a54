"""Soak: 200 small, distinct evaluations in one ``-n 2`` session against a real MLflow server.

Run from the repository root:  python benchmarks/soak.py [N]   (default 200)

It builds the tiny offline model and tasks of the test suite, starts ``mlflow server`` (SQLite,
127.0.0.1) and runs the session of ``tests/test_soak.py`` with N tests: each a fresh evaluation
of tiny_big (5-8 docs, its own seed). It checks what that test checks (one parent run, one
FINISHED child per test, each evaluated, not shared) and prints the wall time and the resident
memory of both workers and the controller (which logs to MLflow) from start to end.
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
                  TOKENIZERS_PARALLELISM="false")

from tests.conftest import TinyWorld  # noqa: E402
from tests.mlflow_server import MlflowServer  # noqa: E402
from tests.test_soak import MAX_GROWTH_MB, WARMUP, check_session, soak_project  # noqa: E402
from tests.tiny import build_tiny_model, write_tiny_task  # noqa: E402


def main(n_tests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks = root / "tasks"
        write_tiny_task(tasks, "tiny_big", n_docs=400, seed=2)
        model = build_tiny_model(root / "model", seed=0)
        tiny = TinyWorld(tasks=tasks, good=model, degraded=model, slight=model)
        (root / "server").mkdir()
        server = MlflowServer(root / "server").start()
        folder = root / "project"
        folder.mkdir()
        try:
            soak_project(folder, tiny, server.uri, n_tests)
            start = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-p",
                                   "no:cacheprovider", "--modelreg-no-cache"],
                                  cwd=folder, capture_output=True, text=True)
            seconds = time.monotonic() - start
            if done.returncode != 0 or f"{n_tests} passed" not in done.stdout:
                raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
            figures = check_session(folder, server.uri, n_tests, seconds)
        finally:
            server.stop()
    session = re.search(r" in ([0-9.]+)s", done.stdout.splitlines()[-1])
    print(f"{n_tests} evaluations under -n 2 against {server.uri}, every result in MLflow once; "
          f"pytest's own time {session.group(1) if session else '?'} s")
    print("\n".join(figures.lines()))
    print(f"bounds of tests/test_soak.py (MB after the warm-up {WARMUP}): {MAX_GROWTH_MB}; "
          f"over them: {figures.too_much() or 'none'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
