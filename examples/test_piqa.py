"""Model quality as ordinary tests: does SmolLM2 still reason about the physical world?

Both tests ask for the same evaluation, so the model is loaded once and PIQA is run once.
"""

import pytest


# Declarative: the marker evaluates the task and checks each metric against its floor and
# against the recorded baseline.
@pytest.mark.modelreg(task="piqa_local", metrics={"acc_norm": {"min": 0.55}})
def test_piqa():
    pass


# Imperative: the fixture evaluates, the test decides.
def test_piqa_accuracy(modelreg):
    result = modelreg.evaluate("piqa_local")
    result.check("acc", min=0.55)  # an absolute floor
    result.check_baseline("acc", tolerance=0.02)  # at most 2 points below the baseline
