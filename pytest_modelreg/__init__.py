"""pytest-modelreg: model quality as ordinary pytest tests (lm-eval tasks, baselines, MLflow).

The public names are imported on first use (PEP 562): pytest imports this package in every
session of every project that has the plugin installed, most of which never touch them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BaselineError": "errors", "CheckFailed": "errors", "EvaluationError": "errors",
    "ModelregError": "errors", "EvalResult": "results", "SampleOutcome": "results",
    "Comparison": "stats", "compare_aggregates": "stats", "compare_samples": "stats",
    "holm": "stats", "FunctionOutput": "custom",
}

__all__ = ["BaselineError", "CheckFailed", "Comparison", "EvalResult", "EvaluationError",
           "FunctionOutput", "ModelregError", "SampleOutcome", "__version__", "compare_aggregates",
           "compare_samples", "holm"]

if TYPE_CHECKING:
    from .custom import FunctionOutput
    from .errors import BaselineError, CheckFailed, EvaluationError, ModelregError
    from .results import EvalResult, SampleOutcome
    from .stats import Comparison, compare_aggregates, compare_samples, holm


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pytest_modelreg' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
