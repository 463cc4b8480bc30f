"""Grey morphology of the image for the hand-made terms t and b (models.scoring).

An opening wider than a fibre erases every fibre and keeps what is wider (beads, films,
clumps, particles); a closing fills what is narrower: so the statistics see width, not just
brightness. Openings at several widths (a granulometry) tell a particle or a film from a
fibre crossing, which the narrowest opening also keeps. The statistics average over
windows, which a mat of small beads defeats: the bodies mark each bead, pixel by pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

STAT_WINDOWS = (4, 12, 28)  # local statistics over these squares, on a grid of STAT_STRIDE
STAT_STRIDE = 4  # half the latent stride: a bead of a fine mat spans a cell or two
GRANULOMETRY = (1, 2, 3, 5, 9)  # opening sides, in multiples of the side that erases a fibre
LINE = 3  # line opening length, in multiples of that side: longer than a particle is wide
BODY_LINE = 12  # the line that keeps crossings and films but no bead, in multiples of the side
STAT_MAPS = len(GRANULOMETRY) + 3  # the image, its openings, its line opening, its closing
STAT_CHANNELS = (STAT_MAPS + 1) * len(STAT_WINDOWS)  # their means, and the image's contrast
DEFAULT_FIBRE_SCALE = 4.0  # px: for a model that recorded none (the synthetic classic mat)


def opening_side(fibre_scale: float) -> int:
    """The odd side (px) of the square that erases a fibre: twice the fibre scale."""
    scale = fibre_scale if fibre_scale > 0 else DEFAULT_FIBRE_SCALE
    return max(3, round(2 * scale) | 1)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], and -inf where that falls outside x: one pad, negative
    on the side it crops."""
    return F.pad(x, (-dx, dx, -dy, dy), value=float("-inf"))


def _line_max(x: torch.Tensor, n: int, dy: int, dx: int) -> torch.Tensor:
    """Maximum over a centred line of n (odd) pixels along (dy, dx) (each -1, 0 or 1), by
    doubling: about log2(n) shifts rather than n (a max pool costs n per pixel, and the
    wide openings made it the graph's slowest part); what falls outside x does not count."""
    h, w, c = *x.shape[-2:], n // 2
    py, px = c * abs(dy), c * abs(dx)
    out, reach = F.pad(x, (px, px, py, py), value=float("-inf")), 1  # out[j]: max over the
    while 2 * reach <= n:  # steps [0, reach) from j along (dy, dx)
        out, reach = torch.maximum(out, _shift(out, reach * dy, reach * dx)), 2 * reach
    if reach < n:
        out = torch.maximum(out, _shift(out, (n - reach) * dy, (n - reach) * dx))
    top, left = py - c * dy, px - c * dx
    return out[..., top : top + h, left : left + w]


def _max(x: torch.Tensor, k: int) -> torch.Tensor:
    """Maximum over a k x k square (odd k), separable; the border uses what exists."""
    return _line_max(_line_max(x, k, 1, 0), k, 0, 1)


def opening(x: torch.Tensor, k: int) -> torch.Tensor:
    """Grey opening by a k x k square: erases bright structures narrower than k."""
    return _max(-_max(-x, k), k)


def line_opening(x: torch.Tensor, length: int) -> torch.Tensor:
    """The brightest of four grey openings by a line of about length px (horizontal,
    vertical, both diagonals): keeps fibres, and their crossings along either fibre, and
    erases bright bodies shorter than length in every direction (particles, bead cores)."""
    diagonal = max(3, round(length / 2**0.5) | 1)  # the same Euclidean length
    lines = [(length, 0, 1), (length, 1, 0), (diagonal, 1, 1), (diagonal, 1, -1)]
    return torch.stack(
        [_line_max(-_line_max(-x, n, dy, dx), n, dy, dx) for n, dy, dx in lines]
    ).amax(dim=0)


def granulometry(x: torch.Tensor, side: int) -> list[torch.Tensor]:
    """The openings of x by the GRANULOMETRY multiples of side, narrowest (side) first."""
    return [opening(x, k * side | 1) for k in GRANULOMETRY]


def bodies(wide: torch.Tensor, side: int) -> torch.Tensor:
    """Bright bodies wider than a fibre and shorter than BODY_LINE sides in every direction
    (beads, particles), per pixel, from wide, the opening by side (it erases fibres): what
    it keeps less what a line opening of it keeps (crossings, films, clumps: long in some
    direction)."""
    return (wide - line_opening(wide, BODY_LINE * side | 1)).clamp(min=0)


def local_stats(x: torch.Tensor, openings: list[torch.Tensor], side: int) -> torch.Tensor:
    """(N, 1, H, W) -> (N, STAT_CHANNELS, H/4, W/4): over squares of STAT_WINDOWS px centred
    on each cell of a STAT_STRIDE grid, the means of the image, of its openings (its
    granulometry by side), of its line opening, of its closing by side, and the image's
    standard deviation."""
    lined = line_opening(x, LINE * side | 1)
    maps = torch.cat([x, *openings, lined, -opening(-x, side), x * x], dim=1)  # x^2: contrast
    out = []
    for k in STAT_WINDOWS:
        mean = _window_mean(maps, k)
        out += [mean[:, :-1], (mean[:, -1:] - mean[:, :1] ** 2).clamp(min=0).sqrt()]
    return torch.cat(out, dim=1)


def _window_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over k x k squares on the STAT_STRIDE grid, of the pixels inside x: a column pass
    then a row pass (a clipped square is a rectangle, so this is exact), 2k reads per output
    rather than k^2."""
    pad = (k - STAT_STRIDE) // 2
    x = F.avg_pool2d(x, (k, 1), (STAT_STRIDE, 1), (pad, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, k), (1, STAT_STRIDE), (0, pad), count_include_pad=False)
