"""Generic self-supervised corruptions of normal patches (as in DRAEM's reconstructive
network): blobs of smooth random shape where the image is replaced by a flat grey, a
blurred copy, or another patch's texture. The reconstruction target stays the clean patch,
so G(E(.)) learns to restore the normal mat and its residual lights up whatever is not.
The shapes come from thresholded smooth noise: nothing here is drawn like a real defect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def corrupt(x: torch.Tensor, prob: float, g: torch.Generator) -> torch.Tensor:
    """x (B, 1, P, P) in [0, 1] -> a copy with random blobs replaced in a share `prob` of it."""
    b, _, p, _ = x.shape
    cells = max(p // 16, 2)
    noise = torch.rand(b, 1, cells, cells, generator=g)
    field = F.interpolate(noise, size=(p, p), mode="bicubic", align_corners=False)
    area = 0.02 + 0.2 * torch.rand(b, 1, 1, 1, generator=g)  # share of the patch covered
    rank = ((1 - area.view(b, 1)) * (p * p - 1)).long()
    level = field.flatten(1).sort(dim=1).values.gather(1, rank).view(b, 1, 1, 1)
    mask = (field > level).float()
    mask = mask * (torch.rand(b, 1, 1, 1, generator=g) < prob).float()
    grey = torch.rand(b, 1, 1, 1, generator=g).expand_as(x)
    blurred = F.avg_pool2d(F.pad(x, (4, 4, 4, 4), mode="reflect"), 9, stride=1)
    other = torch.rot90(x.roll(1, dims=0), 1, dims=(2, 3)) * (
        0.5 + torch.rand(b, 1, 1, 1, generator=g)
    )
    kind = torch.randint(0, 3, (b, 1, 1, 1), generator=g)
    fill = torch.where(kind == 0, grey, torch.where(kind == 1, blurred, other.clamp(0, 1)))
    opacity = 0.4 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)
    return x + (fill - x) * mask * opacity
