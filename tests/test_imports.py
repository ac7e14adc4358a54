"""Nothing heavy at import: a project that merely has the plugin installed pays nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "lm_eval", "mlflow", "scipy", "matplotlib", "datasets", "wandb",
         "sklearn")


def imported_top_level(stderr: str) -> set[str]:
    """Top-level module names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_help_imports_nothing_heavy(pytester: pytest.Pytester):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest", "--help"],
                          cwd=pytester.path, capture_output=True, text=True, check=True)
    assert "--modelreg-model-args" in done.stdout  # the plugin was loaded
    assert "pytest_modelreg" in imported_top_level(done.stderr)
    assert not imported_top_level(done.stderr) & set(HEAVY)


def test_session_without_modelreg_tests_imports_nothing_heavy(pytester: pytest.Pytester):
    pytester.makeconftest("""
        import json, sys

        def pytest_sessionfinish(session):
            with open("modules.json", "w") as handle:
                json.dump(sorted(sys.modules), handle)
    """)
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    loaded = set(json.loads((pytester.path / "modules.json").read_text()))
    modules = {m.split(".")[0] for m in loaded}
    assert "pytest_modelreg" in modules
    assert not modules & set(HEAVY)
    # Not even the plugin's own evaluation machinery: the session object is made on first use.
    assert not loaded & {"pytest_modelreg.session", "pytest_modelreg.stats",
                         "pytest_modelreg.baselines", "pytest_modelreg.tracking"}
    assert "modelreg:" not in result.stdout.str()  # not even a header line
