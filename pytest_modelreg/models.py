"""Model identity, device choice and the checks made before a model is loaded."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .errors import EvaluationError
from .redact import redact_model_args
from .settings import split_model_args

# Files that decide what a local Hugging Face model computes.
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf",
                        ".model", ".txt", ".tiktoken", ".jinja",
                        ".py")  # remote code (auto_map) decides what the model computes
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


# The plugin's own model_args keys: per-model opt-ins that lm-eval must never see (it passes
# unknown keys on to from_pretrained) and that do not change results (so no cache key part).
PLUGIN_MODEL_ARGS = ("allow_pickle",)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Pickles a Trainer checkpoint folder holds besides the weights: not loaded by from_pretrained.
_TRAINER_STATE = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")


def lm_eval_model_args(model_args: str) -> str:
    """model_args as lm-eval gets them: the plugin's own keys removed, the rest verbatim."""
    return ",".join(piece for piece in model_args.split(",")
                    if piece.partition("=")[0].strip() not in PLUGIN_MODEL_ARGS)


def opted_in(args: dict[str, str], key: str) -> bool:
    """A per-model opt-in: ``key=True`` (or true / 1) in that model's own model_args."""
    return args.get(key, "").strip().strip("'\"").lower() in ("true", "1")


def check_model_files(model: str, model_args: str) -> None:
    """Fail early, in one line: a local model path that does not exist, remote code or pickle
    weights without the model's opt-in (local folders, and hub ids as far as the local
    Hugging Face cache holds them: nothing is downloaded to check)."""
    if model not in _HF_TYPES:
        return
    args = split_model_args(model_args)
    pretrained = args.get("pretrained")
    if not pretrained:
        return
    shown = redact_model_args(model_args)
    if not looks_like_path(pretrained):
        folder = cached_snapshot(pretrained, args.get("revision"))
        if folder is not None:
            check_model_folder(pretrained, folder, args, shown)
        return
    folder = Path(pretrained).expanduser()
    if not folder.exists():
        raise EvaluationError(
            f"model path {pretrained} does not exist (from model_args {shown!r}); fix "
            "pretrained= or --modelreg-model-args")
    gguf = args.get("gguf_file")
    if gguf and not (folder / gguf).exists() and not Path(gguf).exists():
        raise EvaluationError(f"gguf_file {gguf} not found in {folder}; fix gguf_file= in model_args")
    if folder.is_dir():
        check_model_folder(pretrained, folder, args, shown)
    for key in ("peft", "delta"):  # adapters and delta weights load through pickle too
        extra = args.get(key)
        if extra and looks_like_path(extra) and Path(extra).expanduser().is_dir():
            check_pickle_weights(extra, Path(extra).expanduser(), args, shown, key)


def check_model_folder(name: str, folder: Path, args: dict[str, str], shown: str) -> None:
    check_remote_code(name, folder, args, shown)
    if not args.get("gguf_file"):  # a GGUF file is read instead of the weights here
        check_pickle_weights(name, folder, args, shown)


def remote_code_needed(folder: Path) -> list[str]:
    """The custom code files a model folder cannot load without: those its auto_map entries name
    (``module.Class`` -> ``module.py``; ``repo--module.Class`` is code from another hub repo)
    where the installed transformers has no class of its own. A checkpoint that still carries
    auto_map for an architecture transformers now implements loads transformers' code instead
    (what transformers does without trust_remote_code): no opt-in is asked for there."""
    config = _json_object(folder / "config.json")
    tokenizer = _json_object(folder / "tokenizer_config.json")
    found: set[str] = set()
    if config.get("auto_map") and not _native_model(config):
        found |= _auto_map_files(config["auto_map"])
    if tokenizer.get("auto_map") and not _native_tokenizer(config, tokenizer):
        found |= _auto_map_files(tokenizer["auto_map"])
    return sorted(found)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _auto_map_files(auto_map: Any) -> set[str]:
    found: set[str] = set()
    for value in auto_map.values() if isinstance(auto_map, dict) else []:
        for reference in value if isinstance(value, list) else [value]:
            if isinstance(reference, str) and "." in reference:
                repo, _, module = reference.rpartition(".")[0].rpartition("--")
                found.add(f"{module}.py" + (f" from {repo}" if repo else ""))
    return found


def _native_model(config: dict[str, Any]) -> bool:
    """transformers has its own causal-LM or seq2seq class for this model type."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    kind = config.get("model_type")
    return kind in CONFIG_MAPPING_NAMES and (kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                                             or kind in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)


def _native_tokenizer(config: dict[str, Any], tokenizer: dict[str, Any]) -> bool:
    """transformers' AutoTokenizer has a class of its own (its has_local_code test)."""
    from transformers.models.auto.tokenization_auto import (
        TOKENIZER_MAPPING_NAMES,
        tokenizer_class_from_name,
    )

    if config.get("model_type") in TOKENIZER_MAPPING_NAMES:
        return True
    name = tokenizer.get("tokenizer_class")
    if not isinstance(name, str):
        return False
    name = name.removesuffix("Fast")
    return any(tokenizer_class_from_name(n) is not None for n in (name, f"{name}Fast"))


def check_remote_code(name: str, folder: Path, args: dict[str, str], shown: str) -> None:
    if opted_in(args, "trust_remote_code"):
        return
    files = remote_code_needed(folder)
    if files:
        raise remote_code_error(name, ", ".join(files), shown)


def remote_code_error(name: str, files: str, shown: str) -> EvaluationError:
    return EvaluationError(
        f"model {name} needs remote code ({files}), which runs with your permissions when it "
        "loads; review it, then opt in for this model only with trust_remote_code=True in its "
        f"model_args: '{shown},trust_remote_code=True'")


def pickle_weights(folder: Path) -> list[str]:
    """Weight files in pickle formats, when the folder has no safetensors (transformers loads
    safetensors whenever they exist, so pickles beside them are never read)."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        return []
    return sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES)
                  and not f.startswith(_TRAINER_STATE))


def check_pickle_weights(name: str, folder: Path, args: dict[str, str], shown: str,
                         key: str = "pretrained") -> None:
    if opted_in(args, "allow_pickle"):
        return
    files = pickle_weights(folder)
    if files:
        raise EvaluationError(
            f"model {name} ({key}=) has weights only as pickle files ({', '.join(files)}), which "
            "can run code when loaded; convert them to safetensors (load once, then "
            "save_pretrained writes model.safetensors), or opt in for this model only with "
            f"allow_pickle=True in its model_args: '{shown},allow_pickle=True'")


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local Hugging Face cache's folder of a hub model at ``revision``; None when it is not
    cached (never downloads: the hub is not asked)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached, not a valid repo id, no huggingface_hub: nothing to check
        return None


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
