"""Self-supervised corruptions of normal patches, the training family of synthetic defects:
blobs of smooth random shape (thresholded smooth noise at a coarse, middle or fine grain,
so a blob spans from a few fibre widths to half a patch) where the image is replaced by a
flat level brighter than the voids, a blurred and lifted copy, its own negative, itself
brightened, itself with noise, or its fibres swollen (grown by one to two fibre scales:
the spindles of a beaded mat are fibres locally two to three times as thick, at the
fibres' own brightness, which no other fill shows). Each is visible wherever it falls: D
is asked to mark every one (a swelling only where it shows), and a fill that can look
like normal mat (another patch's texture, a grey as dark as a void) taught it to guess.

Two networks learn from them (as DRAEM's two do): G(E(.)) restores the clean patch, so its
residual lights up what is not normal mat, and D is asked for 0 on the corrupted cells and
1 elsewhere, so (D - 1)^2 maps defects. The self-check pastes another family (ellipses,
strokes, polygons, scatters of small bodies: training/selfcheck.py), so passing it is not
the training task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.morphology import DEFAULT_FIBRE_SCALE

GRAINS = (32, 16, 8)  # px per noise cell: coarse, middle and fine blobs
FILL_KINDS = 6  # flat, blurred, inverted, brightened, noisy, swollen
SWELL = (1.0, 2.0)  # a swelling's radius, in fibre scales (models/scale.py)
VISIBLE = 0.05  # a swelling is marked where it raised the mean at least this (or the noise)


def _blobs(b: int, p: int, g: torch.Generator) -> torch.Tensor:
    """(B, 1, P, P) masks of thresholded smooth noise covering 2-22 % of each patch."""
    grain = torch.tensor(GRAINS)[torch.randint(len(GRAINS), (b,), generator=g)]
    masks = []
    for cell in grain.tolist():
        cells = max(p // cell, 2)
        noise = torch.rand(1, 1, cells, cells, generator=g)
        masks.append(F.interpolate(noise, size=(p, p), mode="bicubic", align_corners=False))
    field = torch.cat(masks)
    area = 0.02 + 0.2 * torch.rand(b, 1, generator=g)  # share of the patch covered
    rank = ((1 - area) * (p * p - 1)).long()
    level = field.flatten(1).sort(dim=1).values.gather(1, rank).view(b, 1, 1, 1)
    return (field > level).float()


def noise_level(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, 1) each patch's pixel noise as a standard deviation: the median absolute
    3x3 high-pass, which fibre edges (a small share of pixels) barely move."""
    high = x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    mad = high.abs().flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
    return 1.4826 * mad / (8 / 9) ** 0.5  # white noise: the high-pass keeps 8/9 of its variance


def _swollen(
    x: torch.Tensor, scale: float, sigma: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x with every fibre thickened: a grey dilation of radius SWELL fibre scales (one draw
    per batch) of x's 5x5 mean (a fibre is at least two scales wide, so its peak stays),
    carrying the patch's own pixel noise `sigma` (noise_level). The mean keeps the voids'
    noise from being lifted to its peaks. Also the rise, free of noise, that says where the
    swelling shows."""
    r = SWELL[0] + (SWELL[1] - SWELL[0]) * float(torch.rand(1, generator=g))
    r = max(1, round(scale * r))
    smooth = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    grown = F.max_pool2d(F.pad(smooth, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)
    grain = sigma * torch.randn(x.shape, generator=g)
    return torch.maximum(x, grown + grain), grown - smooth


def corrupt(
    x: torch.Tensor,
    prob: float,
    g: torch.Generator,
    noisy_fills: bool = False,
    scale: float = DEFAULT_FIBRE_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, 1, P, P) in [0, 1] -> (a copy with a blob replaced in a share `prob` of the
    patches, the blobs' masks (B, 1, P, P), zero where nothing was changed). With
    `noisy_fills` the smooth fills (flat, blurred) carry the patch's own pixel noise: on a
    noisy mat a real defect is as noisy as its surroundings, and a noise-free blob teaches D
    to look for smoothness instead of the defect. `scale`: the patches' fibre scale, which
    sizes the swelling."""
    b, _, p, _ = x.shape
    mask = _blobs(b, p, g) * (torch.rand(b, 1, 1, 1, generator=g) < prob).float()
    u = torch.rand(b, 5, 1, 1, generator=g)
    flat = (0.3 + 0.6 * u[:, :1]).expand_as(x)  # brighter than a void: a membrane, a blob
    blurred = F.avg_pool2d(F.pad(x, (6, 6, 6, 6), mode="reflect"), 13, stride=1) + 0.2
    sigma = noise_level(x)  # (B, 1, 1, 1): the noisy fills' grain, a swelling's threshold
    if noisy_fills:
        flat = flat + sigma * torch.randn(x.shape, generator=g)
        blurred = blurred + sigma * torch.randn(x.shape, generator=g)
    inverted = 1 - x  # a foreign texture: dark lines on a bright ground
    brighter = x * (1.2 + 0.8 * u[:, 1:2]) + 0.2
    noisy = x + (0.2 + 0.2 * u[:, 2:3]) * torch.randn(x.shape, generator=g)
    swollen, rise = _swollen(x, scale, sigma, g)
    kind = torch.randint(0, FILL_KINDS, (b, 1, 1, 1), generator=g)
    fill = torch.stack([flat, blurred, inverted, brighter, noisy, swollen]).gather(
        0, kind[None].expand(1, *x.shape)
    )[0]
    opacity = 0.7 + 0.3 * torch.rand(b, 1, 1, 1, generator=g)
    # a swelling is made, and marked, only where it shows above the pixel noise: a void far
    # from any fibre does not change
    seen = (kind != FILL_KINDS - 1) | (rise * opacity > torch.clamp(sigma, min=VISIBLE))
    mask = mask * seen.float()
    return x + (fill.clamp(0, 1) - x) * mask * opacity, mask
