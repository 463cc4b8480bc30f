"""The BiGAN: encoder E, generator G and joint discriminator D, all fully convolutional.

E maps an image (N, 1, H, W) to a latent map (N, C_z, H/s, W/s); G maps it back; D scores
an (image, latent) pair with a map (N, 1, H/s, W/s) and no sigmoid (least-squares GAN).
H and W must be multiples of the stride s; `scoring.AnomalyScorer` pads to guarantee it.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import ModelConfig


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.widths(cfg.channels)
        layers: list[nn.Module] = [nn.Conv2d(1, w[0], 3, padding=1), _act()]
        for i in range(cfg.depth):
            layers += [nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1), _act()]
        layers.append(nn.Conv2d(w[-1], cfg.latent_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, C_z, H/s, W/s)


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.widths(cfg.channels)
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, w[-1], 3, padding=1), _act()]
        for i in reversed(range(cfg.depth)):
            # a 4x4 transposed conv costs 4 taps per output pixel, upsample + 3x3 conv 9
            layers += [nn.ConvTranspose2d(w[i + 1], w[i], 4, stride=2, padding=1), _act()]
        layers += [nn.Conv2d(w[0], 1, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (N, 1, H, W) in [0, 1]


class Discriminator(nn.Module):
    """Joint D(s, z): an image branch down to the latent resolution, a latent branch of
    1x1 convs, then 1x1 convs over their concatenation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.widths(cfg.disc_channels)
        image: list[nn.Module] = [nn.Conv2d(1, w[0], 3, padding=1), _act()]
        for i in range(cfg.depth):
            image += [nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1), _act()]
        self.image = nn.Sequential(*image)
        self.latent = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, w[-1], 1), _act(), nn.Conv2d(w[-1], w[-1], 1), _act()
        )
        self.joint = nn.Sequential(
            nn.Conv2d(2 * w[-1], 2 * w[-1], 1), _act(), nn.Conv2d(2 * w[-1], 1, 1)
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.image(x), self.latent(z)], dim=1))  # (N, 1, H/s, W/s)


class BiGAN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
