"""Model identity, device choice and the checks made before a model is loaded."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from .errors import EvaluationError
from .redact import redact_model_args
from .settings import split_model_args

# Files that decide what a local Hugging Face model computes.
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model",
                        ".txt", ".tiktoken", ".jinja")
_HF_TYPES = frozenset({"hf", "hf-auto", "huggingface", "hf-multimodal", "vllm", "sglang",
                       "vllm-vlm", "steered"})


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def looks_like_path(value: str) -> bool:
    """A local path rather than a hub id such as ``org/name``."""
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") >= 2 \
        or Path(value).exists()


def check_model_files(model: str, model_args: str) -> None:
    """Fail early, in one line, when a local model path named in model_args does not exist."""
    if model not in _HF_TYPES:
        return
    args = split_model_args(model_args)
    pretrained = args.get("pretrained")
    if not pretrained or not looks_like_path(pretrained):
        return
    folder = Path(pretrained).expanduser()
    shown = redact_model_args(model_args)
    if not folder.exists():
        raise EvaluationError(
            f"model path {pretrained} does not exist (from model_args {shown!r}); fix "
            "pretrained= or --modelreg-model-args")
    gguf = args.get("gguf_file")
    if gguf and not (folder / gguf).exists() and not Path(gguf).exists():
        raise EvaluationError(f"gguf_file {gguf} not found in {folder}; fix gguf_file= in model_args")


def file_sha256(path: Path, cache: dict[tuple[str, int, int], str]) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()
    return cache[key]


def model_identity(model: str, model_args: str,
                   cache: dict[tuple[str, int, int], str] | None = None) -> dict[str, Any]:
    """What the model is: a hash of its local files, or its hub id / endpoint otherwise."""
    cache = {} if cache is None else cache
    args = split_model_args(model_args)
    identity: dict[str, Any] = {"type": model, "model_args": redact_model_args(model_args)}
    if "base_url" in args:  # an API model: what it is lives behind the endpoint
        identity["endpoint"] = args["base_url"]
        identity["served_model"] = args.get("model", "")
        return identity
    pretrained = args.get("pretrained") or args.get("model") or args.get("model_name")
    folder = Path(pretrained).expanduser() if pretrained else None
    if folder is not None and folder.is_dir():
        gguf = args.get("gguf_file")
        files = sorted(
            p for p in folder.iterdir()
            if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES
            and (not gguf or p.suffix != ".gguf" or p.name == Path(gguf).name)
        )
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.name}:{file_sha256(path, cache)}\n".encode())
        identity["sha256"] = digest.hexdigest()
        identity["files"] = [p.name for p in files]
    elif pretrained:
        identity["source"] = pretrained
        identity["revision"] = args.get("revision", "main")
    return identity


def cuda_allocated() -> int | None:
    """CUDA memory allocated by torch in bytes; None without CUDA (torch is never imported
    for this: a process that has not imported it has no CUDA memory)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_allocated())


def free_memory() -> int | None:
    """Collect dropped models and give their CUDA memory back; the bytes still allocated."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if cuda_allocated() is None or torch is None:
        return None
    torch.cuda.empty_cache()
    return cuda_allocated()
