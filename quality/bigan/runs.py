"""What the measuring scripts here read from a trained run: its scoring module, its held-out
normals at the working scale (as export calibrates on them), and a labelled test set at the
same scale."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.scale import resample, to_scale
from models.scoring import AnomalyScorer
from training.data import find_dataset, load_images, load_mask
from training.export import calibration_set
from training.refit import scorer_from_run
from training.selfcheck import POOL


def load_run(run: Path) -> tuple[AnomalyScorer, dict, list[np.ndarray]]:
    """The scorer of a run's best checkpoint (or a checkpoint file), the checkpoint, and the
    run's held-out normals zoomed to its fibre scale."""
    scorer, ckpt = scorer_from_run(run)
    scorer.eval()
    meta = ckpt["meta"]
    crop, bits = meta["train"]["crop_bottom"], meta.get("sample_bits", 16)
    held_out = calibration_set(Path(meta["data"]), crop, meta["holdout"], bits)[0]
    return scorer, ckpt, [to_scale(im, meta.get("fibre_scale", 0.0))[0] for im in held_out]


def test_set(test: Path, ckpt: dict) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each test image zoomed as the run's normals, with its defect mask (bool) at that size."""
    meta = ckpt["meta"]
    crop, bits = meta["train"]["crop_bottom"], meta.get("sample_bits", 16)
    for s in find_dataset(test, need_train=False).test:
        img = load_images([s], crop, bits)[0]
        scaled, _ = to_scale(img, meta.get("fibre_scale", 0.0))
        mask = load_mask(s.mask_path, img.shape).astype(np.float32)
        yield scaled, resample(mask, scaled.shape) > 0.5


def pool(m: np.ndarray | torch.Tensor) -> np.ndarray:
    """A map or mask (H, W) mean-pooled over the self-check's POOL x POOL cells, as it is
    scored there (a mask is then compared with 0.5)."""
    t = torch.as_tensor(np.asarray(m, np.float32))[None, None]
    return F.avg_pool2d(t, POOL)[0, 0].numpy()
