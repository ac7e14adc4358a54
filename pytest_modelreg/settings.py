"""Session settings: one frozen object built from CLI, ini, environment and defaults.

Precedence: command line beats ini file beats environment (``MODELREG_<NAME>``) beats default.
This module never sees ``pytest.Config``: the plugin hands it two lookup functions.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelregUsageError


@dataclass(frozen=True)
class Option:
    """One setting: a ``--modelreg-*`` flag and an ini key of the same name."""

    name: str  # ini key, e.g. "modelreg_model"; the flag is --modelreg-model
    help: str
    default: str | None = None
    is_flag: bool = False
    env_name: str | None = None  # default: the ini key in capitals
    ini: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.env_name or self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("modelreg_model", "lm-eval model type (hf, vllm, local-completions, ...)", "hf"),
    Option("modelreg_model_args", "lm-eval model_args, e.g. pretrained=./ckpt,dtype=bfloat16; "
           "${VAR} is taken from the environment", ""),
    Option("modelreg_include_path", "folder(s) of lm-eval task YAMLs, separated by os.pathsep "
           "or newlines in the ini file"),
    Option("modelreg_baseline_dir", "folder of the recorded baselines", "baselines"),
    Option("modelreg_limit", "evaluate only the first N docs of each task (or a fraction < 1)"),
    Option("modelreg_device", "auto (CUDA when present), cpu, cuda or cuda:N", "auto"),
    Option("modelreg_batch_size", "batch size passed to lm-eval (N, auto or auto:N)", "1"),
    Option("modelreg_seed", "one seed for lm-eval's Python, numpy, torch and few-shot RNGs "
           "(default: lm-eval's own seeds)"),
    Option("modelreg_update", "record missing baselines and refresh those of the evaluations "
           "that ran", is_flag=True),
    Option("modelreg_record_missing", "record a baseline where none exists yet instead of "
           "failing (existing baselines are still compared, never refreshed)", is_flag=True),
    Option("modelreg_alpha", "one-sided level of the paired test against the baseline", "0.01"),
    Option("modelreg_correction", "multiple-comparison correction across the session's "
           "baseline checks: holm or none", "holm"),
    Option("modelreg_strict", "an inconclusive comparison (too few docs to tell) fails the test "
           "instead of warning (for release gates)", is_flag=True),
    Option("mlflow_tracking_uri", "MLflow tracking URI (default: MLflow's own, a local "
           "mlflow.db)", env_name="MLFLOW_TRACKING_URI"),
    Option("mlflow_experiment", "MLflow experiment of the session runs", "pytest-modelreg",
           env_name="MLFLOW_EXPERIMENT_NAME"),
    Option("mlflow_run_name", "name of the session's MLflow run (default: time, model, outcome)",
           ini=False),
    Option("mlflow_parent_run_id", "nest the session run under this existing MLflow run",
           env_name="MLFLOW_RUN_ID", ini=False),
    Option("modelreg_tracker", "where sessions are tracked: mlflow, or wandb (pip install "
           "'pytest-modelreg[wandb]'; the experiment is the W&B project)", "mlflow"),
    Option("no_mlflow", "do not log the session to MLflow", is_flag=True, env_name="MODELREG_NO_MLFLOW"),
    Option("mlflow_strict", "a tracking failure is a session error instead of a warning",
           is_flag=True),
    Option("modelreg_cache_dir", "folder of the persistent result cache, keyed by the model's "
           "identity and the evaluation (default: pytest's cache, .pytest_cache/d/modelreg)"),
    Option("modelreg_no_cache", "evaluate even when the result cache holds this model's result "
           "for the same evaluation", is_flag=True),
    Option("modelreg_cache_endpoints", "also cache results of API models (local-completions, "
           "...), keyed by endpoint and model name: only where a deployed name never serves new "
           "weights", is_flag=True),
    Option("modelreg_gpus_per_worker", "under pytest-xdist, GPUs given to each worker through "
           "CUDA_VISIBLE_DEVICES (0: leave CUDA_VISIBLE_DEVICES alone)", "1"),
    Option("modelreg_xdist_group", "group tests of one model onto one xdist worker (with --dist "
           "loadgroup, each model loads once): model or none", "model"),
    Option("modelreg_json", "write the session's report (verdicts, evaluations, flipped docs) "
           "as JSON to this file"),
    Option("modelreg_markdown", "write the session's summary as markdown to this file (also "
           "appended to $GITHUB_STEP_SUMMARY when set)"),
    Option("modelreg_drift_window", "compare each checked metric with the median of the last N "
           "sessions in MLflow (slow drift) and log its trend plot; 0: off", "0"),
    Option("modelreg_spool_dir", "where sessions are spooled when the tracking server cannot be "
           "reached (replay with: pytest-modelreg sync)", ".modelreg-spool"),
)

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
SEED_RANGE = 2**32  # numpy's seeding (one of lm-eval's four seeds) accepts 0 .. 2**32 - 1


def shown(value: object) -> str:
    """``value`` for a one-line message: its repr, shortened. Never raises: a user's object's
    repr may, and so does an int of more than 4300 digits."""
    try:
        text = _SHOWN.repr(value)
    except Exception:  # any failure of a user's __repr__
        text = f"<a {type(value).__name__}>"
    return text.replace("\n", "\\n").replace("\r", "\\r")


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_BATCH = re.compile(r"^(\d+|auto(:\d+)?)$")


@dataclass(frozen=True)
class TrackingSettings:
    enabled: bool = True
    tracking_uri: str | None = None  # None: MLflow's own default
    experiment: str = "pytest-modelreg"
    run_name: str | None = None
    parent_run_id: str | None = None
    strict: bool = False
    spool_dir: Path = Path(".modelreg-spool")
    backend: str = "mlflow"  # or "wandb"


@dataclass(frozen=True)
class Settings:
    model: str = "hf"
    model_args: str = ""
    include_paths: tuple[Path, ...] = ()
    baseline_dir: Path = Path("baselines")
    limit: int | float | None = None
    device: str = "auto"
    batch_size: str = "1"
    seed: int | None = None
    update: bool = False
    record_missing: bool = False
    alpha: float = 0.01
    correction: str = "holm"
    strict: bool = False
    tracking: TrackingSettings = field(default_factory=lambda: TrackingSettings())
    drift_window: int = 0
    json_report: Path | None = None
    markdown_report: Path | None = None
    cache_dir: Path | None = None  # None: pytest's cache folder (the plugin resolves it)
    cache: bool = True
    cache_endpoints: bool = False
    gpus_per_worker: int = 1
    xdist_group: str = "model"
    rootdir: Path = Path(".")
    configured: bool = False  # any option set: the project uses the plugin (header lines)


Lookup = Callable[[str], object]


def build_settings(
    cli: Lookup, ini: Lookup, *, env: Mapping[str, str], rootdir: Path, inidir: Path | None = None
) -> Settings:
    """Resolve every option (CLI > ini > env > default) and validate it.

    ``cli(name)`` returns None when the flag was not given; ``ini(name)`` returns "" or None when
    the key is absent. Relative paths from the ini file resolve against its folder, others
    against the current directory.
    """
    base_for_ini = inidir or rootdir

    def pick(opt: Option) -> tuple[object, str, Path]:
        value = cli(opt.name)
        if value not in (None, False, ""):
            return value, opt.flag, Path.cwd()
        value = ini(opt.name) if opt.ini else None
        if opt.is_flag and value is False:
            value = None  # a bool ini key reads False when unset: let the environment speak
        if value not in (None, "", []):
            return value, f"ini key {opt.name}", base_for_ini
        if opt.env in env and env[opt.env] != "":
            return env[opt.env], f"${opt.env}", Path.cwd()
        return opt.default, opt.flag, base_for_ini  # defaults belong to the project, not the cwd

    values = {opt.name: pick(opt) for opt in OPTIONS}
    configured = any(value not in (None, False, "") and value != opt.default
                     for opt in OPTIONS for value in [values[opt.name][0]])

    def text(name: str) -> tuple[str | None, str, Path]:
        value, origin, base = values[name]
        return (None if value is None else str(value).strip()), origin, base

    model, _, _ = text("modelreg_model")
    model_args, origin, _ = text("modelreg_model_args")
    include, _, include_base = text("modelreg_include_path")
    baseline_dir, baseline_origin, baseline_base = text("modelreg_baseline_dir")
    update_value = values["modelreg_update"][0]
    cache_dir, cache_origin, cache_base = text("modelreg_cache_dir")
    json_report, json_origin, json_base = text("modelreg_json")
    markdown, markdown_origin, markdown_base = text("modelreg_markdown")
    return Settings(
        model=parse_model(model or "hf"),
        model_args=parse_model_args(model_args or "", origin, env),
        include_paths=parse_paths(include, include_base),
        baseline_dir=parse_path(baseline_dir or "baselines", baseline_base, baseline_origin,
                                expand=False),
        limit=parse_limit(*text("modelreg_limit")[:2]),
        device=parse_device(*text("modelreg_device")[:2]),
        batch_size=parse_batch_size(*text("modelreg_batch_size")[:2]),
        seed=parse_seed(*text("modelreg_seed")[:2]),
        update=_truthy(update_value),
        record_missing=_truthy(values["modelreg_record_missing"][0]),
        alpha=parse_alpha(*text("modelreg_alpha")[:2]),
        strict=_truthy(values["modelreg_strict"][0]),
        correction=parse_correction(*text("modelreg_correction")[:2]),
        tracking=_tracking(text, values),
        cache_dir=parse_path(cache_dir, cache_base, cache_origin) if cache_dir else None,
        drift_window=parse_count(*text("modelreg_drift_window")[:2], 0,
                                 "a number of sessions; use 0 (off) or e.g. 10"),
        json_report=parse_path(json_report, json_base, json_origin) if json_report else None,
        markdown_report=parse_path(markdown, markdown_base, markdown_origin) if markdown else None,
        cache=not _truthy(values["modelreg_no_cache"][0]),
        cache_endpoints=_truthy(values["modelreg_cache_endpoints"][0]),
        gpus_per_worker=parse_count(*text("modelreg_gpus_per_worker")[:2], 1,
                                    "a number of GPUs; use 1, 2, ... or 0 to leave "
                                    "CUDA_VISIBLE_DEVICES alone"),
        xdist_group=parse_choice(*text("modelreg_xdist_group")[:2], ("model", "none")),
        configured=configured,
        rootdir=rootdir,
    )


def _tracking(text: Callable[[str], tuple[str | None, str, Path]],
              values: dict[str, tuple[object, str, Path]]) -> TrackingSettings:
    spool, spool_origin, spool_base = text("modelreg_spool_dir")
    return TrackingSettings(
        enabled=not _truthy(values["no_mlflow"][0]),
        tracking_uri=text("mlflow_tracking_uri")[0] or None,
        experiment=text("mlflow_experiment")[0] or "pytest-modelreg",
        run_name=text("mlflow_run_name")[0] or None,
        parent_run_id=text("mlflow_parent_run_id")[0] or None,
        strict=_truthy(values["mlflow_strict"][0]),
        spool_dir=parse_path(spool or ".modelreg-spool", spool_base, spool_origin, expand=False),
        backend=parse_choice(text("modelreg_tracker")[0], "--modelreg-tracker", ("mlflow", "wandb")),
    )


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def parse_model(model: object, origin: str = "--modelreg-model") -> str:
    if not isinstance(model, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", model):
        raise ModelregUsageError(
            f"{origin}: {shown(model)} is not an lm-eval model type; use a name such as "
            "hf, vllm or local-completions"
        )
    return model


def expand_env(text: str, origin: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` with its value; an unset variable is an error, not an empty string."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ModelregUsageError(
                f"{origin}: environment variable {name} is not set (used as ${{{name}}}); "
                "set it or write the value in place"
            )
        return env[name]

    return _VAR.sub(substitute, text)


def parse_model_args(model_args: str, origin: str = "--modelreg-model-args",
                     env: Mapping[str, str] | None = None) -> str:
    """Validate an lm-eval ``key=value,key=value`` string (and expand ``${VAR}``)."""
    model_args = expand_env(model_args, origin, os.environ if env is None else env).strip()
    split_model_args(model_args, origin)
    return model_args


def split_model_args(model_args: str, origin: str = "model_args") -> dict[str, str]:
    """Parse ``key=value`` pairs the way lm-eval does, but with a clear error for bad input."""
    pairs: dict[str, str] = {}
    for piece in filter(None, (p.strip() for p in model_args.split(","))):
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise ModelregUsageError(
                f"{origin}: cannot parse {piece!r} in {model_args!r}; write key=value pairs "
                "separated by commas, e.g. pretrained=./ckpt,dtype=bfloat16"
            )
        if key.strip() in pairs:
            raise ModelregUsageError(f"{origin}: {key.strip()!r} is given twice in {model_args!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_path(value: str, base: Path, origin: str, expand: bool = True) -> Path:
    """``value`` (``~`` expanded) resolved against ``base``; one the OS cannot use is an error."""
    try:
        return (base / (Path(value).expanduser() if expand else Path(value))).resolve()
    except (RuntimeError, ValueError, OSError) as exc:  # "~nosuchuser", a NUL byte
        raise ModelregUsageError(f"{origin}: {shown(value)} is not a usable path ({exc})") from None


def parse_paths(value: str | None, base: Path) -> tuple[Path, ...]:
    if not value:
        return ()
    raw = [p.strip() for chunk in value.splitlines() for p in chunk.split(os.pathsep)]
    paths = tuple(parse_path(p, base, "--modelreg-include-path") for p in raw if p)
    for path in paths:
        if not path.is_dir():
            raise ModelregUsageError(
                f"--modelreg-include-path: folder {path} does not exist; point it at a folder "
                "of lm-eval task YAMLs"
            )
    return paths


def parse_limit(value: object, origin: str = "limit") -> int | float | None:
    """A positive number of docs, or a fraction in (0, 1); None means all docs."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ModelregUsageError(f"{origin}: expected a number of docs, got {value!r}")
    if isinstance(value, int) and value >= 1:
        return value  # exact: a count too large for a float is still a count
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ModelregUsageError(
            f"{origin}: expected a positive number of docs, got {shown(value)}"
        ) from None
    if number >= 1 and number.is_integer():
        return int(number)
    if 0 < number < 1:
        return number
    raise ModelregUsageError(
        f"{origin}: must be a positive whole number of docs (or a fraction between 0 and 1), "
        f"got {shown(value)}"
    )


