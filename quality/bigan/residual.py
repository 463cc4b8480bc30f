"""Which measure of |G(E(s)) - s| ranks defects? The networks of one trained run, no
retraining: each residual is taken on the run's held-out normals (its normal mean, as the
graph's r_scale), on the label-free self-check set and on a labelled test set, alone and in
the formula alpha d + (1 - alpha) r' at alpha 0.5, blurred at each of the graph's sigmas.
`PYTHONPATH=. python quality/bigan/residual.py RUN_DIR TEST_DIR ["d,r pixel,..."]` (the
maps to tabulate, of RESIDUALS; all by default).

The residuals: the pixel difference (what the graph computes), the same on a low-passed
pair (fibre edges that G draws a pixel off cancel), 1 - SSIM (Wang et al. 2004; a local
comparison of mean, contrast and structure, as DRAEM and RIAD score reconstructions), and
the distance of D's image features or of E's code between s and G(E(s)) (the feature
residuals of f-AnoGAN and CBiGAN).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.decision import image_decision
from models.gaussian import gaussian_blur
from models.scoring import AnomalyScorer
from quality.bigan.runs import load_run, pool, test_set
from training.metrics import aupro, auroc, pixel_auroc
from training.selfcheck import POOL, SIGMAS, selfcheck_set

RESIDUALS = (
    "d",
    "r pixel",
    "r low-passed",
    "r 1-SSIM",
    "r D-features /2",
    "r D-features /4",
    "r D-features /8",
    "r E-code",
)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_blur(x, torch.tensor(sigma, dtype=x.dtype))


def ssim_map(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of two (N, 1, H, W) images in [0, 1] (Gaussian window)."""
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _blur(a, sigma), _blur(b, sigma)
    var_a = _blur(a * a, sigma) - mu_a**2
    var_b = _blur(b * b, sigma) - mu_b**2
    cov = _blur(a * b, sigma) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )


@torch.no_grad()
def residuals(scorer: AnomalyScorer, image: np.ndarray) -> dict[str, torch.Tensor]:
    """d and each residual of one image, (H, W) each, unnormalised."""
    s = torch.from_numpy(image.astype(np.float32))[None, None]
    h, w = image.shape
    d, r, *_, recon = scorer.terms(s)
    x = scorer._pad(s)
    bigan = scorer.bigan
    z = bigan.encoder(x)
    g = bigan.generator(z)
    disc = bigan.discriminator
    out = {"d": d, "r pixel": r, "r low-passed": (_blur(recon, 2.0) - _blur(s, 2.0)).abs()}
    out["r 1-SSIM"] = (1 - ssim_map(s, recon)).clamp(min=0)
    fs, fg = disc.features(x), disc.features(g)
    for level in (1, 2, 3):
        diff = (fs[level] - fg[level]).pow(2).mean(1, keepdim=True)
        out[f"r D-features /{2**level}"] = scorer._full(diff, h, w, 2**level)
    zz = bigan.encoder(g)
    out["r E-code"] = scorer._full((z - zz).pow(2).mean(1, keepdim=True), h, w, scorer.stride)
    return {k: v[0, 0].float() for k, v in out.items()}


def figures(maps: list[np.ndarray], masks: list[np.ndarray]) -> tuple[float, float, float]:
    labels = np.array([m.any() for m in masks])
    image = auroc(labels, np.array([image_decision(m, 1 / POOL) for m in maps]))
    return image, pixel_auroc(masks, maps), aupro(masks, maps)


def table(
    name: str, per_image: list[dict], masks: list[np.ndarray], means: dict, keys: Sequence[str]
) -> None:
    masks = [pool(m) > 0.5 for m in masks]
    print(f"\n{name}: image AUROC / pixel AUROC / AUPRO@0.3, {len(masks)} images")
    print("| map | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |")
    print("|---|" + "---|" * len(SIGMAS))
    for key in keys:
        for alpha in (1.0, 0.5) if key != "d" else (1.0,):
            cells = []
            for sigma in SIGMAS:
                maps = []
                for t in per_image:
                    m = t[key] / means[key]
                    if alpha < 1:
                        m = alpha * t["d"] / means["d"] + (1 - alpha) * m
                    maps.append(pool(_blur(m[None, None], sigma)[0, 0]))
                cells.append("{:.3f} / {:.3f} / {:.3f}".format(*figures(maps, masks)))
            label = key if alpha == 1 else f"0.5 d + 0.5 {key}"
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main(run: Path, test: Path, keys: Sequence[str]) -> None:
    scorer, ckpt, normals = load_run(run)
    check = selfcheck_set(normals, scale=ckpt["meta"].get("fibre_scale", 0.0))
    normal_terms = [residuals(scorer, im) for im in normals]
    means = {k: float(torch.stack([t[k].mean() for t in normal_terms]).mean()) for k in RESIDUALS}
    print(f"{run} ({len(normals)} held-out normals, step {ckpt.get('step')})")
    check_terms = [residuals(scorer, c.image) for c in check]
    table("self-check", check_terms, [c.mask for c in check], means, keys)
    tests, masks = [], []
    for scaled, mask in test_set(test, ckpt):
        masks.append(mask)
        tests.append(residuals(scorer, scaled))
    table("test", tests, masks, means, keys)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(
        Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",") if sys.argv[3:] else RESIDUALS
    )
