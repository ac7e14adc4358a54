"""The fingerprint: what must be equal for a result to be comparable with a baseline.

The model's identity is deliberately absent: the model is what a regression test varies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

# Task config keys that say where the data lives, not what it is: a checkout in another folder
# must still compare. The doc hashes catch a change of the data itself.
_LOCATION_KEYS = frozenset({"dataset_path", "dataset_kwargs", "dataset_name", "metadata"})

FIELD_LABELS = {
    "task_version": "task version",
    "task_config": "task config",
    "docs": "doc set",
    "n_docs": "number of docs",
    "prompts": "prompts",
    "num_fewshot": "few-shot",
    "limit": "limit",
    "gen_kwargs": "gen_kwargs",
    "apply_chat_template": "chat template",
    "fewshot_as_multiturn": "few-shot as multi-turn",
    "system_instruction": "system instruction",
    "fewshot_seed": "few-shot seed",
    "metrics": "metrics",
    "lm_eval_major": "lm-eval major version",
}


def sha256_lines(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def config_hash(task_config: Mapping[str, Any]) -> str:
    relevant = {k: v for k, v in task_config.items() if k not in _LOCATION_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def diff_fingerprints(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Readable differences, e.g. ``limit: 100 -> 200``; empty when comparable."""
    differences = []
    for key in sorted(set(recorded) | set(current), key=lambda k: list(FIELD_LABELS).index(k)
                      if k in FIELD_LABELS else len(FIELD_LABELS)):
        if key not in recorded:  # a field the baseline never recorded (imported aggregates,
            continue             # an older plugin) is not a difference
        old, new = recorded.get(key), current.get(key)
        if old != new:
            label = FIELD_LABELS.get(key, key)
            differences.append(f"{label}: {_short(old)} -> {_short(new)}")
    return differences


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