def parse_device(value: str | None, origin: str = "--modelreg-device") -> str:
    device = (value or "auto").lower()
    if not _DEVICE.match(device):
        raise ModelregUsageError(f"{origin}: {value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return device


def parse_batch_size(value: object, origin: str = "batch_size") -> str:
    value = "1" if value is None else value
    # An int is written out only when it can be a batch size (str() of a huge int raises).
    text = value.strip().lower() if isinstance(value, str) else \
        str(value) if type(value) is int and 0 < value < 2**31 else ""
    if not _BATCH.match(text) or text == "0":
        raise ModelregUsageError(f"{origin}: {shown(value)} is not a batch size; use N >= 1, "
                                 "auto or auto:N")
    return text


def parse_seed(value: object, origin: str = "--modelreg-seed") -> int | None:
    """A whole number 0 .. 2**32 - 1 (what every seeded library takes), or None."""
    if value is None or value == "":
        return None
    seed = value if type(value) is int else None  # not a bool, not 1.5
    if isinstance(value, str):
        try:
            seed = int(value)
        except ValueError:  # also for more than 4300 digits
            seed = None
    if seed is None or not 0 <= seed < SEED_RANGE:
        raise ModelregUsageError(f"{origin}: expected a whole number from 0 to {SEED_RANGE - 1}, "
                                 f"got {shown(value)}")
    return seed


def parse_alpha(value: object, origin: str = "--modelreg-alpha") -> float:
    value = "0.01" if value is None else value
    try:
        alpha = float(value) if isinstance(value, (str, int, float)) and not isinstance(
            value, bool) else math.nan
    except (ValueError, OverflowError):
        alpha = math.nan
    if not 0 < alpha < 0.5:
        raise ModelregUsageError(f"{origin}: {shown(value)} is not a test level; use a number "
                                 "between 0 and 0.5, e.g. 0.01")
    return alpha


def parse_correction(value: str | None, origin: str = "--modelreg-correction") -> str:
    return parse_choice(value, origin, ("holm", "none"))


def parse_choice(value: str | None, origin: str, choices: tuple[str, ...]) -> str:
    choice = (value or choices[0]).strip().lower()
    if choice not in choices:
        raise ModelregUsageError(f"{origin}: {value!r} is not one of {', '.join(choices)}")
    return choice


def parse_count(value: str | None, origin: str, default: int, hint: str) -> int:
    """A whole number >= 0 (``hint`` says what it counts and what 0 means)."""
    try:
        count = int(value if value not in (None, "") else default)
    except (TypeError, ValueError, OverflowError):
        count = -1
    if count < 0:
        raise ModelregUsageError(f"{origin}: {shown(value)} is not {hint}")
    return count
