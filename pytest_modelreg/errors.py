"""Errors the plugin raises. Each carries a one-line message that names the thing and the fix."""

from __future__ import annotations


class ModelregError(Exception):
    """A problem the user can fix (bad option, unknown task, corrupt baseline...).

    The plugin shows only its message, never a traceback from deep inside a library.
    """


class ModelregUsageError(ModelregError):
    """Bad options or marker arguments."""


class BaselineError(ModelregError):
    """A baseline file that cannot be read or written."""


class EvaluationError(ModelregError):
    """The model could not be loaded or the task could not be evaluated."""


class CheckFailed(AssertionError):
    """A metric check failed: the message says what was expected, measured and missed by."""
