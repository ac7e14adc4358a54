"""The ``pytest-modelreg`` command (also ``python -m pytest_modelreg``).

Commands: ``baselines list|show|diff|accept``, ``import``, ``history``, ``compare``, ``sync``.

Exit codes, the same for every command:

- 0: done, nothing to report;
- 1: found something: ``baselines diff`` shows differences, ``compare`` finds a regression,
  ``baselines list --unused --check`` finds unused baselines, ``sync`` could not replay a
  session;
- 2: usage error (bad arguments, unknown baseline name, a selection that matches nothing);
- 3: data error: a corrupt baseline, no session manifest or cache entry, a results file that
  is not one, an MLflow server that cannot be reached.

Errors are one line on stderr that names the thing and the fix. Nothing heavy is imported at
start: ``--help`` answers at once; lm-eval, mlflow and matplotlib load only in the commands that
need them.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .baselines import Baseline, BaselineStore
from .errors import BaselineError, ModelregError, ModelregUsageError
from .tracking import SessionRecord

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_DATA = 0, 1, 2, 3
PROG = "pytest-modelreg"

EPILOG = """exit codes: 0 done; 1 found something (diff shows differences, compare finds a
regression, list --unused --check finds unused baselines, sync could not replay a session);
2 usage error; 3 data error (corrupt baseline, no manifest or cache entry, MLflow unreachable).

Defaults come from the project's pytest configuration (pytest.ini, pyproject.toml, tox.ini or
setup.cfg in this folder or above): modelreg_baseline_dir, modelreg_cache_dir,
mlflow_tracking_uri and mlflow_experiment, as the plugin reads them."""


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- the project's configuration -----------------------------------------------------------

def _read_ini(path: Path) -> dict[str, str] | None:
    """The pytest section of one config file, None when the file is not pytest's."""
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    return None
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            if path.name == "pyproject.toml":
                tool = data.get("tool", {}).get("pytest", {})
                section = tool.get("ini_options", tool) if isinstance(tool, dict) else None
                if not tool:
                    return None
            else:
                section = data.get("pytest", {})
            return {k: str(v) for k, v in (section or {}).items() if not isinstance(v, dict)}
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path, encoding="utf-8")
        name = "tool:pytest" if path.name == "setup.cfg" else "pytest"
        if not parser.has_section(name):
            return {} if path.name in ("pytest.ini", ".pytest.ini") else None
        return dict(parser.items(name))
    except (OSError, ValueError, configparser.Error):
        return None


def project_config(start: Path | None = None) -> tuple[Path, dict[str, str]]:
    """(the project's root folder, its pytest ini values), found as pytest finds them."""
    start = (start or Path.cwd()).resolve()
    names = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml",
             "tox.ini", "setup.cfg")
    for folder in (start, *start.parents):
        for name in names:
            path = folder / name
            if path.is_file() and (values := _read_ini(path)) is not None:
                return folder, values
    return start, {}


def default_baseline_dir() -> Path:
    root, ini = project_config()
    if ini.get("modelreg_baseline_dir"):
        return (root / ini["modelreg_baseline_dir"]).resolve()
    if os.environ.get("MODELREG_BASELINE_DIR"):
        return Path(os.environ["MODELREG_BASELINE_DIR"]).resolve()
    return (root / "baselines").resolve()


def default_cache_dir() -> Path:
    root, ini = project_config()
    if ini.get("modelreg_cache_dir"):
        return (root / ini["modelreg_cache_dir"]).expanduser().resolve()
    if os.environ.get("MODELREG_CACHE_DIR"):
        return Path(os.environ["MODELREG_CACHE_DIR"]).expanduser().resolve()
    return (root / ini.get("cache_dir", ".pytest_cache") / "d" / "modelreg").resolve()


def default_tracking_uri() -> str | None:
    _, ini = project_config()
    return ini.get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or None


def default_experiment() -> str:
    _, ini = project_config()
    return (ini.get("mlflow_experiment") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
            or "pytest-modelreg")


# -- output helpers ------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()
          ) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def out(line: str = "") -> None:
    print(line)


