"""The model under test: trained on the first run (seeded, a few seconds on a CPU).

$DIGITS_MODEL (used by pytest.ini) defaults to digits_model/ beside this file, so the suite
runs from any folder; point it at another model folder to test that one.
"""

import os
from pathlib import Path

import pytest

DEFAULT_MODEL = Path(__file__).resolve().parent / "digits_model"
os.environ.setdefault("DIGITS_MODEL", str(DEFAULT_MODEL))


@pytest.fixture(scope="session", autouse=True)
def digits_model():
    """Train the default model when it is missing (never another folder: that is a typo)."""
    folder = Path(os.environ["DIGITS_MODEL"])
    if folder == DEFAULT_MODEL:
        from filelock import FileLock  # pytest -n 4: one worker trains, the others wait

        with FileLock(f"{folder}.lock"):
            if not folder.exists():
                from digits import train

                train(folder)
    return folder
