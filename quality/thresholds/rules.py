"""Image thresholds by two rules, judged on the test normals and defects that scores.py wrote:
false alarms at the model's own pair, normals whose decision flips at some calibrated
override, and the share of defects found. Usage: python quality/thresholds/rules.py JSON..."""

import json
import sys
from pathlib import Path

import numpy as np

from training.calibrate import tail_bound


def highest(h: np.ndarray, fpr: float) -> float:
    """The former rule: the empirical (1 - fpr) quantile, taken at a score one normal has."""
    return float(np.quantile(h, 1 - fpr, method="higher"))


def judge(path: str, rule, fpr_own: float, fpr_override: float) -> str:
    d = json.loads(Path(path).read_text())
    own = f"{d['own'][0]},{d['own'][1]}"
    pairs = {k: {n: np.array(v) for n, v in row.items()} for k, row in d["pairs"].items()}
    base = pairs[own]
    tau = rule(base["held"], fpr_own)
    decided = base["good"] > tau
    flipped: set[int] = set()
    found = []
    for key, row in pairs.items():
        if key == own:
            continue
        at = rule(row["held"], fpr_override)
        flipped |= set(np.flatnonzero((row["good"] > at) != decided))
        found.append(np.mean(row["bad"] > at))
    return (
        f"| {path} | {len(base['held'])} | {tau:.3f} | {decided.sum()} of {len(decided)} | "
        f"{np.mean(base['bad'] > tau):.2f} | {len(flipped)} | {np.mean(found):.2f} |"
    )


if __name__ == "__main__":
    head = "| scores | held-out | tau | false alarms | defects found | flips | found at overrides |"
    for name, rule, fo in (
        ("highest", highest, 0.05),
        ("bound", tail_bound, 0.05),
        ("bound, overrides at 0.01", tail_bound, 0.01),
    ):
        print(f"\n{name}\n\n{head}\n|---|---|---|---|---|---|---|")
        for path in sys.argv[1:]:
            print(judge(path, rule, 0.05, fo))
