"""How often does each regression rule cry wolf, and how often does it catch a real drop?

Run from the repository root:  python benchmarks/verdict_quality.py

Starts from REAL per-question outcomes (GSM8K, one GPT-3 model, 1,319 questions, from
shared/data/gsm8k/example_model_solutions.jsonl) and simulates, at n = 100, 500 and 1,319
questions (subsampled) and per-sample evaluation noise of 1, 3 and 5 % (each answer of each run
flips right <-> wrong with that probability, independently in baseline and candidate):

- false alarms: an unchanged model ("regressed" only; inconclusive is not an alarm);
- detection: a true drop of 1, 2 and 5 points (that many right answers made wrong, plus the
  noise), and of one MDE: the minimum detectable effect our rule reports for such a drop (found
  by fixed-point iteration, since the drop's own flips widen the SE), aimed at the measured
  drop (noise shrinks a true drop by 1 - 2 * flips). Two powers: MDE80, the one every check
  reports (80 % power, as the statistics issue asks the report to show), and MDE95
  (``Comparison.mde_at(0.95)``, about 1.25 MDE80 at alpha = 0.01), the drop a release gate can
  count on catching 95 % of the time.

Rules side by side: ours (``compare_samples``, alpha = 0.01, tolerance 0), a relative drop of
more than 8 %, an absolute drop of more than 2 points, and the unpaired z test at the same
alpha (``compare_aggregates`` with the binomial standard errors). Then the verdicts for the real
model pairs in the file, and a markdown version of the table for the README.
Goals: false alarms <= alpha; detection >= 95 % for a drop of one MDE95 (and about 80 % for
one MDE80, which is what 80 % power means: a goal of 95 % at MDE80 would contradict it).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_modelreg.stats import Comparison, compare_aggregates, compare_samples  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "example_model_solutions.jsonl"
MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
SIMULATED = "175b_verification"  # 56 % right: the outcomes the simulation starts from
NS = (100, 500, 1319)
FLIP_RATES = (0.01, 0.03, 0.05)
DROPS = (0.01, 0.02, 0.05)
POWERS = {"-MDE80": 0.8, "-MDE95": 0.95}
TRIALS = 400
NULL_TRIALS = 1200  # false alarms are judged against alpha = 1 %: they need more trials
MDE_TRIALS = 60  # per fixed-point step when sizing the one-MDE drop
ALPHA = 0.01
SEED = 20241129
RULES = ("ours", "rel -8%", "abs -2pt", "unpaired z")


def load_outcomes() -> dict[str, np.ndarray]:
    """Per model, a bool per question: was its final answer right?"""
    if not DATA.exists():
        raise SystemExit(f"real outcomes not found: {DATA}")
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return {m: np.array([bool(r[m]["is_correct"]) for r in rows]) for m in MODELS}


def binomial_se(right: np.ndarray) -> float:
    """lm-eval's stderr of a 0/1 mean: sample sd / sqrt(n)."""
    return float(right.std(ddof=1) / math.sqrt(len(right))) if len(right) > 1 else float("nan")


@dataclass(frozen=True)
class Calls:
    """Every rule's call on one baseline/candidate pair."""

    ours: Comparison
    unpaired: Comparison
    relative: bool  # dropped by more than 8 % of the baseline
    absolute: bool  # dropped by more than 2 points

    def regressed(self) -> dict[str, bool]:
        return {"ours": self.ours.verdict == "regressed", "rel -8%": self.relative,
                "abs -2pt": self.absolute, "unpaired z": self.unpaired.verdict == "regressed"}


def verdicts(keys: list[int], base: np.ndarray, cand: np.ndarray) -> Calls:
    """Every rule's call on one baseline/candidate pair of 0/1 outcome arrays."""
    ours = compare_samples(dict(zip(keys, base.astype(float).tolist(), strict=True)),
                           dict(zip(keys, cand.astype(float).tolist(), strict=True)), alpha=ALPHA)
    acc_b, acc_c = float(base.mean()), float(cand.mean())
    unpaired = compare_aggregates(acc_b, binomial_se(base), acc_c, binomial_se(cand),
                                  n=len(keys), alpha=ALPHA)
    return Calls(ours, unpaired, acc_c < acc_b * 0.92, acc_b - acc_c > 0.02)


