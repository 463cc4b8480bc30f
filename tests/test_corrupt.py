"""The training family of synthetic defects, and D learning to map them."""

import torch

from models.config import ModelConfig
from models.networks import BiGAN
from training.corrupt import VISIBLE, _swollen, corrupt, noise_level
from training.losses import segmentation_loss


def test_the_mask_covers_every_changed_pixel_and_only_corrupted_patches():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 96, 96, generator=g) * 0.6 + 0.1  # no fill can equal it by chance
    x_in, mask = corrupt(x, 0.5, g)
    changed = (x_in - x).abs() > 1e-6
    assert not (changed & (mask == 0)).any()
    share = mask.mean(dim=(1, 2, 3))
    assert (share < 0.25).all() and share[share > 0].median() > 0.01
    assert 0 < (share > 0).sum() < 32  # about half the patches (a swelling of noise shows little)
    clean_in, clean_mask = corrupt(x, 0.0, g)
    assert torch.equal(clean_in, x) and not clean_mask.any()


def test_a_swelling_thickens_fibres_and_leaves_bare_ground_alone():
    """The swollen fill stands for a beaded mat's spindles: a fibre grows by one to two fibre
    scales; ground far from any fibre neither changes nor is marked."""
    g = torch.Generator().manual_seed(4)
    x = 0.1 + 0.02 * torch.randn(1, 1, 64, 64, generator=g)
    x[..., 20:26] = 0.7  # a fibre two fibre scales wide
    out, rise = _swollen(x, 3.0, noise_level(x), g)  # radius 3-6 px
    assert (out >= x).all()
    # wider both ways: the full brightness reaches r past the 5x5 mean's flat top (22-23)
    assert (out[..., 19] > 0.6).all() and (out[..., 26] > 0.6).all()
    assert (out[..., 17:19] - x[..., 17:19]).mean() > 0.2 < (out[..., 27:29] - x[..., 27:29]).mean()
    assert (rise[..., 40:] < VISIBLE).all()  # far ground: below what corrupt makes or marks
    flat = 0.4 + 0.02 * torch.randn(64, 1, 48, 48, generator=g)  # no fibre anywhere
    x_in, mask = corrupt(flat, 1.0, g, scale=3.0)
    bare = mask.flatten(1).sum(1) == 0  # swellings: nothing to swell, nothing marked
    assert bare.any() and not bare.all()
    assert torch.equal(x_in[bare], flat[bare])


def test_noisy_fills_carry_the_patch_noise_that_plain_fills_lack():
    """On a noisy mat a noise-free blob is a shortcut: D could mark smoothness, not defects."""
    g = torch.Generator().manual_seed(2)
    sigma = 0.08
    x = 0.25 + sigma * torch.randn(64, 1, 96, 96, generator=g)  # no fill saturates at 1
    assert torch.allclose(noise_level(x), torch.full((64, 1, 1, 1), sigma), rtol=0.1)

    def noise_inside(noisy_fills: bool) -> torch.Tensor:
        x_in, mask = corrupt(x, 1.0, torch.Generator().manual_seed(3), noisy_fills)
        core = -torch.nn.functional.max_pool2d(-mask, 5, stride=1, padding=2)  # off the rims
        high = x_in - torch.nn.functional.avg_pool2d(x_in, 3, stride=1, padding=1)
        big = core.flatten(1).sum(1) > 50
        return torch.stack(
            [h[c > 0].abs().median() for h, c, keep in zip(high, core, big, strict=True) if keep]
        )

    # median |high-pass| of white noise is 0.64 sigma; an inverted fill at opacity 0.7-1 keeps
    # at least 0.4 of it (x + (1 - 2x) op), a plain flat or blurred fill at opacity 1 none
    assert (noise_inside(False) < 0.2 * sigma).sum() >= 5
    assert noise_inside(True).min() > 0.2 * sigma


def test_segmentation_loss_is_lowest_for_the_map_that_marks_the_blobs():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 96, 96, generator=g)
    _, mask = corrupt(x, 1.0, g)
    truth = 1 - torch.nn.functional.avg_pool2d(mask, 4)
    assert segmentation_loss(truth, mask) < 1e-12
    assert segmentation_loss(torch.ones_like(truth), mask) > 0.2  # blind to the blobs
    assert segmentation_loss(truth.flip(-1), mask) > segmentation_loss(truth, mask)


def test_d_learns_to_mark_pasted_blobs_on_patches_it_never_saw():
    """A few hundred steps of D's segmentation task alone: on fresh patches, (D - 1)^2 is
    higher inside the corrupted blobs than outside."""
    torch.manual_seed(0)
    cfg = ModelConfig(channels=8, latent_channels=4, disc_channels=8)
    bigan = BiGAN(cfg)
    opt = torch.optim.Adam(bigan.discriminator.parameters(), 2e-3)
    g = torch.Generator().manual_seed(2)

    def patches(n: int) -> torch.Tensor:  # a "mat" of thin bright lines on a dark ground
        yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
        phase = torch.rand(n, 1, 1, 1, generator=g) * 6.3
        lines = (torch.sin(xx / 2 + yy / 3 + phase) > 0.7).float()
        return (0.1 + 0.6 * lines).expand(n, 1, 48, 48)

    for _ in range(150):
        x_in, mask = corrupt(patches(16), 1.0, g)
        with torch.no_grad():
            z = bigan.encoder(x_in)
        loss = segmentation_loss(bigan.discriminator(x_in, z), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x_in, mask = corrupt(patches(16), 1.0, g)
    with torch.no_grad():
        d = (bigan.discriminator(x_in, bigan.encoder(x_in)) - 1) ** 2
    inside = torch.nn.functional.avg_pool2d(mask, cfg.disc_stride) > 0.5
    assert d[inside].mean() > 3 * d[~inside].mean()
