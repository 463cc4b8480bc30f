"""Least-squares GAN losses for the BiGAN, plus the reconstruction penalty.

D learns D(s, E(s)) -> 1 for encoded real images and D(G(z), z) -> 0 for generated ones;
E and G are trained against those targets (swapped), and G(E(s)) is pulled towards s.
"""

from __future__ import annotations

import torch


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
