"""What the installed plugin costs a pytest project that has no model tests at all.

Run from the repository root:  .venv/bin/python benchmarks/startup_tax.py [--reps N]

It generates, in a temporary folder, a plain 200-test project (20 files of 10 tests, no
``modelreg`` marker or fixture anywhere) and times ``pytest --collect-only -q`` in fresh
subprocesses, with the plugin loaded and with ``-p no:modelreg``, interleaved (ABBA order)
over several repetitions after a warm-up of each (the children run without
PYTHONDONTWRITEBYTECODE, as on a developer's machine, so byte code is cached as usual). It
prints both medians, their ratio (and that of the minima) and the load average (other work on
the machine skews it).
Goal: plugin / no plugin <= 1.05.

As a sanity check, a run with the plugin loaded records (from a conftest, at the end of the
session) whether the plugin was active and whether torch, lm_eval, mlflow, transformers or
datasets were imported; none of them may be, and the run must leave no files behind
(no mlflow.db, mlruns/, baselines/ or spool).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_FILES = 10 * 2
TESTS_PER_FILE = 10
HEAVY = ("torch", "lm_eval", "mlflow", "transformers", "datasets")
REPORT_ENV = "STARTUP_TAX_REPORT"
GOAL = 1.05

CONFTEST = f'''
import json
import os
import sys

HEAVY = {HEAVY!r}


def pytest_unconfigure(config):
    path = os.environ.get("{REPORT_ENV}")
    if path:
        loaded = {{name: name in sys.modules for name in HEAVY}}
        report = {{"plugin_active": config.pluginmanager.hasplugin("modelreg"), "imported": loaded}}
        with open(path, "w") as handle:
            json.dump(report, handle)
'''


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment, without PYTHONDONTWRITEBYTECODE (set on some machines):
    Python and pytest then cache their byte code, as on a developer's machine."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **(extra or {})}


def make_project(folder: Path) -> None:
    """A plain project: pytest.ini, a conftest, 20 modules of 10 small tests each."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text(CONFTEST)
    for f in range(N_FILES):
        tests = "\n\n".join(
            f"def test_case_{t}():\n    assert {f} + {t} == {f + t}" for t in range(TESTS_PER_FILE))
        (folder / f"test_module_{f:02d}.py").write_text(tests + "\n")


def collect(folder: Path, plugin: bool, env: dict[str, str] | None = None) -> float:
    """Seconds for one ``pytest --collect-only -q`` in a fresh interpreter."""
    args = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    if not plugin:
        args += ["-p", "no:modelreg"]
    start = time.perf_counter()
    done = subprocess.run(args, cwd=folder, capture_output=True, text=True,
                          env=child_env(env))
    elapsed = time.perf_counter() - start
    expected = f"{N_FILES * TESTS_PER_FILE} tests collected"
    if done.returncode != 0 or expected not in done.stdout:
        raise SystemExit(f"collection failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def sanity_check(folder: Path) -> list[str]:
    """Problems seen in one plugin-loaded run (empty when all is well)."""
    before = {p.name for p in folder.iterdir()}
    report_path = folder.parent / "modules.json"
    collect(folder, plugin=True, env={REPORT_ENV: str(report_path)})
    report = json.loads(report_path.read_text())
    problems = [] if report["plugin_active"] else ["the plugin was not active in the run"]
    problems += [f"{name} was imported" for name, seen in report["imported"].items() if seen]
    left = sorted({p.name for p in folder.iterdir()} - before - {"__pycache__"})
    problems += [f"the run left {name} behind" for name in left]
    collect(folder, plugin=False, env={REPORT_ENV: str(report_path)})
    if json.loads(report_path.read_text())["plugin_active"]:
        problems.append("-p no:modelreg did not keep the plugin out")
    return problems


def measure(folder: Path, reps: int) -> dict[bool, list[float]]:
    """Interleaved timings, ABBA order so that drift hits both sides alike."""
    collect(folder, plugin=True)
    collect(folder, plugin=False)  # warm-up: the file cache and .pyc files
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for plugin in order:
            times[plugin].append(collect(folder, plugin))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed runs of each variant")
    reps = parser.parse_args().reps
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "project"
        folder.mkdir()
        make_project(folder)
        problems = sanity_check(folder)
        times = measure(folder, reps)
    with_plugin, without = statistics.median(times[True]), statistics.median(times[False])
    ratio = with_plugin / without
    print(f"pytest --collect-only -q on a {N_FILES * TESTS_PER_FILE}-test project without model "
          f"tests ({reps} interleaved runs each, after a warm-up):")
    print(f"  plugin loaded:    median {with_plugin:.3f} s  "
          f"(min {min(times[True]):.3f}, max {max(times[True]):.3f})")
    print(f"  -p no:modelreg:   median {without:.3f} s  "
          f"(min {min(times[False]):.3f}, max {max(times[False]):.3f})")
    print(f"  load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  ratio plugin / no plugin: {ratio:.3f}  (+{1000 * (with_plugin - without):.0f} ms; "
          f"goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}); ratio of the minima "
          f"{min(times[True]) / min(times[False]):.3f}")
    print("  sanity: " + ("plugin active; none of " + ", ".join(HEAVY) + " imported; no files "
                          "left behind" if not problems else "; ".join(problems)))
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
