"""The Gaussians of the scoring graph: the smoothing of the score map (a kernel of runtime
sigma), and the normal Gaussians of the f and t terms (a squared Mahalanobis distance)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLUR_RADIUS = 32  # fixed kernel half-width of the in-graph Gaussian: sigma is usable up to 8
SIGMA_MAX = BLUR_RADIUS / 4


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


class Whitened(nn.Module):
    """Squared Mahalanobis distance of feature vectors to a Gaussian, as a 1x1 conv
    (weight L^T, bias -L^T mu, with L L^T the precision) and a sum of squares. All zero
    until `fit`: an unfitted term contributes nothing."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(channels, channels, 1, 1))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.conv2d(feats, self.weight, self.bias).pow(2).sum(dim=1, keepdim=True)

    @torch.no_grad()
    def fit(self, samples: torch.Tensor, shrink: float = 1e-3) -> None:
        """samples (M, C): mean, and covariance shrunk towards its mean variance so rare
        directions of a small sample are not trusted blindly."""
        x = samples.double()
        x = x[torch.isfinite(x).all(dim=1)]  # a diverging network's cells carry no information
        if x.shape[0] < 2:
            return  # nothing to fit: the term stays as it was
        mu, cov = x.mean(0), torch.cov(x.T)
        eye = torch.eye(cov.shape[0], dtype=cov.dtype)
        cov = cov + shrink * cov.diagonal().mean().clamp(min=1e-12) * eye
        lower = torch.linalg.cholesky(torch.linalg.inv(cov))  # precision = L L^T
        self.weight.copy_(lower.T[:, :, None, None].float())
        self.bias.copy_(-(mu @ lower).float())
