"""The BiGAN: encoder E, generator G and joint discriminator D, all fully convolutional.

E maps an image (N, 1, H, W) to a latent map (N, C_z, H/s, W/s); G maps it back; D scores
an (image, latent) pair with a map (N, 1, H/t, W/t), t = disc_stride, and no sigmoid
(least-squares GAN).
H and W must be multiples of the stride s; `scoring.AnomalyScorer` pads to guarantee it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    1x1 convs and 1x1 convs over their concatenation, then a decoder back up to
    1/disc_stride of the image that reads the image branch's features at each level (a
    U-Net's skips). A bead a few fibre widths across spans one or two cells of the latent
    grid (1/8); at 1/4 it spans several, which is what D's defect map needs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.widths(cfg.disc_channels)
        self.stem = nn.Sequential(nn.Conv2d(1, w[0], 3, padding=1), _act())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1), _act())
            for i in range(cfg.depth)
        )
        self.latent = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, w[-1], 1), _act(), nn.Conv2d(w[-1], w[-1], 1), _act()
        )
        self.levels = list(reversed(range(cfg.disc_level, cfg.depth)))  # decoder, coarse first
        # the decoder is half as wide as the image branch: it refines where, not what
        width = [max(c // 2, 1) for c in w]
        top = width[cfg.depth] if self.levels else 1
        self.joint = nn.Sequential(
            nn.Conv2d(2 * w[-1], 2 * w[-1], 1), _act(), nn.Conv2d(2 * w[-1], top, 1)
        )
        ups, prev = [], top
        for i in self.levels:
            ups.append(nn.Sequential(_act(), nn.Conv2d(prev + w[i], width[i], 3, padding=1)))
            prev = width[i]
        self.up = nn.ModuleList(ups)
        self.out = nn.Sequential(_act(), nn.Conv2d(prev, 1, 1)) if self.levels else nn.Identity()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The image branch's maps, at strides 1, 2, ..., 2**depth."""
        feats = [self.stem(x)]
        for stage in self.down:
            feats.append(stage(feats[-1]))
        return feats

    def decode(self, feats: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """D's map (N, 1, H/disc_stride, W/disc_stride) from the image features and z."""
        h = self.joint(torch.cat([feats[-1], self.latent(z)], dim=1))
        for i, up in zip(self.levels, self.up, strict=True):
            # to the skip's own size, not twice h's: the exported graph then needs no
            # equality between the two shape expressions
            h = F.interpolate(h, size=feats[i].shape[-2:], mode="nearest")
            h = up(torch.cat([h, feats[i]], 1))
        return self.out(h)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decode(self.features(x), z)


class BiGAN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
