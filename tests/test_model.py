"""The networks and the in-graph scoring math."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from models.config import ModelConfig
from models.decision import image_decision
from models.gaussian import BLUR_RADIUS, Whitened, gaussian_blur
from models.morphology import (
    STAT_STRIDE,
    STAT_WINDOWS,
    bodies,
    granulometry,
    line_opening,
    local_stats,
    opening,
    opening_side,
)
from models.networks import BiGAN
from models.scoring import AnomalyScorer, fit_normal, mix, peak

CFG = ModelConfig(channels=8, latent_channels=4, disc_channels=8)


@pytest.mark.parametrize("h,w", [(24, 24), (37, 53), (64, 96), (101, 25), (256, 200)])
def test_scorer_shapes_any_size(h, w):
    scorer = AnomalyScorer(BiGAN(CFG)).eval()
    with torch.no_grad():
        score_map, score, recon, *maps = scorer(
            torch.rand(2, 1, h, w), torch.tensor(0.5), torch.tensor(2.0)
        )
    assert len(maps) == 4  # d, f, t, b
    assert all(m.shape == (2, 1, h, w) for m in [score_map, recon, *maps])
    assert score.shape == (2,)
    assert torch.isfinite(score_map).all() and torch.isfinite(score).all()


def test_networks_follow_the_stride_contract():
    bigan = BiGAN(CFG)
    x = torch.rand(3, 1, 48, 80)
    z = bigan.encoder(x)
    assert z.shape == (3, CFG.latent_channels, 6, 10)
    assert bigan.generator(z).shape == x.shape
    assert bigan.discriminator(x, z).shape == (3, 1, 12, 20)  # 1/disc_stride: 1/4
    coarse = BiGAN(ModelConfig(channels=8, latent_channels=4, disc_channels=8, disc_stride=8))
    assert coarse.discriminator(x, coarse.encoder(x)).shape == (3, 1, 6, 10)


@pytest.mark.parametrize("disc_stride", [0, 3, 16])
def test_config_refuses_a_disc_stride_that_is_no_level(disc_stride):
    with pytest.raises(ValueError, match="disc_stride"):
        ModelConfig(disc_stride=disc_stride)


@pytest.mark.parametrize("h,w", [(40, 56), (200, 130)])
def test_score_is_the_design_formula_and_its_peak_the_image_score(h, w):
    scorer = AnomalyScorer(BiGAN(CFG), r_scale=0.2, d_scale=3.0).eval()
    x = torch.rand(2, 1, h, w)
    with torch.no_grad():
        d, r, _, _, _, recon = scorer.terms(x)
        smap, score, recon2, d2, *_ = scorer(x, torch.tensor(0.3), torch.tensor(0.0))
    assert torch.allclose(r, (recon - x).abs() / 0.2)
    assert torch.allclose(smap, 0.3 * d + 0.7 * r, rtol=1e-5, atol=1e-6)  # w = 1, 0, 0, 0
    expected = [image_decision(smap[i, 0].numpy()) for i in range(2)]
    assert np.allclose(score.numpy(), expected)
    assert torch.equal(recon, recon2) and torch.equal(d, d2)


def test_the_self_checks_order_blur_then_mix_gives_the_graphs_map():
    """The self-check and calibration blur each term once per sigma and mix afterwards,
    with the graph's own functions: the same map and peak as the graph's, at any weights."""
    scorer = AnomalyScorer(BiGAN(CFG), fibre_scale=2.0).eval()
    fit_normal(scorer, [torch.rand(1, 1, 64, 64) for _ in range(3)])
    scorer.weights.copy_(torch.tensor([0.25, 0.25, 0.25, 0.25]))
    x = torch.rand(2, 1, 72, 88)
    with torch.no_grad():
        smap, score, *_ = scorer(x, torch.tensor(0.3), torch.tensor(3.0))
        blurred = [gaussian_blur(term, torch.tensor(3.0)) for term in scorer.terms(x)[:-1]]
    again = mix((0.25, 0.25, 0.25, 0.25), 0.3, *blurred)
    assert torch.allclose(again, smap, rtol=1e-5, atol=1e-5)
    assert torch.allclose(peak(again), score, rtol=1e-5, atol=1e-5)


def test_whitened_term_is_the_mahalanobis_distance():
    """The 1x1-conv form equals (x - mu)^T Sigma^-1 (x - mu) of the fitted Gaussian."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 5))
    samples = torch.from_numpy(rng.normal(size=(4000, 5)) @ mixing + 3.0).float()
    term = Whitened(5)
    term.fit(samples, shrink=0.0)
    x = torch.from_numpy(rng.normal(size=(7, 5)) * 4).float()
    mu, cov = samples.double().mean(0), torch.cov(samples.double().T)
    v = x.double() - mu
    expected = (v @ torch.linalg.inv(cov) * v).sum(1)
    got = term(x[:, :, None, None])[:, 0, 0, 0].double()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_fitted_terms_light_up_what_normal_images_never_show():
    """After fit_normal on mats, f averages its dimension on the images it was fitted on (a
    squared Mahalanobis distance does) and a flat square (a film) stands out in t against
    the rest of the image; an unfitted scorer has both terms at zero."""
    from training.synth import draw_normal

    rng = np.random.default_rng(1)
    torch.manual_seed(0)  # the networks' random init, whatever ran before
    scorer = AnomalyScorer(BiGAN(CFG)).eval()
    image = torch.from_numpy(draw_normal(rng, 128, 128))[None, None]
    with torch.no_grad():
        assert scorer.terms(image)[2].abs().max() == 0 and scorer.terms(image)[3].abs().max() == 0
        fitted = [torch.from_numpy(draw_normal(rng, 128, 128))[None, None] for _ in range(4)]
        fit_normal(scorer, fitted)
        lo, hi = 2, 2 + 128 // 8  # latent cells inside the image, past the reflected margin
        on_fit = [
            scorer.features(scorer.descriptors(x)[0])[..., lo:hi, lo:hi].mean() for x in fitted
        ]
        odd = image.clone()
        odd[..., 40:80, 40:80] = 0.45
        _, _, f, t, _, _ = scorer.terms(odd)
    inside, outside = (slice(48, 72), slice(48, 72)), (slice(0, 24), slice(100, 128))
    assert t[0, 0][inside].mean() > 5 * t[0, 0][outside].mean()
    channels = scorer.features.bias.numel()
    assert 0.9 * channels < float(torch.stack(on_fit).mean()) < 1.1 * channels
    assert torch.isfinite(f).all() and f.min() >= 0


