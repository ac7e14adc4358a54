"""Progress on the terminal while a long evaluation runs, despite pytest's output capture.

On a terminal: a line naming the model and task, then lm-eval's own progress bars (capture is
suspended while they run). Elsewhere (CI logs, xdist workers): no bars at all; the plugin
prints one line per finished evaluation instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class TerminalProgress:
    def __init__(self, config: Any, *, live: bool) -> None:
        self._config = config  # the capture manager and writer exist only once pytest configured
        self.live = live

    @contextlib.contextmanager
    def stage(self, description: str) -> Iterator[None]:
        if not self.live:
            with _tqdm_disabled():
                yield
            return
        capture = self._config.pluginmanager.getplugin("capturemanager")
        writer = self._config.get_terminal_writer()
        with capture.global_and_fixture_disabled():
            writer.line()
            writer.line(f"modelreg: {description} ...", cyan=True)
            yield


@contextlib.contextmanager
def _tqdm_disabled() -> Iterator[None]:
    """Silence every tqdm bar while an evaluation runs off a terminal.

    tqdm reads TQDM_DISABLE only when it is imported, and lm-eval passes ``disable=``
    explicitly, so the one reliable switch is tqdm's constructor itself (restored afterwards).
    """
    import tqdm.std

    original = tqdm.std.tqdm.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = quiet_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original  # type: ignore[method-assign]
