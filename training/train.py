"""The training loop: LSGAN BiGAN with a reconstruction penalty, on random normal patches.

Training runs for a time budget. Every checkpoint carries the Gaussians of normal features
(models.scoring.fit_normal) and is ranked by the self-check (held-out normals with pasted
synthetic defects, training/selfcheck.py); the best one is kept as RUN/best.pt, so a longer
budget is never worse than a shorter one by that measure.

With TrainConfig.ema above 0, what is scored, ranked and exported is an exponential moving
average of the weights (Yazici et al., ICLR 2019): a GAN's networks oscillate from step to
step, and the average steadies their maps; the raw weights are kept to resume. Off by
default: at 0.995 it lifted the shipped mix on two domains and not the formula alone
(quality/bigan/README.md).

Every random draw is a function of (seed, step, rank), so `--resume` continues exactly and
each torchrun rank samples its own patches. Only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from models.atomic import replacing
from models.config import ModelConfig
from models.errors import NanoinspectError
from models.networks import BiGAN
from models.scale import fibre_scale, to_scale, working_scale
from models.scoring import AnomalyScorer
from training import selfcheck
from training.config import TrainConfig, config_dict
from training.corrupt import corrupt
from training.data import PatchSampler, Sample, find_dataset, load_training_images, split_holdout
from training.signals import StopSignals
from training.step import EncoderGenerator, optimise

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

CHECKPOINTS = "checkpoints"
BEST = "best.pt"
FIT_IMAGES = 6  # training images the normal Gaussians are fitted on at each checkpoint
CHECK_IMAGES, CHECK_SIDE = 6, 512  # held-out normals (centre crops) the self-check uses
FEW_HELD_OUT = 3  # fewer held-out normals than this: calibration's thresholds are rough


class TrainingDiverged(NanoinspectError):
    code = "diverged"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NanoinspectError("--device cuda: no CUDA device is visible to torch")
    if name not in ("cpu", "cuda"):
        raise NanoinspectError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / CHECKPOINTS).glob("step_*.pt"))
    return found[-1] if found else None


def data_digest(samples: list[Sample], root: Path) -> str:
    """sha256 over the training images' relative paths and bytes: names the data a model saw."""
    h = hashlib.sha256()
    for s in samples:
        h.update(str(s.path.relative_to(root)).encode())
        h.update(hashlib.sha256(s.path.read_bytes()).digest())
    return h.hexdigest()


def _save(obj: dict, path: Path) -> None:
    with replacing(path) as (tmp,):  # never a half-written checkpoint under its final name
        torch.save(obj, tmp)


def _image_grid(scorer: AnomalyScorer, image: torch.Tensor) -> torch.Tensor:
    """Input | reconstruction | score map (rescaled), side by side, (1, H, 3W) for TensorBoard."""
    with torch.no_grad():
        score_map, _, recon, *_ = scorer(image, torch.tensor(0.0), torch.tensor(2.0))
    smap = score_map / score_map.amax().clamp(min=1e-8)
    return torch.cat([image, recon, smap], dim=-1)[0].cpu()


def _crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[y : y + side, x : x + side]