@pytest.mark.parametrize("length", [3, 9, 27])
def test_line_opening_is_scipys_over_four_orientations(length):
    """The doubling shifts give exactly scipy's erosion then dilation by each line (what
    lies outside the image not counted), the brightest of the four kept."""
    x = np.random.default_rng(length).random((41, 57)).astype(np.float32)
    diagonal = max(3, round(length / 2**0.5) | 1)
    lines = [
        np.ones((1, length), bool),
        np.ones((length, 1), bool),
        np.eye(diagonal, dtype=bool),
        np.fliplr(np.eye(diagonal, dtype=bool)),
    ]
    expected = np.max(
        [
            ndi.grey_dilation(
                ndi.grey_erosion(x, footprint=f, mode="constant", cval=np.inf),
                footprint=f,
                mode="constant",
                cval=-np.inf,
            )
            for f in lines
        ],
        axis=0,
    )
    got = line_opening(torch.from_numpy(x)[None, None], length)[0, 0].numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("h,w", [(37, 53), (64, 96), (9, 30)])
def test_window_means_are_the_square_means_of_the_pixels_inside(h, w):
    """The separable window mean gives each window's mean over the pixels inside the image,
    as a square average pool that leaves out its padding does."""
    x = torch.rand(1, 1, h, w)
    stats = local_stats(x, granulometry(x, 3), 3)
    per_window = stats.shape[1] // len(STAT_WINDOWS)
    for i, k in enumerate(STAT_WINDOWS):
        pad = (k - STAT_STRIDE) // 2
        expected = torch.nn.functional.avg_pool2d(x, k, STAT_STRIDE, pad, count_include_pad=False)
        torch.testing.assert_close(stats[:, i * per_window : i * per_window + 1], expected)


