"""The scoring math of DESIGN.md as one torch module: exported as the ONNX graph, so the
torch path, REST and batch all compute the same numbers.

    r(c) = |G(E(s))(c) - s(c)| / r_scale
    d(c) = (D~(s, E(s))(c) - 1)^2 / d_scale       D~: D's map upsampled to H x W
    f(c) = Mahalanobis^2 of [E(s), D's image features](c) under a Gaussian of normal
           features, / f_scale                     (the likelihood of the latent code)
    t(c) = Mahalanobis^2 of the local statistics of the image, of its openings at several
           multiples of the fibre width and of its closing, at three window sizes, / t_scale
    b(c) = the compact bodies wider than a fibre (the opening that erases fibres, less its
           opening by a long line), / b_scale
    a(c) = Gaussian_sigma * [w_0 (alpha d + (1 - alpha) r) + w_f f + w_t t + w_b b]
    A(s) = max of a(c) off a band of EDGE px along the edge (models.decision)

Each term averages 1 on held-out normal images; the weights w are chosen by calibration
(the self-check), alpha and sigma are graph inputs. f and t are what make the map rank
defects above normal texture on mats the networks only partly learned: beads, clumps and
particles move the learned features, films and charging move the local statistics. An
opening wider than a fibre erases every fibre and keeps what is wider (beads, films, clumps,
particles); a closing fills what is narrower: so the statistics see width, not just brightness.
Openings at several widths (a granulometry) tell a particle or a film from a fibre crossing,
which the narrowest opening also keeps. The statistics average over windows, which a mat of
small beads defeats: b marks each bead, pixel by pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.decision import EDGE, MARGIN
from models.networks import BiGAN

BLUR_RADIUS = 32  # fixed kernel half-width of the in-graph Gaussian: sigma is usable up to 8
SIGMA_MAX = BLUR_RADIUS / 4
STAT_WINDOWS = (4, 12, 28)  # local statistics over these squares, on a grid of STAT_STRIDE
STAT_STRIDE = 4  # half the latent stride: a bead of a fine mat spans a cell or two
GRANULOMETRY = (1, 2, 3, 5, 9)  # opening sides, in multiples of the side that erases a fibre
LINE = 3  # line opening length, in multiples of that side: longer than a particle is wide
BODY_LINE = 12  # the line that keeps crossings and films but no bead, in multiples of the side
STAT_MAPS = len(GRANULOMETRY) + 3  # the image, its openings, its line opening, its closing
STAT_CHANNELS = (STAT_MAPS + 1) * len(STAT_WINDOWS)  # their means, and the image's contrast
DEFAULT_FIBRE_SCALE = 4.0  # px: for a model that recorded none (the synthetic classic mat)
NETWORK_REACH = 8  # latent cells: more than E, G and D see around a cell together


def skipped_terms(weights: list[float]) -> set[str]:
    """The hand-made terms (f, t, b) that weights (w_0, w_f, w_t, w_b) give nothing: an
    exported graph leaves them out, so a model pays only for the terms it uses."""
    return {k for k, w in zip("ftb", weights[1:], strict=True) if w == 0}


def reach(side: int, stride: int) -> int:
    """How far (px) from a pixel its score looks: the widest morphology (the bodies' line
    opening after the opening by side, or the widest opening and statistics window), the
    networks' receptive field, and the blur. Tiles of a large image overlap by this much."""
    morphology = max((BODY_LINE + 1) * side, GRANULOMETRY[-1] * side + STAT_WINDOWS[-1])
    return max(morphology, NETWORK_REACH * stride) + BLUR_RADIUS