def fit_sample(items: list) -> list:
    """The FIT_IMAGES of a run's fit set, spread over it, that the normal Gaussians are fitted
    on: export refits on the same ones when a run predates the scoring graph."""
    return items[:: max(1, len(items) // FIT_IMAGES)][:FIT_IMAGES]


def _time_up(
    began: float, max_minutes: float, distributed: bool, dev: torch.device, stop: bool
) -> bool:
    """All ranks must stop at the same step, or the others wait forever in all-reduce: under
    torchrun they stop as soon as any rank's clock (or a stop signal) says so."""
    up = stop or time.monotonic() - began > 60 * max_minutes
    if distributed:
        flag = torch.tensor([float(up)], device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        up = bool(flag.item())
    return up


def check_same_data(before: dict, now: dict, data: Path) -> None:
    """A resumed run must see the images it started with: refuse, saying what changed."""
    if before["data_digest"] != now["data_digest"]:
        raise NanoinspectError(
            f"--resume: {data} is not the data this run was trained on ({before['data']}: "
            "the sha256 of its images differs): pass the same DATA, or --allow-data-change"
        )
    if before["holdout"] != now["holdout"]:
        raise NanoinspectError(
            f"--resume: {data} would hold out other images than the run did: pass the same "
            "DATA, or --allow-data-change"
        )


def _processes(device: str) -> tuple[bool, torch.device, int]:
    """Whether torchrun started several processes, this one's device and its rank."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dev = pick_device(device)
    if distributed:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(dev)
    return distributed, dev, dist.get_rank() if distributed else 0


def _resumed(out: Path, resume: bool) -> tuple[Path | None, dict | None]:
    """The last checkpoint of the run in `out` and its state; None for a new run. A run is
    never silently overwritten, and --resume needs one."""
    last = latest_checkpoint(out)
    if last is not None and not resume:
        raise NanoinspectError(f"{out} already holds a run: pass --resume or choose another --out")
    if resume and last is None:
        raise NanoinspectError(f"--resume: no checkpoint in {out / CHECKPOINTS}")
    state = torch.load(last, map_location="cpu", weights_only=False) if last else None
    return last, state


def _saved_settings(state: dict, cfg: TrainConfig) -> tuple[ModelConfig, TrainConfig, int]:
    """A resumed run keeps the settings it started with; only the budget is taken anew."""
    budget = {"max_steps": cfg.max_steps, "max_minutes": cfg.max_minutes}
    cfg = TrainConfig(**{**state["train_config"], **budget})
    return ModelConfig.from_dict(state["model_config"]), cfg, state["seed"]


@dataclass
class _Images:
    """The training images at the working scale and what is drawn from them."""

    sampler: PatchSampler  # the patches trained on
    preview: np.ndarray  # the first image, shown in TensorBoard
    fit: list[np.ndarray]  # the images the normal Gaussians are fitted on (fit_sample)
    check: list[selfcheck.Labelled]  # the self-check set, from the held-out normals
    scale: float  # the working fibre scale (models/scale.py)
    meta: dict  # what the run records about its data


def _images(
    data: Path, cfg: TrainConfig, seed: int, main: bool, state: dict | None, any_data: bool
) -> _Images:
    """Hold out normals for the self-check, refuse other data on resume (unless any_data),
    read every file once (so all unreadable ones are named at once) and zoom each image to
    one working scale."""
    layout = find_dataset(data)
    fit, holdout = split_holdout(layout.train, cfg.holdout_fraction, seed)
    if main and 0 < len(holdout) < FEW_HELD_OUT:
        tqdm.write(
            f"warning: only {len(holdout)} normal image(s) held out for the self-check and "
            f"calibration (of {len(layout.train)}): thresholds will be rough; add normal images"
        )
    digest = data_digest(fit, layout.root)
    held_names = [str(s.path.relative_to(layout.root)) for s in holdout]
    if state is not None and not any_data:
        check_same_data(state["meta"], {"data_digest": digest, "holdout": held_names}, data)
    images, sample_bits = load_training_images([*fit, *holdout], cfg.crop_bottom)
    images, held = images[: len(fit)], images[len(fit) :][:CHECK_IMAGES]
    scale = working_scale([fibre_scale(im) for im in images])
    images = [to_scale(im, scale)[0] for im in images]
    held = [_crop(to_scale(im, scale)[0], CHECK_SIDE) for im in held]
    check = selfcheck.selfcheck_set(held, seed, scale)
    sampler = PatchSampler(images, cfg.patch_size, seed, names=[str(s.path) for s in fit])
    if not holdout:
        raise NanoinspectError("training needs at least 2 normal images: one is held out")
    meta = {
        "data": str(data.resolve()),
        "data_digest": digest,
        "holdout": held_names,
        "fibre_scale": scale,
        "sample_bits": sample_bits,
    }
    return _Images(sampler, images[0], fit_sample(images), check, scale, meta)


@dataclass
class _Networks:
    """The BiGAN, its optimisers, the two halves that are stepped (DDP under torchrun) and
    the weight average (None when TrainConfig.ema is 0: the weights are scored)."""

    bigan: BiGAN
    average: AveragedModel | None
    opt_d: torch.optim.Optimizer
    opt_eg: torch.optim.Optimizer
    eg: nn.Module
    disc: nn.Module
    start: int  # the step training continues from

    @property
    def scored(self) -> BiGAN:
        """The BiGAN the self-check ranks and export scores."""
        return self.bigan if self.average is None else self.average.module

    def state(self) -> dict:
        trained = {} if self.average is None else {"trained": self.bigan.state_dict()}
        return {
            "model": self.scored.state_dict(),  # what export and refit load
            **trained,  # the weights themselves, to resume from
            "opt_d": self.opt_d.state_dict(),
            "opt_eg": self.opt_eg.state_dict(),
        }


def _networks(
    model_cfg: ModelConfig, cfg: TrainConfig, dev: torch.device, state: dict | None, ddp: bool
) -> _Networks:
    """New networks (from torch's seed) or the resumed run's, with their optimisers."""
    # channels-last: 1.4-1.75x the steps/s on a 2-core CPU (tests/bench/bench_train.py)
    bigan = BiGAN(model_cfg).to(dev, memory_format=torch.channels_last)
    opt_d = torch.optim.Adam(bigan.discriminator.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))
    eg_params = [*bigan.encoder.parameters(), *bigan.generator.parameters()]
    opt_eg = torch.optim.Adam(eg_params, cfg.lr, (cfg.beta1, cfg.beta2))
    average = AveragedModel(bigan, avg_fn=_ema(cfg.ema)) if cfg.ema else None
    start = 0
    if state is not None:
        bigan.load_state_dict(state.get("trained", state["model"]))  # no average: one copy
        if average is not None:
            average.module.load_state_dict(state["model"])
            average.n_averaged.fill_(state["step"])
        opt_d.load_state_dict(state["opt_d"])
        opt_eg.load_state_dict(state["opt_eg"])
        start = state["step"]
    eg, disc = EncoderGenerator(bigan), bigan.discriminator
    if ddp:
        ids = [dev.index] if dev.type == "cuda" else None
        eg, disc = DDP(eg, device_ids=ids), DDP(disc, device_ids=ids)
    return _Networks(bigan, average, opt_d, opt_eg, eg, disc, start)


def _ema(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The average's update after n steps: decay min(ema, (1 + n) / (10 + n)), so the first
    steps' random weights fade fast (the warm-up of TensorFlow's ExponentialMovingAverage)."""

    def update(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = torch.clamp((1 + n) / (10 + n), max=decay).to(averaged.dtype)
        return torch.lerp(current, averaged, d)

    return update


class _Checkpoints:
    """RUN/checkpoints/step_N.pt, each ranked by the self-check; the best also as RUN/best.pt.
    Only the main process writes; the others pass."""

    def __init__(
        self,
        out: Path,
        main: bool,
        state: Callable[[int], dict],
        scorer: AnomalyScorer,
        images: _Images,
        writer: SummaryWriter | None,
        best_quality: float,
    ):
        self.out, self.main, self.state, self.scorer = out, main, state, scorer
        self.fit_images, self.check = images.fit, images.check
        self.writer, self.best_quality = writer, best_quality

    def save(self, step: int, ranked: bool = True) -> Path:
        """Weights, optimisers and (ranked) the normal fit and self-check figures. The
        weights are written first, unranked, so a stop signal during the ranking (which
        takes a minute on large images) or a kill after it loses nothing; unranked (a stop
        signal: seconds count) it ends there: never taken as best.pt, fitted at export
        (training/refit.load_normal_fit) or ranked at the next checkpoint."""
        out, scorer, fit_images, check = self.out, self.scorer, self.fit_images, self.check
        path = out / CHECKPOINTS / f"step_{step:07d}.pt"
        if self.main:
            unranked = {"normal_fit": None, "self_check": None, "interrupted": True}
            _save(self.state(step) | unranked | {"best_quality": self.best_quality}, path)
        if self.main and not ranked:
            tqdm.write(f"step {step}: weights saved (not ranked by the self-check)")
        elif self.main:
            fitted, choice = selfcheck.rank_checkpoint(scorer, fit_images, check)
            better = choice.quality > self.best_quality
            self.best_quality = max(self.best_quality, choice.quality)
            ckpt = self.state(step) | {
                "normal_fit": fitted,
                "self_check": asdict(choice),
                "best_quality": self.best_quality,
            }
            _save(ckpt, path)
            if better:
                _save(ckpt, out / BEST)
            if self.writer:
                self.writer.add_scalar("self_check/pixel_auroc", choice.pixel_auroc, step)
                self.writer.add_scalar("self_check/aupro", choice.aupro, step)
            tqdm.write(
                f"step {step}: self-check pixel AUROC {choice.pixel_auroc:.3f}, "
                f"AUPRO {choice.aupro:.3f}" + (" (best so far)" if better else "")
            )
        return path


def _open_run(out: Path, meta: dict) -> SummaryWriter:
    """The run directory with its config.json, and its TensorBoard writer."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))


@dataclass
class _Steps:
    """One optimisation step at a time, each a function of (seed, step, rank)."""

    nets: _Networks
    sampler: PatchSampler
    cfg: TrainConfig
    model_cfg: ModelConfig
    seed: int
    rank: int
    dev: torch.device
    scale: float  # the patches' fibre scale (sizes the swollen corruption)

    def losses(self, step: int) -> dict[str, float]:
        cfg, dev, nets = self.cfg, self.dev, self.nets
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
        latent = cfg.patch_size // self.model_cfg.stride
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, step, self.rank]).generate_state(1)[0])
        )
        x = self.sampler.batch(step, cfg.batch_size, rank=self.rank)  # (B, 1, P, P)
        x_in, mask = (
            corrupt(x, cfg.corrupt_prob, g, cfg.noisy_fills, self.scale)
            if cfg.corrupt_prob > 0
            else (None, None)
        )
        x = x.to(dev)
        z_prior = torch.randn(
            cfg.batch_size, self.model_cfg.latent_channels, latent, latent, generator=g
        ).to(dev)
        if x_in is not None:
            x_in, mask = x_in.to(dev), mask.to(dev)
        batch = (x, x_in, mask, z_prior)
        optimisers = (nets.opt_d, nets.opt_eg)
        losses = optimise(nets.eg, nets.disc, optimisers, batch, cfg, autocast)
        if nets.average is not None:
            nets.average.update_parameters(nets.bigan)
        return {k: v.item() for k, v in losses.items()}


def _loop(
    steps: _Steps,
    checkpoints: _Checkpoints,
    last: Path | None,
    preview: torch.Tensor,
    stop: StopSignals | None,
    progress: bool,
    distributed: bool,
) -> tuple[int, Path | None]:
    """Train from the run's step to the budget (steps or minutes, or a stop signal),
    logging to TensorBoard and checkpointing on the way; the steps done and the last
    checkpoint written."""
    cfg, start, main = steps.cfg, steps.nets.start, checkpoints.main
    writer, scorer = checkpoints.writer, checkpoints.scorer
    began = saved = time.monotonic()
    if main and start >= cfg.max_steps:
        tqdm.write(
            f"train: {checkpoints.out} is at step {start}, --max-steps is {cfg.max_steps}: "
            f"nothing to train (raise --max-steps to continue); its last checkpoint is {last}"
        )
    bar = tqdm(
        range(start, cfg.max_steps),
        initial=start,
        total=cfg.max_steps,
        disable=not (progress and main) or start >= cfg.max_steps,
        desc="train",
        unit="step",
    )
    done, path = start, last
    for step in bar:
        losses = steps.losses(step)
        if not all(math.isfinite(v) for v in losses.values()):
            kept = f"last good checkpoint {path}" if path else "no checkpoint written yet"
            raise TrainingDiverged(f"training diverged at step {step}: {losses}; {kept}")
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        done = step + 1
        if writer and done % cfg.log_every == 0:
            for k, v in losses.items():
                writer.add_scalar(f"train/{k}", v, done)
        if writer and done % cfg.image_every == 0:
            writer.add_image("preview/input|recon|score", _image_grid(scorer, preview), done)
        stopped = stop is not None and stop.received is not None
        if not stopped and (
            done % cfg.checkpoint_every == 0
            or time.monotonic() - saved > 60 * cfg.checkpoint_minutes
        ):
            path = checkpoints.save(done)
            saved = time.monotonic()
        if _time_up(began, cfg.max_minutes, distributed, steps.dev, stopped):
            if main and not stopped:
                tqdm.write(f"train: the {cfg.max_minutes:g} min budget is used up at step {done}")
            break
    return done, path


def train(
    data: Path,
    out: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    allow_data_change: bool = False,
    stop: StopSignals | None = None,
    progress: bool = True,
) -> Path:
    """Fit the BiGAN; return the last checkpoint's path. With `stop` entered, SIGTERM/SIGINT
    end the run after the step in progress, with a checkpoint (stop.received says so)."""
    if out.exists() and not out.is_dir():
        raise NanoinspectError(f"--out {out} is a file, not a run directory")
    distributed, dev, rank = _processes(device)
    main = rank == 0
    last, state = _resumed(out, resume)
    if state is not None:
        model_cfg, cfg, seed = _saved_settings(state, cfg)
    images = _images(data, cfg, seed, main, state, allow_data_change)
    torch.manual_seed(seed)
    nets = _networks(model_cfg, cfg, dev, state, distributed)
    world_size = dist.get_world_size() if distributed else 1
    meta = {**config_dict(model_cfg, cfg), "seed": seed, **images.meta, "world_size": world_size}
    writer = _open_run(out, meta) if main else None
    preview = torch.from_numpy(images.preview)[None, None].to(dev)
    scorer = AnomalyScorer(nets.scored, fibre_scale=images.scale).to(dev)

    def run_state(step: int) -> dict:
        return nets.state() | {
            "step": step,
            "seed": seed,
            "model_config": asdict(model_cfg),
            "train_config": asdict(cfg),
            "meta": meta,
        }

    best_quality = state.get("best_quality", -1.0) if state else -1.0
    checkpoints = _Checkpoints(out, main, run_state, scorer, images, writer, best_quality)
    steps = _Steps(nets, images.sampler, cfg, model_cfg, seed, rank, dev, images.scale)
    done, path = _loop(steps, checkpoints, last, preview, stop, progress, distributed)
    if path is None or path.name != f"step_{done:07d}.pt":
        path = checkpoints.save(done, ranked=stop is None or stop.received is None)
    if writer:
        writer.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return path
