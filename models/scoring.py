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

With `views` above 1, D's map and the restoration G(E(s)) are each the mean over that many
flips of the image (FLIPS), each flipped back, and r is the residual of that restoration:
the networks trained on every flip of a patch, so each is an equally good view, and their
mean steadies the map (quality/bigan/views). Each view costs one more pass of E, G and D.

Each term averages 1 on held-out normal images; the weights w are chosen by calibration
(the self-check), alpha and sigma are graph inputs. f and t are what make the map rank
defects above normal texture on mats the networks only partly learned: beads, clumps and
particles move the learned features, films and charging move the local statistics. The
openings, the statistics and the bodies are models.morphology's; the blur and the normal
Gaussians are models.gaussian's. The mix, the blur and the peak are the functions the
self-check and calibration call on the graph's term outputs, so no second copy exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.decision import EDGE, MARGIN
from models.gaussian import BLUR_RADIUS, Whitened, gaussian_blur
from models.morphology import (
    BODY_LINE,
    GRANULOMETRY,
    STAT_CHANNELS,
    STAT_STRIDE,
    STAT_WINDOWS,
    bodies,
    granulometry,
    local_stats,
    opening_side,
)
from models.networks import BiGAN

NETWORK_REACH = 8  # latent cells: more than E, G and D see around a cell together
FLIPS = ((), (-1,), (-2,), (-2, -1))  # the views: as is, left-right, upside down, both


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


def residual(
    recon: torch.Tensor, image: torch.Tensor, r_scale: torch.Tensor | float
) -> torch.Tensor:
    """r = |G(E(s)) - s| / r_scale: the graph's, and calibration's from the graph's
    `reconstruction` output (alpha mixes r into the map, so r has no output of its own)."""
    return (recon - image).abs() / r_scale


def mix(
    weights: torch.Tensor | Sequence[float],
    alpha: torch.Tensor | float,
    d: torch.Tensor,
    r: torch.Tensor,
    f: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor,
) -> torch.Tensor:
    """The terms' weighted sum, before the blur: w_0 (alpha d + (1 - alpha) r) + w_f f +
    w_t t + w_b b. Linear in the terms, as the blur is, so the self-check blurs each term
    once per sigma and mixes afterwards."""
    w = weights
    return w[0] * (alpha * d + (1 - alpha) * r) + w[1] * f + w[2] * t + w[3] * b


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
        self.views = 1  # how many of FLIPS d and r are averaged over

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
        flips = FLIPS[: self.views]
        views = torch.cat([image, *(image.flip(f) for f in flips[1:])]) if flips[1:] else image
        x = self._pad(views)  # (V N, 1, H', W'): the V views of each image
        z, dmap, feats = self._networks(x)
        recon = self.bigan.generator(z)[..., m : m + h, m : m + w]
        d = self._full((dmap - 1) ** 2, h, w, self.bigan.cfg.disc_stride) / self.d_scale
        if len(flips) > 1:  # each view's maps flipped back, and averaged
            d, recon = (self._unflip(v, flips) for v in (d, recon))
            x, feats = x[: image.shape[0]], feats[: image.shape[0]]
        r = residual(recon, image, self.r_scale)
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

    @staticmethod
    def _unflip(maps: torch.Tensor, flips: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """(V N, 1, H, W) maps of the V views -> (N, 1, H, W): each flipped back, averaged."""
        per_view = maps.reshape(len(flips), -1, *maps.shape[1:])
        return torch.stack(
            [v.flip(f) if f else v for v, f in zip(per_view, flips, strict=True)]
        ).mean(0)

    def forward(self, image: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        d, r, f, t, b, recon = self.terms(image)
        mixed = mix(self.weights, alpha.to(image.dtype).reshape(1), d, r, f, t, b)
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