def test_line_opening_keeps_fibres_and_erases_particles():
    """A straight fibre, at any of the orientations, survives; a disc narrower than the line
    in every direction (a particle) goes."""
    yy, xx = np.mgrid[:80, :80]
    fibres = (np.abs(yy - xx) < 3) | (np.abs(yy - 20) < 3)  # a diagonal and a horizontal
    particle = (yy - 60) ** 2 + (xx - 20) ** 2 < 7**2
    x = torch.from_numpy((fibres | particle).astype(np.float32))[None, None]
    kept = line_opening(x, 27)[0, 0].numpy()
    assert kept[fibres & ~particle].min() == 1.0
    assert kept[55:66, 15:26].max() == 0.0


def test_bodies_mark_beads_and_particles_not_fibres_or_crossings():
    """On straight fibres narrower than the opening, crossing at 45 and 90 degrees and touching
    side by side, on a long wide band (a film) and on a speck narrower than a fibre, b is
    zero; a spindle on a fibre (a bead) and a disc (a particle) light up."""
    yy, xx = np.mgrid[:160, :160]
    fibres = (np.abs(yy - xx) < 2.5) | (np.abs(yy - 40) < 2.5) | (np.abs(xx - 120) < 2.5)
    fibres |= np.abs(xx - 126) < 2.5  # a second fibre touching the vertical one
    band = (yy >= 60) & (np.abs(xx - 21) < 7)
    speck = (np.abs(yy - 100) < 2) & (np.abs(xx - 60) < 2)
    bead = ((xx - 80) / 9.0) ** 2 + ((yy - 40) / 5.5) ** 2 < 1  # on the horizontal fibre
    particle = (yy - 140) ** 2 + (xx - 80) ** 2 < 6**2
    x = torch.from_numpy((fibres | band | speck | bead | particle).astype(np.float32))
    side = opening_side(3.0)
    b = bodies(opening(x[None, None], side), side)[0, 0].numpy()
    assert b[(fibres | band | speck) & ~ndi.binary_dilation(bead, iterations=2)].max() == 0.0
    assert b[bead].mean() > 0.5 and b[particle].mean() > 0.5


def test_blur_is_normalised_and_tends_to_identity():
    x = torch.rand(1, 1, 30, 40)
    assert torch.allclose(gaussian_blur(x, torch.tensor(0.0)), x, atol=1e-6)
    blurred = gaussian_blur(x, torch.tensor(3.0))
    assert not torch.allclose(blurred, x, atol=1e-3)
    const = torch.full((1, 1, 20, 20), 0.7)
    assert torch.allclose(gaussian_blur(const, torch.tensor(2.5)), const, atol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 8.0])
def test_blur_weighs_only_existing_pixels_at_the_border(sigma):
    """A weighted mean over the pixels inside the image, as scipy computes it: a hot border
    row is not replicated into the kernel's outside half (it made borders the maxima)."""
    x = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    x[0] += 3.0
    truncate = BLUR_RADIUS / sigma
    expected = ndi.gaussian_filter(x, sigma, mode="constant", truncate=truncate)
    expected /= ndi.gaussian_filter(np.ones_like(x), sigma, mode="constant", truncate=truncate)
    got = gaussian_blur(torch.from_numpy(x)[None, None], torch.tensor(sigma))[0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="widht"):
        ModelConfig.from_dict({"widht": 3})
    assert ModelConfig.from_dict(CFG.to_dict()) == CFG
