"""Progress: on a terminal the model, task and lm-eval's bars show despite capture; elsewhere
no bar noise, one line per evaluation."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from tests.conftest import TinyWorld, dedent

BAR_TEXT = "Running loglikelihood requests"
SUITE = dedent("""
    import pytest

    @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
    def test_qa():
        pass
""")


def run_in_terminal(folder, *args: str) -> str:
    """Run pytest with a pseudo-terminal as stdout/stderr, as a person at a terminal would."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and tqdm draws nothing into 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                               cwd=folder, stdin=subprocess.DEVNULL, stdout=follower,
                               stderr=follower, env={**os.environ, "COLUMNS": "120"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: pytest ended
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=300)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_terminal_shows_model_task_and_bars(project: pytest.Pytester, tiny: TinyWorld):
    project.makepyfile(test_suite=SUITE)
    output = run_in_terminal(project.path, "--modelreg-record-missing")
    assert f"modelreg: evaluating tiny_qa on hf(pretrained={tiny.good})" in output
    assert BAR_TEXT in output  # lm-eval's own progress bar, despite pytest's capture
    assert "1 passed" in output


@pytest.mark.parametrize("capture", [(), ("-s",)], ids=["captured", "no-capture"])
def test_off_a_terminal_one_line_and_no_bars(project: pytest.Pytester, capture):
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--modelreg-record-missing",
                                          *capture)
    result.assert_outcomes(passed=1)
    output = result.stdout.str() + result.stderr.str()
    assert output.count("modelreg: evaluated tiny_qa on hf (60 docs in") == 1
    assert BAR_TEXT not in output and "it/s]" not in output
