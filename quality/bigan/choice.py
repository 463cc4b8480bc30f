"""Does the self-check rank the formula's settings as real defects do? The networks of one
trained run, no retraining: d and r on the run's held-out normals (their means, as the
graph's scales), on the label-free self-check set (all of it, its pasted shapes, its
scatters of small bodies) and on a labelled test set; the formula alpha d + (1 - alpha) r
at every alpha of ALPHAS and sigma of SIGMAS, each scored by the self-check's quality
(pixel AUROC + AUPRO + image AUROC of the image decision). Prints each set's table, which
cell each set picks, what that cell scores on the test set, and the rank correlation of each
part of the self-check with the test set over the cells.
`PYTHONPATH=. python quality/bigan/choice.py RUN_DIR_OR_CHECKPOINT TEST_DIR [VARIANTS]` (names
of VARIANTS, comma-separated; all by default).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from models.decision import image_decision
from models.gaussian import gaussian_blur
from models.morphology import DEFAULT_FIBRE_SCALE
from quality.bigan.runs import load_run, pool, test_set
from training import selfcheck
from training.metrics import aupro, auroc, pixel_auroc
from training.selfcheck import AREA, FILLS, POOL, SCATTER_SHARE, selfcheck_set

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SIGMAS = (1.0, 2.0, 4.0, 8.0)
TEXTURES = ("closing", "dilation", "dome")
SMALL = (1.5e-4, AREA[1])  # shapes down to a bead's size (a few fibre widths across)
# (name, the shapes' fills, pasted copies per normal, the shapes' areas): the self-check as
# it is, and variants
VARIANTS = (
    ("self-check", FILLS, 2, AREA),
    ("no offsets x4", tuple(f for f in FILLS if f not in ("brighter", "darker")), 4, AREA),
    ("all fills x4", FILLS, 4, AREA),
    ("textures x4", TEXTURES, 4, AREA),
    ("small x4", FILLS, 4, SMALL),
    ("small textures x4", TEXTURES, 4, SMALL),
)
_fill = selfcheck._fill
_scale = [DEFAULT_FIBRE_SCALE]  # the run's fibre scale, for the texture fills


def _texture_fill(
    rng: np.random.Generator, image: np.ndarray, soft: np.ndarray, grain: np.ndarray
) -> np.ndarray:
    """The self-check's fills, or fills unlike any training corruption: the voids closed
    over fibre-sized gaps (a film), the fibres thickened (fused, a clump)."""
    fills = selfcheck.FILLS
    kind = fills[rng.integers(len(fills))]
    if kind not in ("closing", "dilation"):
        selfcheck.FILLS = (kind,)
        try:
            return _fill(rng, image, soft, grain)
        finally:
            selfcheck.FILLS = fills
    if kind == "closing":
        k = max(3, round(rng.uniform(3, 6) * _scale[0]))
        new = ndi.grey_closing(image, size=(k, k)) + grain
    else:
        k = max(2, round(rng.uniform(1.5, 3) * _scale[0]))
        new = ndi.grey_dilation(image, size=(k, k))
    return np.clip(image + (new - image) * soft, 0, 1).astype(np.float32)


selfcheck._fill = _texture_fill


@torch.no_grad()
def _terms(scorer, image: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per sigma, d and r blurred by the graph's Gaussian and pooled."""
    s = torch.from_numpy(image.astype(np.float32))[None, None]
    d, r, *_ = scorer.terms(s)
    stack = torch.cat([d, r]).float()  # (2, 1, H, W)
    out = {}
    for sigma in SIGMAS:
        b = F.avg_pool2d(gaussian_blur(stack, torch.tensor(sigma)), POOL)[:, 0].numpy()
        out[sigma] = (b[0], b[1])
    return out


