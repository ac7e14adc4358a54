"""Which GPUs a process may use: the xdist workers' share, and a test's GPU requirements.

The controller pins each xdist worker through its execnet spec (``env:CUDA_VISIBLE_DEVICES``), so
the variable is set in the worker before pytest, a conftest or torch starts there; a worker that
replaces a crashed one reuses the crashed one's spec, and so its GPUs. No torch here: the GPUs
are counted with ``nvidia-smi``, and torch is asked only when a test states a requirement.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Mapping

GIB = 2**30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)


def visible_gpus(env: Mapping[str, str], count_gpus: object = None) -> list[str]:
    """The GPUs this machine lets the session use: CUDA_VISIBLE_DEVICES when set (respected, so
    a session already restricted to some GPUs shares out only those), else every GPU."""
    if "CUDA_VISIBLE_DEVICES" in env:
        listed = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if listed[:1] == ["-1"] else listed
    counter = count_gpus if callable(count_gpus) else nvidia_smi_count
    return [str(i) for i in range(counter())]


def nvidia_smi_count() -> int:
    """GPUs that ``nvidia-smi -L`` lists; 0 without the tool or a driver."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        done = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines()) if done.returncode == 0 \
        else 0


def worker_gpus(index: int, gpus: list[str], per_worker: int) -> list[str]:
    """The GPUs of the ``index``-th worker: consecutive blocks of ``per_worker``, reused round-robin
    when there are more workers than blocks (several workers then share a GPU)."""
    if not gpus or per_worker <= 0:
        return []
    slots = max(len(gpus) // per_worker, 1)
    slot = index % slots
    return gpus[slot * per_worker:(slot + 1) * per_worker] or gpus


def parse_memory(value: object, origin: str) -> float:
    """``40``, ``"40GB"``, ``"40 GiB"`` or ``"40000MB"`` → GiB."""
    from .errors import ModelregUsageError
    from .settings import shown

    # Only text and plain numbers are read (str() of a 5000-digit int raises, a list's is noise).
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) or (
        type(value) is int and abs(value) < 2**63) else ""
    match = _SIZE.match(text)
    number = float(match.group(1)) if match else math.inf
    if not math.isfinite(number):  # also "1111...GB" beyond any float
        raise ModelregUsageError(f"{origin}: {shown(value)} is not an amount of memory; write "
                                 "e.g. min_gpu_memory='40GB'")
    unit = (match.group(2) or "gb").lower()
    return number / 1024 if unit.startswith("m") else number


def unmet_gpu_requirement(need_gpu: bool, min_memory_gib: float | None) -> str | None:
    """Why this process cannot run a test that needs a GPU (None: it can)."""
    if not need_gpu and min_memory_gib is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU; torch sees none here"
    if min_memory_gib is None:
        return None
    sizes = [torch.cuda.get_device_properties(i).total_memory / GIB
             for i in range(torch.cuda.device_count())]
    if max(sizes) < min_memory_gib:
        return (f"needs a GPU with {min_memory_gib:g} GiB; the largest visible here has "
                f"{max(sizes):.1f} GiB")
    return None

