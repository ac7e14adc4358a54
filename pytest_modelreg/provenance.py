"""Where a result came from: library versions, hardware, the repository's commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

_LIBRARIES = ("lm_eval", "transformers", "torch", "pytest-modelreg", "datasets")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@cache
def git_state(folder: Path) -> dict[str, Any]:
    """Commit, branch and dirtiness of the repository holding ``folder``; {} outside git."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status)}


def hardware(device: str) -> dict[str, Any]:
    """CPU and, on CUDA, the GPU name and count (torch is imported only when CUDA is in use)."""
    info: dict[str, Any] = {"device": device, "platform": platform.platform(),
                            "cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda") and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            info.update(gpu=torch.cuda.get_device_name(index), gpu_count=torch.cuda.device_count(),
                        cuda=torch.version.cuda)
    return info
