"""pytest-modelreg on a model that is not a language model: a torch digit classifier, evaluated
by our own function instead of lm-eval, with the same baselines, paired statistics and reports.

Run from this folder: ``pytest`` (the first run trains the model and records the baseline).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from digits import held_out, load

from pytest_modelreg.custom import FunctionOutput


def evaluate_digits(model_args: dict[str, str], limit: int | float | None,
                    device: str) -> FunctionOutput:
    """Classify the held-out images: one doc per image, right (1.0) or wrong (0.0)."""
    model = load(model_args["pretrained"]).to(device)
    ids, images, labels = held_out(limit)
    with torch.no_grad():
        predicted = model(torch.from_numpy(images).to(device)).argmax(dim=1).tolist()
    return FunctionOutput(
        samples={int(doc): {"acc": float(guess == label), "macro_f1": (int(label), guess)}
                 for doc, label, guess in zip(ids, labels, predicted, strict=True)},
        # The image and its label identify each doc: other data makes the baseline incomparable.
        docs={int(doc): (image, int(label)) for doc, image, label in zip(ids, images, labels,
                                                                         strict=True)},
        aggregate={"macro_f1": macro_f1},  # not a mean over docs: a paired bootstrap compares it
    )


def macro_f1(items: list[list[int]]) -> float:
    """The mean over classes of F1, from (label, prediction) pairs (sklearn's macro average)."""
    hits, guessed, actual = Counter(), Counter(), Counter()
    for label, guess in items:
        actual[label] += 1
        guessed[guess] += 1
        hits[label] += label == guess
    classes = set(actual) | set(guessed)
    return sum(2 * hits[c] / (actual[c] + guessed[c]) for c in classes) / len(classes)


@pytest.mark.modelreg(task="digits", evaluator=evaluate_digits,
                      metrics={"acc": {"min": 0.85}, "macro_f1": {"min": 0.85}})
def test_digits():
    pass


def test_every_digit_is_recognised(modelreg):
    # The same evaluation as above (shared, not run twice); its per-doc outcomes are at hand.
    result = modelreg.evaluate("digits", evaluator=evaluate_digits)
    right, seen = Counter(), Counter()
    for sample in result.samples:
        label, guess = sample.items["macro_f1"]
        seen[label] += 1
        right[label] += label == guess
    worst = min(seen, key=lambda digit: right[digit] / seen[digit])
    assert right[worst] / seen[worst] >= 0.8, f"digit {worst}: {right[worst]}/{seen[worst]} right"
