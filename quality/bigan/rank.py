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

from models.config import ModelConfig
from models.networks import BiGAN
from models.scale import to_scale
from models.scoring import AnomalyScorer
from training.export import calibration_set
from training.selfcheck import TERMS, choose, normalised, selfcheck_set, term_means
from training.train import CHECKPOINTS

FORMULA = ((1.0, 0.0, 0.0, 0.0),)


@torch.no_grad()
def formula_choice(ckpt: dict, check: list) -> tuple:
    bigan = BiGAN(ModelConfig.from_dict(ckpt["model_config"]))
    bigan.load_state_dict(ckpt["model"])
    scorer = AnomalyScorer(bigan, fibre_scale=ckpt["meta"].get("fibre_scale", 0.0)).eval()
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
    first = torch.load(paths[0], map_location="cpu", weights_only=False)
    meta = first["meta"]
    scale, crop = meta.get("fibre_scale", 0.0), meta["train"]["crop_bottom"]
    images = calibration_set(
        Path(meta["data"]), crop, meta["holdout"], meta.get("sample_bits", 16)
    )[0]
    check = selfcheck_set([to_scale(im, scale)[0] for im in images], scale=scale)
    print(f"{run}: the formula alone on the self-check ({len(check)} images), per checkpoint")
    print("| checkpoint | alpha | pixel AUROC | AUPRO | image AUROC | sum | the mix's w, sum |")
    print("|---|---|---|---|---|---|---|")
    best = (-np.inf, None)
    for p in paths:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
        c = formula_choice(ckpt, check)
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
