"""Training speed on this CPU: steps/s of the default config (models/default.toml) in
channels-last, as training/train.py runs it, versus contiguous NCHW, side by side; and the
quality a short run reaches per minute (pixel AUROC and AUPRO of its checkpoints, scored in
torch with scales taken on held-out normal images, alpha 0.5, sigma 4).

    python -m tests.bench.bench_train [--minutes 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tests.bench.common import ROOT, THREADS, Row, alternate, median, show

SECTION = "training"


def step_fn(model_cfg, cfg, channels_last: bool):
    """One optimisation step as training/train.py takes it (D step, then E+G step), on a
    fixed random batch of normal-looking patches."""
    import torch

    from models.networks import BiGAN
    from training.corrupt import corrupt
    from training.step import EncoderGenerator, optimise

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bigan = BiGAN(model_cfg).to(memory_format=fmt)
    eg, disc = EncoderGenerator(bigan), bigan.discriminator
    opt_d = torch.optim.Adam(disc.parameters(), cfg.lr, (cfg.beta1, cfg.beta2))
    opt_eg = torch.optim.Adam([*bigan.encoder.parameters(), *bigan.generator.parameters()], cfg.lr)
    p, lat = cfg.patch_size, cfg.patch_size // model_cfg.stride
    g = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.batch_size, 1, p, p, generator=g)
    x_in, mask = corrupt(x, cfg.corrupt_prob, g)
    batch = (
        x.contiguous(memory_format=fmt),
        x_in.contiguous(memory_format=fmt),
        mask,
        torch.randn(cfg.batch_size, model_cfg.latent_channels, lat, lat, generator=g),
    )

    def step() -> None:
        optimise(eg, disc, (opt_d, opt_eg), batch, cfg, contextlib.nullcontext())

    return step


def checkpoint_quality(ckpt: Path, normals: list, tests: list) -> tuple[float, float]:
    """Pixel AUROC and AUPRO of a checkpoint on labelled test images, in torch."""
    import torch

    from models.config import ModelConfig
    from models.networks import BiGAN
    from models.scoring import AnomalyScorer
    from training.metrics import aupro, pixel_auroc
    from training.selfcheck import TERMS, term_means

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    bigan = BiGAN(ModelConfig.from_dict(state["model_config"]))
    bigan.load_state_dict(state["model"])
    scorer = AnomalyScorer(bigan).eval()
    with torch.inference_mode():
        terms = [scorer.terms(torch.from_numpy(im[None, None]))[:-1] for im in normals]
        means = term_means([dict(zip(TERMS, t, strict=True)) for t in terms])
        scorer.d_scale.fill_(means["d"])
        scorer.r_scale.fill_(means["r"])
        maps = [
            scorer(torch.from_numpy(im[None, None]), torch.tensor(0.5), torch.tensor(4.0))[0][
                0, 0
            ].numpy()
            for im, _ in tests
        ]
    masks = [m for _, m in tests]
    return pixel_auroc(masks, maps), aupro(masks, maps)


def rows(minutes: float = 1.0, repeats: int = 2) -> list[Row]:
    import torch

    from training.config import load_config
    from training.data import find_dataset, load_images, load_mask
    from training.synth import write_dataset
    from training.train import train

    torch.set_num_threads(THREADS)
    model_cfg, cfg = load_config(ROOT / "models" / "default.toml")
    n = 4  # steps per timed call
    steps = {
        "default": step_fn(model_cfg, cfg, False),
        "channels_last": step_fn(model_cfg, cfg, True),
    }
    times = alternate({k: lambda f=f: [f() for _ in range(n)] for k, f in steps.items()}, repeats)
    sps = {k: n / median(v) for k, v in times.items()}

    with tempfile.TemporaryDirectory() as tmp:
        data, val, run = Path(tmp) / "data", Path(tmp) / "val", Path(tmp) / "run"
        size = (256, 256)
        write_dataset(data, n_train=64, n_test_good=0, n_test_per_defect=0, size=size, seed=0,
                      progress=False)  # fmt: skip
        write_dataset(val, n_train=6, n_test_good=6, n_test_per_defect=3, size=size, seed=2,
                      progress=False)  # fmt: skip
        every = max(10, int(sps["default"] * 60 * minutes / 3))
        t0 = time.monotonic()
        budget = replace(cfg, checkpoint_every=every, max_steps=10**6, max_minutes=minutes)
        train(data, run, model_cfg, budget, progress=False)
        wall = time.monotonic() - t0
        layout = find_dataset(val)
        normals = load_images(layout.train, 0.0)
        tests = [
            (im, load_mask(s.mask_path, im.shape, 0.0))
            for s, im in zip(layout.test, load_images(layout.test, 0.0), strict=True)
        ]
        found = sorted((run / "checkpoints").glob("step_*.pt"))
        quality = [
            (int(p.stem.split("_")[1]), *checkpoint_quality(p, normals, tests)) for p in found
        ]
    rate = quality[-1][0] / wall
    curve = ", ".join(
        f"{s} steps ({s / rate / 60:.1f} min): {a:.3f}/{p:.3f}" for s, a, p in quality
    )
    return [
        Row(SECTION, "steps/s, default config", f"{sps['channels_last']:.2f} steps/s",
            f"contiguous NCHW {sps['default']:.2f} steps/s",
            sps["channels_last"] / sps["default"],
            note=f"channels-last (train.py) vs NCHW; batch {cfg.batch_size} of "
            f"{cfg.patch_size}px patches, {THREADS} threads"),
        Row(SECTION, f"quality after {wall / 60:.1f} min", f"pixel AUROC {quality[-1][1]:.3f}",
            f"AUPRO {quality[-1][2]:.3f}", None,
            note=f"pixel AUROC/AUPRO by checkpoint: {curve}"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0)
    show(rows(p.parse_args().minutes))


if __name__ == "__main__":
    main()
