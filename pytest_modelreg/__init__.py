"""pytest-modelreg: model quality as ordinary pytest tests (lm-eval tasks, baselines, MLflow)."""

from __future__ import annotations

__version__ = "0.1.0"

from .custom import FunctionOutput
from .errors import BaselineError, CheckFailed, EvaluationError, ModelregError
from .results import EvalResult, SampleOutcome
from .stats import Comparison, compare_aggregates, compare_samples, holm

__all__ = ["BaselineError", "CheckFailed", "Comparison", "EvalResult", "EvaluationError",
           "FunctionOutput", "ModelregError", "SampleOutcome", "__version__", "compare_aggregates",
           "compare_samples", "holm"]
