"""One optimisation step of the BiGAN, as training runs it and its benchmark times it."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

from models.networks import BiGAN
from training.config import TrainConfig
from training.losses import discriminator_loss, encoder_generator_loss, segmentation_loss


class EncoderGenerator(nn.Module):
    """E and G as one module so DistributedDataParallel sees one forward per backward.

    x feeds the adversarial pair (x, E(x)); x_in, a corrupted copy of x or x itself, is
    what G(E(.)) must restore to x."""

    def __init__(self, bigan: BiGAN):
        super().__init__()
        self.encoder, self.generator = bigan.encoder, bigan.generator

    def forward(self, x: torch.Tensor, x_in: torch.Tensor, z_prior: torch.Tensor):
        z = self.encoder(x)
        z_in = z if x_in is x else self.encoder(x_in)
        return z, z_in, self.generator(z_in), self.generator(z_prior)


def optimise(
    eg: nn.Module,
    disc: nn.Module,
    opts: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    batch: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor],
    cfg: TrainConfig,
    autocast: AbstractContextManager,
) -> dict[str, torch.Tensor]:
    """D's step, then E and G's, on batch = (x, x_in, mask, z_prior); x_in None: no
    corruption (nothing to restore, nothing for D to segment). Returns the losses."""
    opt_d, opt_eg = opts
    x, x_in, mask, z_prior = batch
    corrupted = x_in is not None
    with autocast:
        z, z_in, recon, fake = eg(x, x_in if corrupted else x, z_prior)
        images, codes = [x, fake.detach()], [z.detach(), z_prior]
        if corrupted:  # D also sees the corrupted patches, and must say where they changed
            images, codes = [*images, x_in], [*codes, z_in.detach()]
        d_out = disc(torch.cat(images), torch.cat(codes)).float().chunk(len(images))
        loss_adv = discriminator_loss(d_out[0], d_out[1])
        loss_seg = segmentation_loss(d_out[2], mask) if corrupted else torch.zeros(())
        loss_d = loss_adv + cfg.lambda_seg * loss_seg
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    with autocast:
        d_real, d_fake = disc(torch.cat([x, fake]), torch.cat([z, z_prior])).float().chunk(2)
        loss_eg, rec = encoder_generator_loss(d_real, d_fake, recon.float(), x, cfg.lambda_rec)
    opt_eg.zero_grad(set_to_none=True)
    loss_eg.backward()
    opt_eg.step()
    return {"loss_d": loss_adv, "seg": loss_seg, "loss_eg": loss_eg, "rec": rec}
