"""Evaluators turn an ``EvalSpec`` into an ``EvalResult``.

``lm_eval_runner`` is the only module that imports lm_eval; it is imported when the first
evaluation runs, never when the plugin loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from ..results import EvalResult
from ..spec import EvalSpec


class Progress(Protocol):
    """Tells the user what is running; the plugin's version shows it despite output capture."""

    def stage(self, description: str) -> contextlib.AbstractContextManager[None]: ...


class NullProgress:
    @contextlib.contextmanager
    def stage(self, description: str) -> Iterator[None]:
        yield


class Evaluator(Protocol):
    def evaluate(self, spec: EvalSpec) -> EvalResult: ...

    def close(self) -> None: ...
