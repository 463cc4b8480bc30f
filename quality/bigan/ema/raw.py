"""The trained weights of a weight-averaged run, as a run of their own: RUN's best checkpoint
with its raw weights in place of their average, and no stored normal fit (export refits the
Gaussians on the training images with these weights). Exporting both runs scores the average
and the weights it averaged at the same checkpoint, from one training.
`PYTHONPATH=. python quality/bigan/ema/raw.py RUN OUT` then `nanoinspect export OUT ...`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from training.refit import load_checkpoint
from training.train import BEST


def raw_run(run: Path, out: Path) -> None:
    ckpt = load_checkpoint(run)
    if "trained" not in ckpt:
        raise SystemExit(f"{run}: no weight average (trained with ema 0)")
    ckpt["model"] = ckpt.pop("trained")
    ckpt["normal_fit"] = None
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "config.json", out / "config.json")
    torch.save(ckpt, out / BEST)


if __name__ == "__main__":
    raw_run(Path(sys.argv[1]), Path(sys.argv[2]))