def peak(score_map: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N,): the image score, the map's maximum away from a band of EDGE px
    along the edge, as models.decision.image_decision takes it (in tensor ops, so the band
    follows a dynamic H and W in the exported graph)."""
    ys = torch.arange(score_map.shape[-2], device=score_map.device)
    xs = torch.arange(score_map.shape[-1], device=score_map.device)
    band = torch.minimum(ys[-1] // 4, xs[-1] // 4).clamp(max=EDGE)
    rows = (ys >= band) & (ys <= ys[-1] - band)
    cols = (xs >= band) & (xs <= xs[-1] - band)
    inside = rows[:, None] & cols[None, :]
    return score_map.masked_fill(~inside, float("-inf")).amax(dim=(1, 2, 3))


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


class AnomalyScorer(nn.Module):
    """image (N, 1, H, W) in [0, 1], alpha (), sigma () -> models.artifact.OUTPUTS."""

    def __init__(
        self, bigan: BiGAN, r_scale: float = 1.0, d_scale: float = 1.0, fibre_scale: float = 0.0
    ):
        super().__init__()
        self.bigan = bigan
        self.stride = bigan.cfg.stride
        self.side = opening_side(fibre_scale)
        width = bigan.cfg.widths(bigan.cfg.disc_channels)[-1]
        self.features = Whitened(bigan.cfg.latent_channels + width)
        self.stats = Whitened(STAT_CHANNELS)
        self.register_buffer("r_scale", torch.tensor(float(r_scale)))
        self.register_buffer("d_scale", torch.tensor(float(d_scale)))
        self.register_buffer("f_scale", torch.tensor(1.0))
        self.register_buffer("t_scale", torch.tensor(1.0))
        self.register_buffer("b_scale", torch.tensor(1.0))
        self.register_buffer("weights", torch.tensor([1.0, 0.0, 0.0, 0.0]))  # w_0, w_f, w_t, w_b
        self.skipped: set[str] = set()  # of "f", "t", "b": terms left out of the graph

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        m, s = MARGIN, self.stride
        return F.pad(image, (m, m + (-(w + 2 * m)) % s, m, m + (-(h + 2 * m)) % s), mode="reflect")

    def _networks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Of the padded image: z = E(s), D's map, and the learned features [z, D's image
        features] on the latent grid."""
        z = self.bigan.encoder(x)  # (N, C_z, H'/s, W'/s), H' = H + 2m rounded up to s
        disc = self.bigan.discriminator
        levels = disc.features(x)
        dmap = disc.decode(levels, z)  # (N, 1, H'/t, W'/t), t = disc_stride
        return z, dmap, torch.cat([z, levels[-1]], dim=1)

    def descriptors(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the normal Gaussians are fitted on: the learned features on the latent grid
        and the local statistics on the STAT_STRIDE grid, of the padded image."""
        x = self._pad(image)
        return self._networks(x)[2], local_stats(x, granulometry(x, self.side), self.side)

    def _full(self, grid: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
        m = MARGIN
        return F.interpolate(grid, scale_factor=stride, mode="bilinear")[..., m : m + h, m : m + w]

    def terms(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Calibrated d, r, f, t and b maps (N, 1, H, W) and the reconstruction (N, 1, H, W).
        A term in `skipped` is not computed (zeros): the exported graph of a model whose
        calibration gave it no weight does not pay for it."""
        h, w = image.shape[-2:]
        m = MARGIN
        x = self._pad(image)
        z, dmap, feats = self._networks(x)
        recon = self.bigan.generator(z)[..., m : m + h, m : m + w]
        d = self._full((dmap - 1) ** 2, h, w, self.bigan.cfg.disc_stride) / self.d_scale
        r = (recon - image).abs() / self.r_scale
        f, t, b = (torch.zeros_like(d) for _ in "ftb")  # three outputs, three tensors
        if "f" not in self.skipped:
            f = self._full(self.features(feats), h, w, self.stride) / self.f_scale
        if not {"t", "b"} <= self.skipped:
            openings = granulometry(x, self.side)
            if "t" not in self.skipped:
                stats = local_stats(x, openings, self.side)
                t = self._full(self.stats(stats), h, w, STAT_STRIDE) / self.t_scale
            if "b" not in self.skipped:
                b = bodies(openings[0], self.side)[..., m : m + h, m : m + w] / self.b_scale
        return d, r, f, t, b, recon

    def forward(self, image: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        d, r, f, t, b, recon = self.terms(image)
        alpha = alpha.to(image.dtype).reshape(1)
        w = self.weights
        mixed = w[0] * (alpha * d + (1 - alpha) * r) + w[1] * f + w[2] * t + w[3] * b
        score_map = gaussian_blur(mixed, sigma)
        return score_map, peak(score_map), recon, d, f, t, b


@torch.no_grad()
def fit_normal(scorer: AnomalyScorer, images: list[torch.Tensor], max_cells: int = 200_000) -> None:
    """Fit the two Gaussians of f and t on normal images (each (1, 1, H, W)), using the
    grid cells that lie inside each image (not its reflected margin)."""
    feats, stats = [], []
    for image in images:
        h, w = image.shape[-2:]
        f, t = scorer.descriptors(image)
        feats.append(_inside(f, h, w, scorer.stride))
        stats.append(_inside(t, h, w, STAT_STRIDE))
    for term, cells in ((scorer.features, torch.cat(feats)), (scorer.stats, torch.cat(stats))):
        if cells.shape[0] > max_cells:
            pick = torch.randperm(cells.shape[0], generator=torch.Generator().manual_seed(0))
            cells = cells[pick[:max_cells]]
        term.fit(cells)


def _inside(grid: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    """The (cells, C) vectors of a (1, C, H', W') grid of this stride over the image, margin
    left out."""
    lo = MARGIN // stride
    cells = grid[..., lo : lo + -(-h // stride), lo : lo + -(-w // stride)]
    return cells.flatten(2).transpose(1, 2).reshape(-1, grid.shape[1])
