"""A run's checkpoint as a scorer: the networks, and the normal Gaussians of the f and t terms
as training fitted them, or refitted on the same images when the graph's descriptors
changed since (a run saved by an older version)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.config import ModelConfig
from models.errors import NanoinspectError
from models.networks import BiGAN
from models.scale import to_scale
from models.scoring import AnomalyScorer, fit_normal
from training.data import find_dataset, load_images
from training.train import BEST, fit_sample, latest_checkpoint


def load_checkpoint(run: Path) -> dict:
    """A checkpoint file, or a run's best one by the self-check (else its latest)."""
    path = (
        run if run.is_file() else (run / BEST if (run / BEST).is_file() else latest_checkpoint(run))
    )
    if path is None or not path.is_file():
        raise NanoinspectError(f"{run}: no checkpoint (expected RUN_DIR/checkpoints/step_*.pt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "normal_fit" not in ckpt:
        raise NanoinspectError(f"{path}: made by an older version (no normal fit): train again")
    return ckpt


def load_normal_fit(scorer: AnomalyScorer, ckpt: dict) -> None:
    """The checkpoint's fitted normal Gaussians; refitted on the images training fitted them
    on when the scoring graph's descriptors changed since (a run saved by an older version)."""
    own = scorer.state_dict()
    stored = ckpt["normal_fit"]  # None: saved on a stop signal, before any fit
    if stored is not None and all(v.shape == own[k].shape for k, v in stored.items()):
        scorer.load_state_dict(stored, strict=False)
        return
    info = ckpt["meta"]
    data = Path(info["data"])
    if not data.is_dir():
        raise NanoinspectError(
            f"the checkpoint's normal fit predates this version's statistics, and its training "
            f"data {data} is gone to refit it: train again"
        )
    layout = find_dataset(data)
    held = set(info["holdout"])
    fit = [s for s in layout.train if str(s.path.relative_to(layout.root)) not in held]
    crop, bits = info["train"]["crop_bottom"], info.get("sample_bits", 16)
    scale = info.get("fibre_scale", 0.0)
    images = [to_scale(im, scale)[0] for im in load_images(fit_sample(fit), crop, bits)]
    fit_normal(scorer, [torch.tensor(im)[None, None] for im in images])  # a copy: writable


def scorer_from_run(run: Path) -> tuple[AnomalyScorer, dict]:
    """The scoring module of a run's best checkpoint (or a checkpoint file), with its
    normal Gaussians, before calibration; and the checkpoint."""
    ckpt = load_checkpoint(run)
    bigan = BiGAN(ModelConfig.from_dict(ckpt["model_config"]))
    bigan.load_state_dict(ckpt["model"])
    scorer = AnomalyScorer(bigan, fibre_scale=ckpt["meta"].get("fibre_scale", 0.0)).eval()
    load_normal_fit(scorer, ckpt)
    return scorer, ckpt