def num(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def short_sha(baseline: Baseline) -> str:
    model = baseline.provenance.get("model", {})
    return str(model.get("sha256", ""))[:12] or str(model.get("source") or model.get("endpoint")
                                                    or "-")


# -- baselines: loading --------------------------------------------------------------------

def load_file(path: Path) -> Baseline:
    """A baseline from its JSON file (and the samples file beside it), wherever it lies."""
    return BaselineStore(path.parent).load_file(path)


def resolve_baseline(name_or_file: str, folder: Path) -> Path:
    """A baseline's JSON file: a path to one, or a name in ``folder``."""
    given = Path(name_or_file)
    if given.suffix == ".json" and given.exists():
        return given.resolve()
    path = BaselineStore(folder).json_path(name_or_file)
    if path.exists():
        return path
    names = sorted(BaselineStore(folder).names())
    from .spec import suggest

    known = f"it has: {', '.join(names)}{suggest(name_or_file, names)}" if names else "it is empty"
    raise CliError(EXIT_USAGE, f"no baseline {name_or_file!r} in {folder} ({known}); give a name, "
                   "a .json file, or --dir")


def git(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CliError(EXIT_DATA, f"git is not usable here ({exc}); give --against FILE") from None


def baseline_at_revision(path: Path, revision: str, scratch: Path
                         ) -> tuple[Baseline | None, str]:
    """The baseline as committed at ``revision`` (None when it did not exist there), and its
    ``REV:path`` label."""
    top = git(path.parent, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise CliError(EXIT_DATA, f"{path} is not in a git repository; compare with a file: "
                       "--against OTHER.json")
    root = Path(top.stdout.strip()).resolve()
    relative = path.resolve().relative_to(root)
    if git(root, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").returncode != 0:
        raise CliError(EXIT_USAGE, f"{revision!r} is not a git revision in {root} (nor a file); "
                       "give a commit, branch or tag, or an existing .json file")
    label = f"{revision}:{relative.as_posix()}"
    shown = git(root, "show", label)
    if shown.returncode != 0:
        return None, label
    target = scratch / path.name
    target.write_text(shown.stdout, encoding="utf-8")
    try:
        samples_file = json.loads(shown.stdout).get("samples_file")
    except (ValueError, AttributeError):
        samples_file = None
    if samples_file:
        samples = git(root, "show", f"{revision}:{(relative.parent / samples_file).as_posix()}")
        if samples.returncode == 0:
            (scratch / samples_file).write_text(samples.stdout, encoding="utf-8")
    try:
        return load_file(target), label
    except BaselineError as exc:
        raise BaselineError(f"{exc} (as committed at {revision})") from None


# -- baselines list ------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    folder = args.dir
    files = BaselineStore(folder).names()
    entries: list[dict[str, Any]] = []
    broken: list[str] = []
    for name, path in sorted(files.items()):
        try:
            baseline = load_file(path)
        except BaselineError as exc:
            broken.append(str(exc))
            entries.append({"name": name, "file": str(path), "error": str(exc)})
            continue
        entries.append(describe_baseline(baseline, path))
    unused: list[str] | None = None
    manifest_note = ""
    if args.unused or args.check:
        unused, manifest_note = unused_names(args.cache_dir, folder, set(files))
    if args.json:
        shown = [e for e in entries if unused is None or e["name"] in unused]
        out(json.dumps({"baseline_dir": str(folder), "baselines": shown, "unused": unused,
                        "manifest": manifest_note}, indent=2, default=str))
    elif not files:
        out(f"no baselines in {folder} (record them with pytest --modelreg-update)")
    else:
        shown = [e for e in entries if unused is None or e["name"] in unused]
        if unused is not None:
            out(manifest_note)
        if shown:
            rows = [[e["name"], e.get("task", "?"), str(e.get("n_samples", "?")),
                     "none" if e.get("samples") is None else str(e.get("samples", "?")),
                     " ".join(f"{m}={v['value']:.4f}" for m, v in e.get("metrics", {}).items())
                     if "error" not in e else "(corrupt)",
                     e.get("recorded_at") or "-", e.get("model_sha") or "-"] for e in shown]
            for line in table(("name", "task", "n", "samples", "metrics", "recorded_at", "model"),
                              rows, numeric=(2, 3)):
                out(line)
    for message in broken:
        print(f"{PROG} baselines list: {message}", file=sys.stderr)
    if broken:
        return EXIT_DATA
    return EXIT_FOUND if args.check and unused else EXIT_OK


def describe_baseline(baseline: Baseline, path: Path) -> dict[str, Any]:
    return {"name": baseline.name, "task": baseline.task, "file": str(path),
            "n_samples": baseline.n_samples,
            "samples": None if baseline.samples is None else len(baseline.samples),
            "metrics": {m: {"value": v.get("value"), "stderr": v.get("stderr")}
                        for m, v in sorted(baseline.metrics.items())},
            "recorded_at": baseline.provenance.get("recorded_at"),
            "model_sha": short_sha(baseline),
            "model_sha256": baseline.provenance.get("model", {}).get("sha256")}


def unused_names(cache_dir: Path, folder: Path, names: set[str]) -> tuple[list[str], str]:
    """Baselines the last full session did not use, and a sentence about that session."""
    from .manifest import manifest_path, read_manifest

    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise CliError(EXIT_DATA, f"no session manifest at {manifest_path(cache_dir)}: no session "
                       "that evaluated something has run with this cache; run the whole suite "
                       "once (plain pytest), or point --cache-dir at the cache it used")
    full = manifest.get("last_full") or (manifest if manifest.get("full_session") else None)
    if not full:
        raise CliError(EXIT_DATA, f"no full session has run with this cache (the last one, "
                       f"{_when(manifest.get('finished_at'))}, ran only some tests: paths, -k, -m, "
                       "--lf or deselection), so nothing tells which baselines are unused; run "
                       "the whole suite once (plain pytest), then ask again")
    finished = _when(full.get("finished_at"))
    note = ""
    session_dir = full.get("baseline_dir")
    if session_dir and Path(session_dir).resolve() != folder.resolve():
        note = f" (note: that session's baselines were in {session_dir}, not {folder})"
    used = set(full.get("used_baselines", []))
    unused = sorted(names - used)
    if unused:
        sentence = (f"{len(unused)} of {len(names)} baseline(s) in {folder} were not used by the "
                    f"last full session ({finished}){note}:")
    else:
        sentence = (f"all {len(names)} baseline(s) in {folder} were used by the last full session "
                    f"({finished}){note}")
    return unused, sentence


def _when(timestamp: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(timestamp)))
    except (TypeError, ValueError):
        return "at an unknown time"


# -- baselines show ------------------------------------------------------------------------

def cmd_show(args: argparse.Namespace) -> int:
    path = resolve_baseline(args.name, args.dir)
    baseline = load_file(path)
    if args.json:
        data = describe_baseline(baseline, path)
        data.update(fingerprint=baseline.fingerprint, settings=baseline.settings,
                    provenance=baseline.provenance, samples_summary=samples_summary(baseline))
        out(json.dumps(data, indent=2, default=str))
        return EXIT_OK
    out(f"baseline {baseline.name} (task {baseline.task}): {path}")
    out(f"  {baseline.n_samples} docs evaluated; recorded {baseline.provenance.get('recorded_at', '?')}")
    out("")
    rows = [[m, num(v.get("value")), num(v.get("stderr")),
             "higher" if v.get("higher_is_better", True) else "lower"]
            for m, v in sorted(baseline.metrics.items())]
    for line in table(("metric", "value", "stderr", "better"), rows, numeric=(1, 2)):
        out("  " + line)
    out("")
    summary = samples_summary(baseline)
    if summary is None:
        out("per-sample outcomes: none (aggregates only: the plugin compares unpaired)")
    else:
        out(f"per-sample outcomes: {summary['docs']} docs")
        for metric, info in summary["metrics"].items():
            ones = f", {info['ones']} at 1 / {info['zeros']} at 0" if info.get("binary") else ""
            out(f"  {metric}: mean {info['mean']:.4f} over {info['count']} docs{ones}")
        for sample in (baseline.samples or [])[: args.docs]:
            values = " ".join(f"{k}={v:g}" for k, v in sorted(sample.values.items()))
            out(f"  doc {sample.doc_id}: {values}  {sample.prompt!r}")
        if baseline.samples and len(baseline.samples) > args.docs:
            out(f"  ... {len(baseline.samples) - args.docs} more (--docs N)")
    out("")
    out("fingerprint (must match for a comparison):")
    for key, value in baseline.fingerprint.items():
        out(f"  {key}: {json.dumps(value, default=str)}")
    out("settings:")
    for key, value in sorted(baseline.settings.items()):
        out(f"  {key}: {value}")
    out("provenance:")
    for key, value in baseline.provenance.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={v}" for k, v in value.items() if k != "files")
            out(f"  {key}: {inner}")
        else:
            out(f"  {key}: {value}")
    return EXIT_OK


def samples_summary(baseline: Baseline) -> dict[str, Any] | None:
    if baseline.samples is None:
        return None
    metrics: dict[str, dict[str, Any]] = {}
    for sample in baseline.samples:
        for metric, value in sample.values.items():
            info = metrics.setdefault(metric, {"count": 0, "sum": 0.0, "ones": 0, "zeros": 0,
                                               "binary": True})
            info["count"] += 1
            info["sum"] += value
            info["ones"] += value == 1.0
            info["zeros"] += value == 0.0
            info["binary"] = info["binary"] and value in (0.0, 1.0)
    for info in metrics.values():
        info["mean"] = info.pop("sum") / info["count"]
    return {"docs": len(baseline.samples), "metrics": dict(sorted(metrics.items()))}


# -- baselines diff ------------------------------------------------------------------------

def cmd_diff(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="modelreg-diff-") as scratch:
        if args.other is not None:
            if args.against is not None:
                raise CliError(EXIT_USAGE, "give two baselines or --against, not both")
            old_path = resolve_baseline(args.name, args.dir)
            new_path = resolve_baseline(args.other, args.dir)
            old, new = load_file(old_path), load_file(new_path)
            old_label, new_label = str(old_path), str(new_path)
        else:
            new_path = resolve_baseline(args.name, args.dir)
            new, new_label = load_file(new_path), str(new_path)
            against = args.against or "HEAD"
            if Path(against).is_file():
                old_label = against
                old = load_file(Path(against))
            else:
                found, old_label = baseline_at_revision(new_path, against, Path(scratch))
                if found is None:
                    out(f"{new.name}: {old_label} does not exist (a new baseline): {new_label}")
                    return EXIT_FOUND
                old = found
        return print_diff(old, new, old_label, new_label, args.alpha, args.docs)


def print_diff(old: Baseline, new: Baseline, old_label: str, new_label: str, alpha: float,
               shown: int) -> int:
    from .fingerprint import diff_fingerprints
    from .session import doc_key

    out(f"--- {old_label}  ({old.provenance.get('recorded_at', '?')}, model {short_sha(old)})")
    out(f"+++ {new_label}  ({new.provenance.get('recorded_at', '?')}, model {short_sha(new)})")
    different = False
    if old.task != new.task or old.name != new.name:
        out(f"name/task: {old.name}/{old.task} -> {new.name}/{new.task}")
        different = True
    mismatch = diff_fingerprints(old.fingerprint, new.fingerprint)
    if mismatch:
        different = True
        out("fingerprint differs (a plugin run would call these incomparable): "
            + "; ".join(mismatch))
    paired = old.samples is not None and new.samples is not None
    old_docs = {doc_key(s): s for s in old.samples or []}
    new_docs = {doc_key(s): s for s in new.samples or []}
    rows = []
    flips: list[tuple[str, list[str], list[str]]] = []
    for metric in sorted(set(old.metrics) | set(new.metrics)):
        before, after = old.metrics.get(metric, {}), new.metrics.get(metric, {})
        value_a, value_b = before.get("value"), after.get("value")
        if value_a != value_b or before.get("stderr") != after.get("stderr"):
            different = True
        delta = None if value_a is None or value_b is None else value_b - value_a
        higher = bool(after.get("higher_is_better", before.get("higher_is_better", True)))
        comparison = "-"
        if paired and value_a is not None and value_b is not None:
            comparison, worse, better = paired_comparison(old_docs, new_docs, metric, higher, alpha)
            if worse or better:
                flips.append((metric, worse, better))
        elif value_a is not None and value_b is not None:
            comparison = "no per-sample outcomes on both sides: not paired"
        rows.append([metric, num(value_a), num(value_b), num(delta, sign=True), comparison])
    out("")
    for line in table(("metric", "old", "new", "delta", "paired comparison"), rows,
                      numeric=(1, 2, 3)):
        out(line)
    if paired:
        only_old = len(set(old_docs) - set(new_docs))
        only_new = len(set(new_docs) - set(old_docs))
        if only_old or only_new:
            different = True
            out(f"docs: {only_old} only in old, {only_new} only in new (joined on doc, prompt "
                "and target hashes)")
    for metric, worse, better in flips:
        different = True
        out("")
        out(f"{metric}: worse on {len(worse)} doc(s), better on {len(better)}")
        for label, docs in (("worse", worse), ("better", better)):
            for text in docs[:shown]:
                out(f"  {label}: {text}")
            if len(docs) > shown:
                out(f"  {label}: ... {len(docs) - shown} more (--docs N)")
    out("")
    out("different" if different else "same results" + (
        " (re-recorded)" if old.provenance != new.provenance else ""))
    return EXIT_FOUND if different else EXIT_OK


def paired_comparison(old_docs: dict[str, Any], new_docs: dict[str, Any], metric: str,
                      higher: bool, alpha: float) -> tuple[str, list[str], list[str]]:
    from .stats import compare_samples

    base = {k: s.values[metric] for k, s in old_docs.items() if metric in s.values}
    cand = {k: s.values[metric] for k, s in new_docs.items() if metric in s.values}
    worse, better = [], []
    for key in base:
        if key in cand and cand[key] != base[key]:
            sample = new_docs[key]
            text = f"doc {sample.doc_id} ({sample.prompt!r}): {base[key]:g} -> {cand[key]:g}"
            got_worse = cand[key] < base[key] if higher else cand[key] > base[key]
            (worse if got_worse else better).append(text)
    if not base or not cand:
        return "no per-sample values (a corpus metric?)", worse, better
    try:
        comparison = compare_samples(base, cand, higher_is_better=higher, alpha=alpha)
    except ValueError as exc:
        return f"not compared ({exc})", worse, better
    return comparison.summary(), worse, better


# -- baselines accept ----------------------------------------------------------------------

def cmd_accept(args: argparse.Namespace) -> int:
    from .cache import ResultCache
    from .manifest import manifest_path, read_manifest
    from .session import baseline_from_result
    from .spec import spec_from_record

    manifest = read_manifest(args.cache_dir)
    if manifest is None:
        raise CliError(EXIT_DATA, f"no session manifest at {manifest_path(args.cache_dir)}; run "
                       "pytest first (its results are what gets accepted), or point --cache-dir "
                       "at the cache the session used (modelreg_cache_dir)")
    entries = manifest.get("evaluations", [])
    chosen = {s: _select(entries, s) for s in args.select}
    selected = [e for i, e in enumerate(entries)
                if not args.select or any(i in found for found in chosen.values())]
    unmatched = [s for s, found in chosen.items() if not found]
    if unmatched or not selected:
        listed = ", ".join(f"{e.get('baseline')} ({e.get('nodeid')})" for e in entries) or "nothing"
        raise CliError(EXIT_USAGE, f"no evaluation of the last session matches "
                       f"{', '.join(map(repr, unmatched)) or 'anything'}; it evaluated: {listed}")
    names = [e["baseline"] for e in selected]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CliError(EXIT_USAGE, f"several evaluations of the last session write baseline "
                       f"{', '.join(twice)}; select one by its test node id")
    folder = args.dir or Path(manifest.get("baseline_dir") or default_baseline_dir())
    store = BaselineStore(folder)
    cache = ResultCache(args.cache_dir)
    failed = 0
    finished = _when(manifest.get("finished_at"))
    for entry in selected:
        where = f"{entry['baseline']} ({entry.get('nodeid')})"
        key = entry.get("cache_key")
        if not key:
            failed += 1
            print(f"{PROG} baselines accept: {where} has no result cache entry: the session ran "
                  "with --modelreg-no-cache, or the model has no content identity (a hub id at a "
                  "moving revision, an endpoint); record it with pytest --modelreg-update "
                  f"{entry.get('nodeid')}", file=sys.stderr)
            continue
        result = cache.load(key, spec_from_record(entry["spec"]))
        if result is None:
            failed += 1
            print(f"{PROG} baselines accept: {where}: its result is no longer in the cache "
                  f"{args.cache_dir} (cleared with --cache-clear, or damaged); record it with "
                  f"pytest --modelreg-update {entry.get('nodeid')}", file=sys.stderr)
            continue
        baseline = baseline_from_result(result)
        if entry["spec"].get("evaluator_name"):
            baseline.settings["evaluator"] = entry["spec"]["evaluator_name"]
        baseline.provenance["accepted"] = {"by": f"{PROG} baselines accept",
                                           "from_session_finished_at": finished,
                                           "nodeid": entry.get("nodeid"),
                                           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            previous = store.load(baseline.name)
        except BaselineError:
            previous = None  # a damaged file is replaced: that is what accepting means
        changes = " ".join(
            f"{m} {num(previous.value(m)) if previous else 'new'} -> {num(v['value'])}"
            for m, v in baseline.metrics.items())
        if args.dry_run:
            out(f"would accept {where}: {changes} into {store.json_path(baseline.name)}")
            continue
        path = store.save(baseline)
        out(f"accepted {where}: {changes} -> {path}")
    if failed:
        return EXIT_DATA
    if not args.dry_run:
        out(f"{len(selected)} baseline(s) accepted from the session of {finished}, without "
            "evaluating again; review with: git diff, or pytest-modelreg baselines diff NAME")
    return EXIT_OK


def _select(entries: Sequence[dict[str, Any]], selector: str) -> set[int]:
    """Entries a selector names: exactly (node id, task or baseline name) where any does,
    else every node id containing it."""
    exact = {i for i, e in enumerate(entries)
             if selector in (e.get("nodeid"), e.get("task"), e.get("baseline"))}
    return exact or {i for i, e in enumerate(entries) if selector in str(e.get("nodeid") or "")}


# -- import --------------------------------------------------------------------------------

def cmd_import(args: argparse.Namespace) -> int:
    from .importer import import_results

    if args.samples and args.no_samples:
        raise CliError(EXIT_USAGE, "give --samples or --no-samples, not both")
    imported = import_results(args.results, task=args.task, name=args.name,
                              samples_files=args.samples or None,
                              with_samples=not args.no_samples)
    baseline = imported.baseline
    store = BaselineStore(args.dir)
    target = store.json_path(baseline.name)
    if target.exists() and not args.force:
        raise CliError(EXIT_USAGE, f"baseline {baseline.name} exists ({target}); pass --force to "
                       "replace it, or --name to import under another name")
    path = store.save(baseline)
    values = " ".join(f"{m}={v['value']:.4f}" for m, v in baseline.metrics.items())
    out(f"imported {baseline.task} from {args.results} as baseline {baseline.name}: {values} "
        f"({baseline.n_samples} docs) -> {path}")
    if imported.samples_files:
        out(f"per-sample outcomes of {len(baseline.samples or [])} docs from "
            f"{', '.join(p.name for p in imported.samples_files)}: plugin runs on the same task "
            "and settings compare paired, doc by doc")
    for note in imported.notes:
        out(f"note: {note}")
    return EXIT_OK


# -- history and compare -------------------------------------------------------------------

def cmd_history(args: argparse.Namespace) -> int:
    from .history import (
        TrackingError,
        drift,
        logged_metrics,
        metric_history,
        plot_history,
        points_table,
    )

    task, sep, metric = args.metric.rpartition("/")
    if not sep or not task or not metric:
        raise CliError(EXIT_USAGE, f"{args.metric!r} is not TASK/METRIC; e.g. piqa_local/acc_norm")
    uri, experiment = args.tracking_uri or default_tracking_uri(), args.experiment
    points = metric_history(uri, experiment, task, metric, args.last)
    if not points:
        known = logged_metrics(uri, experiment)
        from .spec import suggest

        raise TrackingError(f"no session in experiment {experiment!r} logged {args.metric}; "
                            f"logged there: {', '.join(known) or 'nothing'}"
                            f"{suggest(args.metric, known)}")
    if args.json:
        out(json.dumps([p.to_dict() for p in points], indent=2))
    else:
        out(f"{args.metric} in the last {len(points)} session(s) of experiment {experiment!r}:")
        for line in table(("time", "run", "model", "value", "stderr", "verdict"),
                          points_table(points), numeric=(3, 4)):
            out(line)
        found = drift(points[:-1], points[-1].value, args.window) if len(points) > 1 else None
        if found is not None:
            median, delta = found
            count = min(args.window, len(points) - 1)
            out(f"drift: the latest value {points[-1].value:.4f} is {delta:+.4f} from the median "
                f"{median:.4f} of the {count} session(s) before it")
    if args.plot:
        plot_history(points, args.plot, title=f"{args.metric} ({experiment})")
        out(f"plot: {args.plot}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from .history import DROP_Z, compare_runs

    a, b, rows = compare_runs(args.tracking_uri or default_tracking_uri(), args.run_a, args.run_b)
    if args.json:
        out(json.dumps({"a": _run_dict(a), "b": _run_dict(b), "metrics": [
            {"key": r.key, "a": r.a, "b": r.b, "delta": r.delta, "a_stderr": r.a_stderr,
             "b_stderr": r.b_stderr, "a_verdict": r.a_verdict, "b_verdict": r.b_verdict,
             "higher_is_better": r.higher_is_better, "regressed": r.regressed,
             "reasons": r.reasons} for r in rows]}, indent=2, default=str))
    else:
        for label, run in (("A", a), ("B", b)):
            out(f"{label}: {run.run_id} {run.run_name!r} {run.time.astimezone():%Y-%m-%d %H:%M} "
                f"{run.status}; model {(run.model_sha or '')[:12] or '-'} "
                f"({run.params.get('model_args', '')}); git "
                f"{run.tags.get('mlflow.source.git.commit', '-')[:12]}")
        out("")
        cells = [[r.key, num(r.a), num(r.b), num(r.delta, sign=True),
                  "-" if r.bound is None else f"{r.bound:.4f}", r.a_verdict or "-",
                  r.b_verdict or "-", "REGRESSED: " + "; ".join(r.reasons) if r.regressed
                  else ("only in A" if r.b is None else "only in B" if r.a is None else "ok")]
                 for r in rows]
        for line in table(("task/metric", "A", "B", "delta", f"{DROP_Z:g}x se", "verdict A",
                           "verdict B", "B vs A"), cells, numeric=(1, 2, 3, 4)):
            out(line)
        regressed = [r.key for r in rows if r.regressed]
        out("")
        out(f"B regressed against A on {len(regressed)} metric(s): {', '.join(regressed)}"
            if regressed else "B did not regress against A on any metric")
    return EXIT_FOUND if any(r.regressed for r in rows) else EXIT_OK


def _run_dict(run: Any) -> dict[str, Any]:
    return {"run_id": run.run_id, "run_name": run.run_name, "time": run.time.isoformat(),
            "status": run.status, "model_sha": run.model_sha,
            "model_args": run.params.get("model_args")}


# -- sync ----------------------------------------------------------------------------------

def sync(spool_dir: Path, tracking_uri: str | None, experiment: str | None) -> int:
    """Replay spooled sessions into MLflow; a session already there is completed, not copied."""
    from .tracking.mlflow_tracker import MlflowTracker

    files = sorted(spool_dir.glob("*/session.json")) if spool_dir.is_dir() else []
    if not files:
        print(f"pytest-modelreg sync: nothing to replay in {spool_dir}")
        return 0
    failures = 0
    for path in files:
        try:
            record = SessionRecord.from_json(path.read_text(encoding="utf-8"))
            tracker: Any
            if record.backend == "wandb":  # back where it was meant to go
                from .tracking.wandb_tracker import WandbTracker

                tracker = WandbTracker(experiment or record.experiment, record.parent_run_id,
                                       resume=True)
            else:
                tracker = MlflowTracker(tracking_uri or record.tracking_uri,
                                        experiment or record.experiment, record.parent_run_id,
                                        resume=True)
            tracker.start(record)
            for test in record.tests:
                tracker.log_test(record, test)
            tracker.finish(record)
        except Exception as exc:
            failures += 1
            print(f"pytest-modelreg sync: {path}: {type(exc).__name__}: {exc}; it stays spooled",
                  file=sys.stderr)
            continue
        shutil.rmtree(path.parent)
        print(f"pytest-modelreg sync: session {record.session_id} ({len(record.tests)} tests) "
              f"-> {'W&B' if record.backend == 'wandb' else 'MLflow'} run {tracker.run_id} at "
              f"{tracker.tracking_uri}")
    return 1 if failures else 0


def cmd_sync(args: argparse.Namespace) -> int:
    return sync(args.spool_dir, args.tracking_uri, args.experiment)


# -- the parser ----------------------------------------------------------------------------

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


class _Formatter(argparse.HelpFormatter):
    """Paragraphs (separated by blank lines) reflowed to the terminal's width."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return "\n\n".join(textwrap.fill(" ".join(part.split()), width, initial_indent=indent,
                                         subsequent_indent=indent)
                           for part in text.split("\n\n"))


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the command and its --help, exit code 2."""

    def error(self, message: str) -> Any:
        raise CliError(EXIT_USAGE, f"{self.prog}: {message}; see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    formatter = _Formatter
    parser = _Parser(prog=PROG, formatter_class=formatter, epilog=EPILOG,
                     description="Tools around pytest-modelreg: baselines, lm-eval imports, "
                     "MLflow history.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    def dir_option(sub: argparse.ArgumentParser, default: bool = True) -> None:
        sub.add_argument("--dir", type=Path, default=None,
                         help="baseline folder (default: modelreg_baseline_dir of the project's "
                         "pytest config, else ./baselines)" if default else
                         "baseline folder to write (default: the one the session used)")

    def cache_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--cache-dir", type=Path, default=None,
                         help="the plugin's result cache, which holds the last session's "
                         "manifest (default: modelreg_cache_dir, else .pytest_cache/d/modelreg "
                         "under the project's root)")

    base = commands.add_parser("baselines", help="list, show, diff and accept baselines",
                               formatter_class=formatter, epilog=EPILOG,
                               description="Inspect and manage the recorded baselines.")
    actions = base.add_subparsers(dest="action", required=True, metavar="ACTION",
                                  parser_class=_Parser)

    listing = actions.add_parser(
        "list", help="every baseline: task, metrics, docs, when, which model",
        formatter_class=formatter, epilog=EPILOG,
        description="List every baseline: name, task, docs, per-sample outcomes, metric values, "
        "when it was recorded and the model's weights hash. --unused lists only those the last "
        "full session (plain pytest, no selection) did not use.")
    dir_option(listing)
    cache_option(listing)
    listing.add_argument("--unused", action="store_true",
                         help="only baselines the last full session did not use")
    listing.add_argument("--check", action="store_true",
                         help="exit 1 when a baseline is unused (implies --unused; for CI)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_list)

    show = actions.add_parser(
        "show", help="one baseline in full", formatter_class=formatter, epilog=EPILOG,
        description="One baseline: metrics with stderr, per-sample summary, fingerprint, "
        "settings and provenance.")
    show.add_argument("name", metavar="NAME", help="baseline name, or a path to its .json")
    dir_option(show)
    show.add_argument("--docs", type=_positive, default=5, help="docs to list (default 5)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=cmd_show)

    diff = actions.add_parser(
        "diff", help="what changed: metrics, fingerprint, paired test, flipped docs",
        formatter_class=formatter, epilog=EPILOG,
        description="Compare a baseline with its committed version (git show REV:path, default "
        "HEAD) or another file, or two baselines (diff OLD NEW): metric changes, fingerprint "
        "differences and, where both sides have per-sample outcomes, the paired comparison "
        "(stats.compare_samples) and the docs that flipped. Exit 1 when anything differs.")
    diff.add_argument("name", metavar="NAME", help="baseline name or .json (the new side; with "
                      "OTHER: the old side)")
    diff.add_argument("other", metavar="OTHER", nargs="?", help="a second baseline: diff NAME "
                      "(old) against OTHER (new)")
    diff.add_argument("--against", metavar="FILE_OR_REV",
                      help="the old side: a .json file or a git revision (default HEAD)")
    dir_option(diff)
    diff.add_argument("--alpha", type=_alpha, default=0.01,
                      help="one-sided level of the paired comparison (default 0.01)")
    diff.add_argument("--docs", type=_positive, default=10,
                      help="flipped docs to list per metric and direction (default 10)")
    diff.set_defaults(handler=cmd_diff)

    accept = actions.add_parser(
        "accept", help="record the last session's results as baselines, without re-running",
        formatter_class=formatter, epilog=EPILOG,
        description="Accept what the last pytest session measured: read its manifest, load "
        "each evaluation's result from the result cache and write it as the baseline (atomic, "
        "locked). No model is loaded. Select by test node id (substring), task or baseline "
        "name; nothing selected = every evaluation of the session.")
    accept.add_argument("select", nargs="*", metavar="TEST_OR_TASK",
                        help="node id substring, task or baseline name")
    dir_option(accept, default=False)
    cache_option(accept)
    accept.add_argument("--dry-run", action="store_true", help="show what would be written")
    accept.set_defaults(handler=cmd_accept)

    imp = commands.add_parser(
        "import", help="an lm-eval results file (and its samples) as a baseline",
        formatter_class=formatter, epilog=EPILOG,
        description="Import the results_*.json written by lm_eval --output_path OUT "
        "--log_samples, with the samples_<task>_*.jsonl beside it, as a baseline: the same "
        "metrics, stderr, per-sample outcomes and fingerprint the plugin records, so a plugin "
        "run on the same task, limit and settings compares paired, doc by doc. Without samples "
        "the baseline holds aggregates only (compared unpaired).")
    imp.add_argument("results", type=Path, metavar="RESULTS_JSON")
    imp.add_argument("--samples", type=Path, nargs="+", metavar="SAMPLES_JSONL",
                     help="the samples files (default: found beside RESULTS_JSON)")
    imp.add_argument("--no-samples", action="store_true",
                     help="import the aggregates only")
    imp.add_argument("--task", help="the task to import when the file holds several")
    imp.add_argument("--name", help="the baseline's name (default: the task's, as the plugin "
                     "names it)")
    dir_option(imp)
    imp.add_argument("--force", action="store_true", help="replace an existing baseline")
    imp.set_defaults(handler=cmd_import)

    history = commands.add_parser(
        "history", help="a metric over recent sessions in MLflow (table, drift, plot)",
        formatter_class=formatter, epilog=EPILOG,
        description="The metric TASK/METRIC in the session runs of an MLflow experiment: time, "
        "run, model hash, value, stderr and verdict per session, the latest value against the "
        "median of the sessions before it (slow drift), and with --plot a trend PNG.")
    history.add_argument("metric", metavar="TASK/METRIC", help="e.g. piqa_local/acc_norm")
    history.add_argument("--experiment", default=None,
                         help="MLflow experiment (default: mlflow_experiment, "
                         "$MLFLOW_EXPERIMENT_NAME, else pytest-modelreg)")
    history.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                         "mlflow_tracking_uri, $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    history.add_argument("--last", type=_positive, default=20,
                         help="sessions to show (default 20)")
    history.add_argument("--window", type=_positive, default=10,
                         help="sessions in the drift median (default 10)")
    history.add_argument("--plot", type=Path, metavar="PNG", help="write a trend plot")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.set_defaults(handler=cmd_history)

    compare = commands.add_parser(
        "compare", help="two session runs side by side; exit 1 when B regressed against A",
        formatter_class=formatter, epilog=EPILOG,
        description="Two session runs of MLflow, metric by metric: values, delta, and each "
        "run's recorded verdict. B counts as regressed against A on a metric when B's own "
        "verdict there is 'regressed', or when B is worse than A by more than 2 combined "
        "standard errors, 2*sqrt(se_A^2 + se_B^2) (unpaired; skipped where a side has no "
        "stderr). Lower is better only for perplexity, bits_per_byte, ter, wer, cer, loss and "
        "brier_score. Exit 1 when B regressed on any metric.")
    compare.add_argument("run_a", metavar="RUN_A", help="the earlier session run's id")
    compare.add_argument("run_b", metavar="RUN_B", help="the later session run's id")
    compare.add_argument("--tracking-uri", help="MLflow tracking URI (default as for history)")
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    compare.set_defaults(handler=cmd_compare)

    replay = commands.add_parser(
        "sync", help="replay sessions spooled while MLflow was unreachable (idempotent: run it "
        "as often as you like)", formatter_class=formatter, epilog=EPILOG,
        description="Replay the sessions spooled while MLflow was unreachable. A session already "
        "in MLflow is completed, not copied. Exit 1 when a session could not be replayed (it "
        "stays spooled).")
    replay.add_argument("--spool-dir", type=Path, default=Path(".modelreg-spool"),
                        help="folder of spooled sessions (default: .modelreg-spool)")
    replay.add_argument("--tracking-uri", help="replay to this tracking URI instead of the "
                        "session's own")
    replay.add_argument("--experiment", help="replay into this experiment instead of the "
                        "session's own")
    replay.set_defaults(handler=cmd_sync)
    return parser


def _fill_defaults(args: argparse.Namespace) -> None:
    if getattr(args, "dir", "absent") is None and args.handler is not cmd_accept:
        args.dir = default_baseline_dir()
    if getattr(args, "cache_dir", "absent") is None:
        args.cache_dir = default_cache_dir()
    if args.handler is cmd_history and args.experiment is None:
        args.experiment = default_experiment()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CliError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        _fill_defaults(args)
        return handler(args)
    except CliError as exc:
        print(f"{PROG} {command}: {exc}", file=sys.stderr)
        return exc.code
    except ModelregUsageError as exc:
        print(f"{PROG} {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelregError as exc:  # BaselineError, TrackingError, EvaluationError
        print(f"{PROG} {command}: {exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # piped into head: stop quietly, as a killed-by-SIGPIPE tool does
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
