"""Session-level tags, params and names for the tracker: plain functions of plain inputs."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..redact import redact_model_args, scrub
from ..settings import Settings, split_model_args

CI_VARIABLES = (
    "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_JOB", "GITHUB_WORKFLOW", "GITHUB_REPOSITORY",
    "GITHUB_SHA", "GITHUB_REF", "CI_PIPELINE_ID", "CI_JOB_ID", "CI_PROJECT_PATH",
    "BUILDKITE_BUILD_ID", "BUILDKITE_JOB_ID", "CIRCLE_BUILD_NUM", "BUILD_ID", "JOB_NAME",
)
_MODEL_ARG_FLAG = "--modelreg-model-args"


def redact_command(args: Sequence[str]) -> str:
    """The pytest command line with secret model_args (also in ``-o``) and URL passwords
    masked."""
    shown: list[str] = []
    mask_next = False
    for arg in args:
        if mask_next:
            arg, mask_next = redact_model_args(arg), False
        elif arg == _MODEL_ARG_FLAG:
            mask_next = True
        elif arg.startswith(_MODEL_ARG_FLAG + "="):
            arg = f"{_MODEL_ARG_FLAG}={redact_model_args(arg.split('=', 1)[1])}"
        shown.append(scrub(arg))
    return shlex.join(["pytest", *shown])


def model_label(model: str, model_args: str) -> str:
    """A short name a person recognises: the checkpoint folder's name, or the model type."""
    try:
        args = split_model_args(model_args)
    except Exception:
        args = {}
    name = args.get("pretrained") or args.get("model") or ""
    return Path(name.rstrip("/")).name or model


def run_name(started_at: float, label: str, outcome: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started_at))} {label} {outcome}"


def session_tags(session_id: str, command: str, git: Mapping[str, Any],
                 env: Mapping[str, str]) -> dict[str, str]:
    tags = {
        "mlflow.runType": "test",  # mlflow.utils.mlflow_tags.MLFLOW_RUN_TYPE_TEST
        "mlflow.test.session_id": session_id,
        "modelreg.session_id": session_id,
        "pytest.command": command[:5000],
        "outcome": "running",
    }
    if git:
        tags["mlflow.source.git.commit"] = str(git.get("commit", ""))
        tags["mlflow.source.git.branch"] = str(git.get("branch", ""))
        tags["git.dirty"] = "true" if git.get("dirty") else "false"
    tags.update({f"ci.{name.lower()}": env[name] for name in CI_VARIABLES if env.get(name)})
    return tags


def session_params(settings: Settings) -> dict[str, str]:
    params = {
        "model": settings.model,
        "model_args": redact_model_args(settings.model_args),
        "device": settings.device,
        "batch_size": settings.batch_size,
        "limit": str(settings.limit) if settings.limit is not None else "all",
        "seed": str(settings.seed) if settings.seed is not None else "lm-eval default",
        "baseline_dir": str(settings.baseline_dir),
        "update": str(settings.update).lower(),
    }
    return params


def environment_params(evaluation: Mapping[str, Any]) -> dict[str, str]:
    """Library versions and hardware, as the first evaluation reported them."""
    params = {f"version.{k}": str(v) for k, v in evaluation.get("versions", {}).items()}
    params.update({f"hardware.{k}": str(v) for k, v in evaluation.get("hardware", {}).items()})
    return params
