"""How fast D learns the training family of defects alone (no GAN game): the cell AUROC
of (D - 1)^2 on fresh corrupted patches every 50 steps, then of each fill alone.

    PYTHONPATH=. python quality/bigan/segonly.py TRAIN_DIR LR STEPS
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import training.corrupt as corrupt_module
from models.config import ModelConfig
from models.networks import BiGAN
from training.corrupt import corrupt
from training.data import PatchSampler, find_dataset, load_images
from training.losses import segmentation_loss
from training.metrics import auroc


def cell_auroc(bigan: BiGAN, x_in: torch.Tensor, mask: torch.Tensor) -> float:
    with torch.no_grad():
        d = bigan.discriminator(x_in, bigan.encoder(x_in))
    cell = F.avg_pool2d(mask, x_in.shape[-1] // d.shape[-1]) > 0.5
    return auroc(cell.flatten().numpy(), ((d - 1) ** 2).flatten().numpy())


def main(data: Path, lr: float, steps: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sampler = PatchSampler(load_images(find_dataset(data).train[:20], 0.0, 16), 96, 0)
    bigan = BiGAN(ModelConfig())
    opt = torch.optim.Adam(bigan.discriminator.parameters(), lr, (0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    began = time.time()
    for step in range(steps):
        x_in, mask = corrupt(sampler.batch(step, 16), 0.5, g)
        with torch.no_grad():
            z = bigan.encoder(x_in)
        loss = segmentation_loss(bigan.discriminator(x_in, z), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            test = corrupt(sampler.batch(99_999, 64), 1.0, g)
            print(f"step {step + 1}: cell AUROC {cell_auroc(bigan, *test):.3f}", flush=True)
    print(f"{time.time() - began:.0f} s")
    for kind in range(corrupt_module.FILL_KINDS):  # each fill alone: torch.randint picks it
        real = torch.randint
        torch.randint = lambda *a, generator=None, k=kind, real=real: (
            torch.full(a[-1], k) if len(a[-1]) == 4 else real(*a, generator=generator)
        )
        try:
            test = corrupt(sampler.batch(77_777, 64), 1.0, g)
        finally:
            torch.randint = real
        print(f"fill {kind}: cell AUROC {cell_auroc(bigan, *test):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
