"""The networks and the in-graph scoring math."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from models.config import ModelConfig
from models.networks import BiGAN
from models.scoring import BLUR_RADIUS, AnomalyScorer, gaussian_blur

CFG = ModelConfig(channels=8, latent_channels=4, disc_channels=8)


@pytest.mark.parametrize("h,w", [(24, 24), (37, 53), (64, 96), (101, 25), (256, 200)])
def test_scorer_shapes_any_size(h, w):
    scorer = AnomalyScorer(BiGAN(CFG)).eval()
    with torch.no_grad():
        score_map, score, recon, d = scorer(
            torch.rand(2, 1, h, w), torch.tensor(0.5), torch.tensor(2.0)
        )
    assert score_map.shape == recon.shape == d.shape == (2, 1, h, w)
    assert score.shape == (2,)
    assert torch.isfinite(score_map).all() and torch.isfinite(score).all()


def test_networks_follow_the_stride_contract():
    bigan = BiGAN(CFG)
    x = torch.rand(3, 1, 48, 80)
    z = bigan.encoder(x)
    assert z.shape == (3, CFG.latent_channels, 6, 10)
    assert bigan.generator(z).shape == x.shape
    assert bigan.discriminator(x, z).shape == (3, 1, 6, 10)


def test_score_is_the_design_formula():
    scorer = AnomalyScorer(BiGAN(CFG), r_scale=0.2, d_scale=3.0).eval()
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        d, r, recon = scorer.terms(x)
        _, score, recon2, d2 = scorer(x, torch.tensor(0.3), torch.tensor(1.0))
    assert torch.allclose(r, (recon - x).abs() / 0.2)
    expected = 0.3 * d.mean(dim=(1, 2, 3)) + 0.7 * r.pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(score, expected, rtol=1e-5)
    assert torch.equal(recon, recon2) and torch.equal(d, d2)


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
