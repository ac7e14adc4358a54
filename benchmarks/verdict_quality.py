"""Verdict quality: false alarms on an unchanged model and detection of real drops, for our
paired rule and for the fixed rules teams use instead.

Run from the repository root:  python benchmarks/verdict_quality.py

Starting point: real per-question outcomes of a GPT-3 model on GSM8K (the GSM8K paper's
``example_model_solutions.jsonl`` in ../shared/data). A "candidate" is that model's outcomes
with evaluation noise (a share r of the right answers turn wrong and as many wrong ones turn
right, in expectation) and, for a true drop, a number of right answers turned wrong. Each cell
is the share of trials that a rule calls a regression. Rules (one-sided at alpha = 0.01 where
statistical):

- paired (ours): ``compare_samples`` on the same questions, tolerance 0;
- unpaired z: (acc_c - acc_b) / sqrt(se_b^2 + se_c^2) < -z_0.99;
- relative 8 %: acc_c < acc_b * 0.92 (vLLM's CI default);
- absolute 2 points: acc_c < acc_b - 0.02.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pytest_modelreg import compare_samples  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "example_model_solutions.jsonl"
MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
BASE_MODEL = "175b_verification"
ALPHA = 0.01
TRIALS = 300
SIZES = (100, 500, 1319)
NOISE = (0.01, 0.03, 0.05)
DROPS = (0.01, 0.02, 0.05)
DROP_NOISE = 0.03
Z = 2.3263478740408408  # z_0.99


def load() -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return {m: np.array([float(r[m]["is_correct"]) for r in rows]) for m in MODELS}


def flip(outcomes: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Evaluation noise that leaves the expected accuracy unchanged: a share ``rate`` of the
    right answers turn wrong and as many wrong ones, in expectation, turn right. (Flipping every
    answer with the same probability would move accuracy towards 50 % - a real change.)"""
    accuracy = outcomes.mean()
    if accuracy in (0.0, 1.0):
        return outcomes
    to_wrong = rate
    to_right = rate * accuracy / (1 - accuracy)
    chance = np.where(outcomes == 1.0, to_wrong, to_right)
    return np.where(rng.random(len(outcomes)) < chance, 1.0 - outcomes, outcomes)


def drop(outcomes: np.ndarray, points: float, rng: np.random.Generator) -> np.ndarray:
    right = np.flatnonzero(outcomes == 1.0)
    lost = rng.choice(right, size=min(len(right), round(points * len(outcomes))), replace=False)
    worse = outcomes.copy()
    worse[lost] = 0.0
    return worse


def rules(base: np.ndarray, cand: np.ndarray) -> dict[str, bool]:
    acc_b, acc_c, n = base.mean(), cand.mean(), len(base)
    se = np.sqrt(acc_b * (1 - acc_b) / n + acc_c * (1 - acc_c) / n)
    paired = compare_samples(dict(enumerate(base)), dict(enumerate(cand)), alpha=ALPHA)
    return {
        "paired (ours)": paired.regressed,
        "unpaired z": bool(se > 0 and (acc_c - acc_b) / se < -Z),
        "relative 8 %": bool(acc_c < acc_b * 0.92),
        "absolute 2 pts": bool(acc_c < acc_b - 0.02),
    }


def rate(make_candidate, n: int, full: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    hits: dict[str, int] = {}
    for _ in range(TRIALS):
        base = full[rng.choice(len(full), size=n, replace=False)] if n < len(full) else full
        for name, alarm in rules(base, make_candidate(base)).items():
            hits[name] = hits.get(name, 0) + alarm
    return {name: count / TRIALS for name, count in hits.items()}


def paired_mde(n: int, full: np.ndarray, rng: np.random.Generator) -> float:
    """Our rule's MDE for this n under the benchmark's noise, from one unchanged trial."""
    base = full[rng.choice(len(full), size=n, replace=False)] if n < len(full) else full
    return compare_samples(dict(enumerate(base)), dict(enumerate(flip(base, DROP_NOISE, rng))),
                           alpha=ALPHA).mde


def main() -> None:
    if not DATA.exists():
        raise SystemExit(f"needs the GSM8K outcomes at {DATA}")
    start = time.perf_counter()
    outcomes = load()
    full = outcomes[BASE_MODEL]
    rng = np.random.default_rng(0)
    rows: list[tuple[str, int, dict[str, float]]] = []
    for n in SIZES:
        for noise in NOISE:
            rows.append((f"false alarms, {noise:.0%} flips", n,
                         rate(lambda b, r=noise: flip(b, r, rng), n, full, rng)))
        for points in DROPS:
            rows.append((f"detects a {points * 100:.0f}-point drop", n,
                         rate(lambda b, p=points: flip(drop(b, p, rng), DROP_NOISE, rng), n, full,
                              rng)))
        mde = paired_mde(n, full, rng)
        rows.append((f"detects a drop of one MDE ({mde * 100:.1f} pts)", n,
                     rate(lambda b, p=mde: flip(drop(b, p, rng), DROP_NOISE, rng), n, full, rng)))
    names = list(rows[0][2])
    print(f"Verdict quality on GSM8K outcomes of {BASE_MODEL} ({TRIALS} trials per cell, "
          f"alpha = {ALPHA}, drops with {DROP_NOISE:.0%} flip noise)\n")
    header = f"{'scenario':<40} {'n':>5}  " + "  ".join(f"{n:>14}" for n in names)
    print(header)
    print("-" * len(header))
    for label, n, result in rows:
        print(f"{label:<40} {n:>5}  " + "  ".join(f"{result[k]:>14.1%}" for k in names))
    print("\nReal model pairs (candidate vs baseline, all 1,319 questions):")
    for base_name in MODELS:
        for cand_name in MODELS:
            if base_name != cand_name:
                result = compare_samples(dict(enumerate(outcomes[base_name])),
                                         dict(enumerate(outcomes[cand_name])), alpha=ALPHA)
                print(f"  {cand_name:>18} vs {base_name:<18} {result.verdict:<12} "
                      f"{result.summary()}")
    print("\nMarkdown:\n")
    print("| scenario | n | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for label, n, result in rows:
        print(f"| {label} | {n} | " + " | ".join(f"{result[k]:.1%}" for k in names) + " |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
