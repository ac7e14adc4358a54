"""Re-running an unchanged model: the result cache against the first run.

Run from the repository root:  python benchmarks/cache_rerun.py

The workload is the example suite (SmolLM2-135M-Instruct on 300 PIQA questions, CPU, batch 8),
where evaluation dominates. Three pytest sessions in subprocesses, side by side in one run:

1. first run: empty result cache (model load + evaluation);
2. re-run: the same session again, answered from the cache;
3. re-run with ``--modelreg-no-cache``: the control, evaluating again.

Goal: re-run / first run <= 0.10. The re-run still starts pytest, imports lm-eval to build the
task (its docs are part of the cache key) and hashes the model's files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GOAL = 0.10


def session(cache: Path, baselines: Path, *extra: str) -> tuple[float, str]:
    """Wall seconds of one pytest session of the example suite, and its last output line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "--no-mlflow",
               f"--modelreg-cache-dir={cache}", f"--modelreg-baseline-dir={baselines}", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=EXAMPLES, env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0:
        raise SystemExit(f"the example suite failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return seconds, "\n    ".join(line for line in lines if "result cache" in line or
                                  "passed" in line)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="modelreg-cache-bench-") as folder:
        cache, baselines = Path(folder) / "cache", Path(folder) / "baselines"
        first, first_out = session(cache, baselines)
        rerun, rerun_out = session(cache, baselines)
        control, control_out = session(cache, baselines, "--modelreg-no-cache")
    print(f"first run (empty cache):      {first:6.1f} s\n    {first_out}")
    print(f"re-run (from the cache):      {rerun:6.1f} s\n    {rerun_out}")
    print(f"re-run --modelreg-no-cache:   {control:6.1f} s\n    {control_out}")
    ratio = rerun / first
    verdict = "MET" if ratio <= GOAL else "NOT MET"
    print(f"\nre-run / first run = {ratio:.3f} (goal <= {GOAL:.2f}: {verdict}); "
          f"re-run / no-cache re-run = {rerun / control:.3f}")


if __name__ == "__main__":
    main()
