"""Secrets never leave the process: model_args values whose key looks secret are masked."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

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


# -- scrubbing text that leaves the process ---------------------------------------------------
_MIN_SECRET = 8  # shorter values ("1", "true") would mangle ordinary text; real secrets are longer
_SECRET_PAIR = re.compile(r"([A-Za-z0-9_.\-]+)=([^,\s'\"&]+)")
_STRONG_NAME = re.compile(r"token|secret|passw|api_?key|access_?key|private_?key", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s:]+(?::[^/@\s]*)?@")


def known_secrets(env: Mapping[str, str], *model_args: str) -> tuple[str, ...]:
    """Values that must never be written anywhere: environment variables whose name looks
    secret (MLFLOW_TRACKING_PASSWORD, HF_TOKEN, OPENAI_API_KEY, ...) and secret model_args."""
    values = {value for name, value in env.items() if is_secret_key(name)
              and _secret_value(name, value)}
    for text in model_args:
        for piece in (text or "").split(","):
            key, sep, value = piece.partition("=")
            if sep and is_secret_key(key.strip()):
                values.add(value.strip())
    # Longest first, so a secret that contains another is masked whole.
    return tuple(sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True))


def _secret_value(name: str, value: str) -> bool:
    """A secret-looking variable's value that is worth masking: not a path (SSH_AUTH_SOCK),
    and under a weak name (..._KEYRING_PROVIDER=subprocess) only when it has digits: masking
    an ordinary word would mangle every text it appears in."""
    if value.startswith(("/", "~", ".")):
        return False
    return bool(_STRONG_NAME.search(name)) or any(c.isdigit() for c in value)


def scrub(text: str, secrets: Sequence[str] = (), *, pairs: bool = True) -> str:
    """``text`` with known secret values and passwords in URLs masked, and with ``pairs``
    also ``secret_key=value`` pairs: for anything that leaves the process. Files (prompts,
    model outputs) keep their pairs: only known values are masked there."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    if pairs:
        text = _SECRET_PAIR.sub(lambda m: f"{m[1]}={MASK}" if is_secret_key(m[1]) else m[0],
                                text)
    return redact_url(text)


def redact_url(text: str, replacement: str = f"{MASK}@") -> str:
    """``https://user:password@host`` -> ``https://***@host`` (or ``replacement``)."""
    return _URL_USERINFO.sub(replacement, text)