def flip(right: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """One noisy evaluation run: each answer flips right <-> wrong with probability ``rate``."""
    return right ^ (rng.random(len(right)) < rate)


def degrade(right: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """A truly worse model: ``count`` right answers made wrong."""
    worse = right.copy()
    hits = np.flatnonzero(right)
    worse[rng.choice(hits, size=min(count, len(hits)), replace=False)] = False
    return worse


def simulate(truth: np.ndarray, n: int, rate: float, drop_for: int, rng: np.random.Generator,
             trials: int = TRIALS) -> tuple[dict[str, float], list[Comparison]]:
    """Share of trials each rule calls "regressed" when ``drop_for`` answers got worse."""
    hits = dict.fromkeys(RULES, 0)
    comparisons = []
    for _ in range(trials):
        docs = rng.choice(len(truth), size=n, replace=False)
        right = truth[docs]
        keys = docs.tolist()
        base = flip(right, rate, rng)
        cand = flip(degrade(right, drop_for, rng) if drop_for else right, rate, rng)
        called = verdicts(keys, base, cand)
        for rule, regressed in called.regressed().items():
            hits[rule] += regressed
        comparisons.append(called.ours)
    return {rule: hits[rule] / trials for rule in RULES}, comparisons


@dataclass
class Row:
    """One (n, flip rate) cell: per scenario, the share of trials each rule called regressed."""

    n: int
    rate: float
    mde: float = float("nan")  # median MDE80 our rule reports for a one-MDE80 drop
    mde95: float = float("nan")  # median MDE95 for a one-MDE95 drop
    inconclusive: float = float("nan")  # our rule on the unchanged model
    rates: dict[str, dict[str, float]] = field(default_factory=dict)


SCENARIOS = ("false alarm", "-1 pt", "-2 pt", "-5 pt", *POWERS)


def one_mde_drop(truth: np.ndarray, n: int, rate: float, start: float, power: float,
                 rng: np.random.Generator) -> tuple[int, float]:
    """(answers to degrade, reported MDE) such that the measured drop equals the MDE our rule
    reports for it: a drop adds discordant pairs, so the MDE seen under the drop is larger than
    the one seen on an unchanged model."""
    def count_for(mde: float) -> int:
        return max(1, round(mde * n / (1 - 2 * rate)))

    count, mde = count_for(start), start
    for _ in range(8):
        _, comparisons = simulate(truth, n, rate, count, rng, trials=MDE_TRIALS)
        mde = float(np.nanmedian([c.mde_at(power) for c in comparisons]))
        if count_for(mde) == count:
            break
        count = count_for(mde)
    return count, mde


def run_grid(truth: np.ndarray) -> list[Row]:
    """One row per (n, flip rate): false alarms and detection rates of every rule."""
    rng = np.random.default_rng(SEED)
    rows = []
    for n, rate in itertools.product(NS, FLIP_RATES):
        row = Row(n, rate)
        row.rates["false alarm"], comparisons = simulate(truth, n, rate, 0, rng, NULL_TRIALS)
        row.inconclusive = sum(c.verdict == "inconclusive" for c in comparisons) / NULL_TRIALS
        for drop in DROPS:
            row.rates[f"-{drop * 100:g} pt"] = simulate(truth, n, rate, round(drop * n), rng)[0]
        for scenario, power in POWERS.items():
            null_mde = float(np.nanmedian([c.mde_at(power) for c in comparisons]))
            count, mde = one_mde_drop(truth, n, rate, null_mde, power, rng)
            row.rates[scenario] = simulate(truth, n, rate, count, rng)[0]
            if power == 0.8:
                row.mde = mde
            else:
                row.mde95 = mde
        rows.append(row)
        print(f"  n={n:>5} flips={rate:.0%}: done", flush=True)
    return rows


def cell(rates: dict[str, float], digits: int) -> str:
    return " / ".join(f"{100 * rates[rule]:.{digits}f}" for rule in RULES)


def print_console(rows: list[Row]) -> None:
    print(f"\nRegressed calls, % of trials ({NULL_TRIALS} for false alarms, {TRIALS} otherwise): "
          f"{' / '.join(RULES)}")
    header = f"{'n':>5} {'flips':>5} {'MDE80':>6} {'MDE95':>6} " + " ".join(
        f"{s:>25}" for s in SCENARIOS)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = " ".join(f"{cell(row.rates[s], 1):>25}" for s in SCENARIOS)
        print(f"{row.n:>5} {row.rate:>5.0%} {100 * row.mde:>6.2f} {100 * row.mde95:>6.2f} {cells}")
    print("\nOur rule on the unchanged model, share 'inconclusive' (with T = 0 only a significant "
          "gain or identical outcomes pass):")
    print("  " + ", ".join(f"n={r.n}/{r.rate:.0%}: {r.inconclusive:.0%}" for r in rows))


def judge_goals(rows: list[Row]) -> list[str]:
    """Plain statements of which goals are met, with Monte Carlo error taken into account."""
    lines = []
    over = [row for row in rows if row.rates["false alarm"]["ours"] > ALPHA]
    if not over:
        lines.append(f"MET: our false-alarm rate is <= alpha = {ALPHA:.0%} in every cell.")
    for row in over:
        share = row.rates["false alarm"]["ours"]
        p = binomtest(round(share * NULL_TRIALS), NULL_TRIALS, ALPHA, alternative="greater").pvalue
        status = "NOT MET" if p < 0.05 else "above alpha, within Monte Carlo error"
        lines.append(f"{status}: our false-alarm rate is {share:.1%} at n={row.n}, flips "
                     f"{row.rate:.0%} (one-sided binomial p = {p:.2f} for 'rate <= {ALPHA:.0%}', "
                     f"{NULL_TRIALS} trials).")
    lines.append(detection_goal(rows, "-MDE95", 0.95))
    detected = ", ".join(f"{row.rates['-MDE80']['ours']:.0%}" for row in rows)
    lines.append(f"For reference, not a goal: detection of a one-MDE80 drop is {detected} "
                 "(80 % power promises about 80 %; McNemar's exact test, used below 30 discordant "
                 "pairs, is conservative, which costs a little power at small n).")
    return lines


def detection_goal(rows: list[Row], scenario: str, goal: float) -> str:
    """MET when every cell detects at least ``goal``, allowing for Monte Carlo error."""
    short = []
    for row in rows:
        share = row.rates[scenario]["ours"]
        p = binomtest(round(share * TRIALS), TRIALS, goal, alternative="less").pvalue
        if p < 0.05:
            short.append(f"n={row.n}/{row.rate:.0%}: {share:.0%}")
    detected = ", ".join(f"{row.rates[scenario]['ours']:.0%}" for row in rows)
    if not short:
        return (f"MET: detection of a one-{scenario[1:]} drop is >= {goal:.0%} in every cell "
                f"(within Monte Carlo error; {detected}).")
    return (f"NOT MET: detection of a one-{scenario[1:]} drop is below {goal:.0%} in "
            f"{', '.join(short)} (one-sided binomial p < 0.05, {TRIALS} trials).")


def print_real_pairs(outcomes: dict[str, np.ndarray]) -> None:
    keys = list(range(len(outcomes[MODELS[0]])))
    print(f"\nReal model pairs, all {len(keys)} GSM8K test questions (candidate replaces baseline):")
    print(f"{'baseline':>18} {'candidate':>18} {'acc b':>6} {'acc c':>6} {'lost':>5} {'gained':>6}"
          f" {'ours':>13} {'method':>14} {'p':>8} {'unpaired z':>13} {'rel -8%':>8} "
          f"{'abs -2pt':>8}")
    for base_model, cand_model in itertools.permutations(MODELS, 2):
        called = verdicts(keys, outcomes[base_model], outcomes[cand_model])
        ours, unpaired = called.ours, called.unpaired
        lost, gained = ours.discordant or (-1, -1)
        print(f"{base_model:>18} {cand_model:>18} {outcomes[base_model].mean():>6.3f} "
              f"{outcomes[cand_model].mean():>6.3f} {lost:>5} {gained:>6} {ours.verdict:>13} "
              f"{ours.method:>14} {ours.p_value:>8.2g} {unpaired.verdict:>13} "
              f"{called.relative!s:>8} {called.absolute!s:>8}")


def markdown(rows: list[Row]) -> str:
    lines = [f"Share of simulated trials called **regressed**, in %, as *ours / relative −8 % / "
             f"absolute −2 pt / unpaired z* (alpha = {ALPHA}, tolerance 0; {NULL_TRIALS} trials "
             f"for false alarms, {TRIALS} for drops). Start: real per-question outcomes of "
             "GPT-3 175B (verifier) on GSM8K; noise: each answer flips with the given "
             "probability in each run. MDE: what our rule reports for a drop of that size.",
             "",
             "| n | flips | MDE80 (pt) | MDE95 (pt) | false alarm | −1 pt | −2 pt | −5 pt "
             "| −MDE80 | −MDE95 |",
             "|---:|---:|---:|---:|---|---|---|---|---|---|"]
    for row in rows:
        cells = " | ".join(cell(row.rates[s], 1 if s == "false alarm" else 0) for s in SCENARIOS)
        lines.append(f"| {row.n} | {row.rate:.0%} | {100 * row.mde:.1f} | {100 * row.mde95:.1f} "
                     f"| {cells} |")
    return "\n".join(lines)


def main() -> None:
    start = time.perf_counter()
    outcomes = load_outcomes()
    print(f"Simulating from {SIMULATED} ({outcomes[SIMULATED].mean():.1%} right), "
          f"{TRIALS} trials per cell, seed {SEED}")
    rows = run_grid(outcomes[SIMULATED])
    print_console(rows)
    print()
    for line in judge_goals(rows):
        print(line)
    print_real_pairs(outcomes)
    print("\nMarkdown (for the README):\n")
    print(markdown(rows))
    print(f"\nRuntime: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
