"""Secrets never leave the process: model_args values whose key looks secret are masked."""

from __future__ import annotations

import re

_SECRET_KEY = re.compile(r"token|key|secret|passw|auth|credential", re.IGNORECASE)
# Names that contain "token" without holding one: tokenizer=, tokenized_requests=, max_tokens=...
_NOT_SECRET = re.compile(r"tokeni[sz]|tokens$|^max_|^num_|(bos|eos|pad|unk|sep)_token",
                         re.IGNORECASE)
MASK = "***"


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET.search(key)


def redact_args(args: dict[str, object]) -> dict[str, object]:
    return {k: (MASK if is_secret_key(k) else v) for k, v in args.items()}


def redact_model_args(model_args: str) -> str:
    """Mask secret values in an lm-eval ``key=value,key=value`` string, keeping its shape."""
    parts = []
    for piece in model_args.split(","):
        key, sep, _value = piece.partition("=")
        parts.append(f"{key}={MASK}" if sep and is_secret_key(key) else piece)
    return ",".join(parts)
