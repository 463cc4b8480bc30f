"""The scoring math of DESIGN.md as one torch module: exported as the ONNX graph, so the
torch path, REST, batch and Triton all compute the same numbers.

    r(c) = |G(E(s))(c) - s(c)| / r_scale
    d(c) = (D~(s, E(s))(c) - 1)^2 / d_scale       D~: D's map upsampled to H x W
    a(c) = Gaussian_sigma * [alpha d(c) + (1 - alpha) r(c)]
    A(s) = alpha mean(d) + (1 - alpha) RMS(r)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.networks import BiGAN

MARGIN = 16  # reflected context around the image: the convs' zero padding falls outside it
BLUR_RADIUS = 32  # fixed kernel half-width of the in-graph Gaussian: sigma is usable up to 8
SIGMA_MAX = BLUR_RADIUS / 4
OUTPUTS = ("score_map", "score", "reconstruction", "d_map")


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian of a runtime sigma (a graph input), sigma -> 0 tends to the
    identity. Normalised at the border (each output is a weighted mean over the pixels that
    exist), so any size works and no border pixel is counted more than once: replicate
    padding counted it up to half the kernel, making borders the maxima of normal images."""
    taps = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x.dtype).clamp(min=1e-3).reshape(1)
    k = torch.exp(-(taps**2) / (2 * s**2))
    k = k / k.sum()
    row, col = k.view(1, 1, 1, -1), k.view(1, 1, -1, 1)
    r = BLUR_RADIUS
    x = F.conv2d(F.conv2d(x, row, padding=(0, r)), col, padding=(r, 0))
    weight_w = F.conv2d(torch.ones_like(x[:1, :1, :1, :]), row, padding=(0, r))  # (1,1,1,W)
    weight_h = F.conv2d(torch.ones_like(x[:1, :1, :, :1]), col, padding=(r, 0))  # (1,1,H,1)
    return x / (weight_h * weight_w)


class AnomalyScorer(nn.Module):
    """image (N, 1, H, W) in [0, 1], alpha (), sigma () -> the four OUTPUTS."""

    def __init__(self, bigan: BiGAN, r_scale: float = 1.0, d_scale: float = 1.0):
        super().__init__()
        self.bigan = bigan
        self.stride = bigan.cfg.stride
        self.register_buffer("r_scale", torch.tensor(float(r_scale)))
        self.register_buffer("d_scale", torch.tensor(float(d_scale)))

    def terms(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Calibrated d and r maps (N, 1, H, W) and the reconstruction (N, 1, H, W)."""
        h, w = image.shape[-2:]
        m, s = MARGIN, self.stride
        x = F.pad(image, (m, m + (-(w + 2 * m)) % s, m, m + (-(h + 2 * m)) % s), mode="reflect")
        z = self.bigan.encoder(x)  # (N, C_z, H'/s, W'/s), H' = H + 2m rounded up to s
        recon = self.bigan.generator(z)[..., m : m + h, m : m + w]
        dmap = self.bigan.discriminator(x, z)  # (N, 1, H'/s, W'/s)
        dmap = F.interpolate(dmap, scale_factor=s, mode="bilinear")[..., m : m + h, m : m + w]
        d = (dmap - 1) ** 2 / self.d_scale
        r = (recon - image).abs() / self.r_scale
        return d, r, recon

    def forward(self, image: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        d, r, recon = self.terms(image)
        alpha = alpha.to(image.dtype).reshape(1)
        score_map = gaussian_blur(alpha * d + (1 - alpha) * r, sigma)
        score = alpha * d.mean(dim=(1, 2, 3)) + (1 - alpha) * r.pow(2).mean(dim=(1, 2, 3)).sqrt()
        return score_map, score, recon, d
