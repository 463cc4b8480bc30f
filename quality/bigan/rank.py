"""Which checkpoint would the formula alone choose? Training ranks each checkpoint by the
self-check's best mix of all terms; the statistics and bodies terms do not change with the
networks, so where they lead, every checkpoint ties on them and the BiGAN's share decides
little. This ranks a run's saved checkpoints by the formula's map alone (weights 1, 0, 0, 0,
the self-check's alphas, sigma 4, as training ranks): no retraining.
`PYTHONPATH=. python quality/bigan/rank.py RUN_DIR`; then `nanoinspect export CHECKPOINT`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from models.scoring import AnomalyScorer
from quality.bigan.runs import load_run
from training.refit import scorer_from_run
from training.selfcheck import TERMS, Choice, choose, normalised, selfcheck_set, term_means
from training.train import CHECKPOINTS

FORMULA = ((1.0, 0.0, 0.0, 0.0),)


@torch.no_grad()
def formula_choice(scorer: AnomalyScorer, check: list) -> Choice:
    scorer.skipped = {"f", "t", "b"}  # weight 0 in the formula: zeros
    terms = []
    for s in check:
        maps = scorer.terms(torch.tensor(s.image)[None, None])[:-1]
        terms.append({k: v[0, 0].float() for k, v in zip(TERMS, maps, strict=True)})
    means = term_means([t for t, s in zip(terms, check, strict=True) if s.kind == "good"])
    masks = [s.mask for s in check]
    return choose(normalised(terms, means), masks, sigmas=(4.0,), weights=FORMULA)[0]


def main(run: Path) -> None:
    paths = sorted((run / CHECKPOINTS).glob("step_*.pt"))
    _, ckpt, normals = load_run(run)
    check = selfcheck_set(normals, scale=ckpt["meta"].get("fibre_scale", 0.0))
    print(f"{run}: the formula alone on the self-check ({len(check)} images), per checkpoint")
    print("| checkpoint | alpha | pixel AUROC | AUPRO | image AUROC | sum | the mix's w, sum |")
    print("|---|---|---|---|---|---|---|")
    best = (-np.inf, None)
    for p in paths:
        scorer, ckpt = scorer_from_run(p)
        c = formula_choice(scorer, check)
        mixed = ckpt.get("self_check") or {}
        quality = sum(mixed.get(k, np.nan) for k in ("pixel_auroc", "aupro", "image_auroc"))
        print(
            f"| {p.name} | {c.alpha:g} | {c.pixel_auroc:.3f} | {c.aupro:.3f} | "
            f"{c.image_auroc:.3f} | {c.quality:.3f} | {mixed.get('weights')}, {quality:.3f} |",
            flush=True,
        )
        best = max(best, (c.quality, p), key=lambda b: b[0])
    print(f"best by the formula: {best[1]}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
