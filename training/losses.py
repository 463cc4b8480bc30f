"""Least-squares GAN losses for the BiGAN, plus the reconstruction penalty.

D learns D(s, E(s)) -> 1 for encoded real images and D(G(z), z) -> 0 for generated ones;
E and G are trained against those targets (swapped), and G(E(s)) is pulled towards s.
D also learns, cell by cell, 0 where a corrupted patch was changed and 1 elsewhere
(training/corrupt.py): at equilibrium the adversarial game alone leaves D's map saying
little about a real image, and this makes (D - 1)^2 a defect map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((d_real - 1).pow(2).mean() + d_fake.pow(2).mean())


def encoder_generator_loss(
    d_real: torch.Tensor,
    d_fake: torch.Tensor,
    recon: torch.Tensor,
    image: torch.Tensor,
    lambda_rec: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, reconstruction term): adversarial, targets swapped, + lambda |G(E(s)) - s|."""
    rec = (recon - image).abs().mean()
    adv = 0.5 * (d_real.pow(2).mean() + (d_fake - 1).pow(2).mean())
    return adv + lambda_rec * rec, rec


def segmentation_loss(d_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least squares of D's map (N, 1, H/t, W/t) towards 1 - the share of each cell that a
    corruption changed (mask (N, 1, H, W)); corrupted and clean cells weigh half each, as
    a defect covers a few percent of a patch."""
    cell = mask.shape[-1] // d_map.shape[-1]
    target = 1 - F.avg_pool2d(mask, cell)
    err = (d_map - target).pow(2)
    hit = target < 0.5
    if not hit.any():
        return err.mean()
    return 0.5 * (err[hit].mean() + err[~hit].mean())