def _grid(terms: list[dict], masks: list[np.ndarray], means: tuple[float, float]) -> np.ndarray:
    """(alphas, sigmas, 3): image AUROC, pixel AUROC, AUPRO of each cell."""
    labels = np.array([m.any() for m in masks])
    out = np.zeros((len(ALPHAS), len(SIGMAS), 3))
    for i, alpha in enumerate(ALPHAS):
        for j, sigma in enumerate(SIGMAS):
            maps = [
                alpha * t[sigma][0] / means[0] + (1 - alpha) * t[sigma][1] / means[1] for t in terms
            ]
            image = np.array([image_decision(m, 1 / POOL) for m in maps])
            out[i, j] = auroc(labels, image), pixel_auroc(masks, maps), aupro(masks, maps)
    return out


def _print(name: str, grid: np.ndarray) -> None:
    print(f"\n{name}: image AUROC / pixel AUROC / AUPRO@0.3 (sum)")
    print("| alpha | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |")
    print("|---|" + "---|" * len(SIGMAS))
    for i, alpha in enumerate(ALPHAS):
        cells = ["{:.3f} / {:.3f} / {:.3f} ({:.3f})".format(*g, g.sum()) for g in grid[i]]
        print(f"| {alpha:g} | " + " | ".join(cells) + " |", flush=True)


def main(run: Path, test: Path, variants: Sequence[str]) -> None:
    scorer, ckpt, normals = load_run(run)
    scale = ckpt["meta"].get("fibre_scale", 0.0)
    _scale[0] = scale if scale > 0 else DEFAULT_FIBRE_SCALE
    normal = [_terms(scorer, im) for im in normals]
    means = tuple(float(np.mean([t[SIGMAS[0]][k].mean() for t in normal])) for k in (0, 1))
    print(f"{run} ({len(normals)} held-out normals, step {ckpt.get('step')})")
    sets: dict[str, tuple[list, list]] = {}
    for name, fills, per, area in (v for v in VARIANTS if v[0] in variants):
        selfcheck.FILLS, selfcheck.AREA = fills, area
        check = selfcheck_set(normals, scale=scale, per_image=per)
        terms = [_terms(scorer, c.image) for c in check]
        sets[name] = (terms, [pool(c.mask) > 0.5 for c in check])
        if name != "self-check":
            continue
        # which pasted copies are scatters: selfcheck_set's first draw from each generator
        scatter = [
            np.random.default_rng([0, i, k]).uniform() < SCATTER_SHARE
            for i in range(len(normals))
            for k in range(per)
        ]
        good = [i for i, c in enumerate(check) if c.kind == "good"]
        pasted = [i for i, c in enumerate(check) if c.kind != "good"]
        for part, want in (("self-check shapes", False), ("self-check scatters", True)):
            keep = good + [i for i, s in zip(pasted, scatter, strict=True) if s == want]
            sets[part] = ([terms[i] for i in keep], [sets[name][1][i] for i in keep])
    tests, tmasks = [], []
    for scaled, mask in test_set(test, ckpt):
        tmasks.append(pool(mask) > 0.5)
        tests.append(_terms(scorer, scaled))
    sets["test"] = (tests, tmasks)
    grids = {name: _grid(t, m, means) for name, (t, m) in sets.items()}
    for name, grid in grids.items():
        _print(name, grid)
    test_sum = grids["test"].sum(-1).ravel()
    print("\n| ranked by | picks (alpha, sigma) | on test | Spearman with test |")
    print("|---|---|---|---|")
    for name, grid in grids.items():
        q = grid.sum(-1)
        i, j = np.unravel_index(np.argmax(q), q.shape)
        rho = spearmanr(q.ravel(), test_sum).statistic
        fig = "{:.3f} / {:.3f} / {:.3f}".format(*grids["test"][i, j])
        print(f"| {name} | {ALPHAS[i]:g}, {SIGMAS[j]:g} | {fig} | {rho:.2f} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        sys.argv[3].split(",") if sys.argv[3:] else [v[0] for v in VARIANTS],
    )
