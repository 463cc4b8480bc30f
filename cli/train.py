"""`nanoinspect train`: the BiGAN fitted on normal images, resumable, stopped cleanly by a
signal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from models.errors import NanoinspectError

if TYPE_CHECKING:
    from models.config import ModelConfig
    from training.config import TrainConfig

BUDGET = ("max_steps", "max_minutes")  # a resumed run may change these, nothing else


def _resume_differences(
    out: Path, config: Path | None, seed: int | None, model_cfg: ModelConfig, cfg: TrainConfig
) -> None:
    """Refuse --resume with a --config or --seed other than the run's, naming what differs
    (a resumed run keeps its settings; silently ignoring the new ones would mislead)."""
    from dataclasses import asdict

    saved_file = out / "config.json"
    if not saved_file.is_file() or (config is None and seed is None):
        return
    saved = json.loads(saved_file.read_text())
    diffs = [] if seed is None or seed == saved["seed"] else [f"seed {saved['seed']} -> {seed}"]
    if config is not None:
        for section, now in (("model", asdict(model_cfg)), ("train", asdict(cfg))):
            diffs += [
                f"{section}.{k} {saved[section].get(k)!r} -> {v!r}"
                for k, v in now.items()
                if k not in BUDGET and saved[section].get(k) != v
            ]
    if diffs:
        raise NanoinspectError(
            f"--resume: {out} was started with other settings ({'; '.join(diffs)}): resume "
            "with the run's own (only --max-steps and --max-minutes may change), or choose "
            "another --out"
        )


def _warn_not_normal(data: Path) -> None:
    """Name the subfolders of a training folder that look like test or defective images."""
    from training.data import find_dataset, not_normal_folders

    suspect = not_normal_folders(find_dataset(data, need_train=False))
    if suspect:
        typer.echo(
            f"warning: {data} has subfolders that look like test or defective images, and "
            f"every image in them is trained on as normal: {', '.join(suspect)}",
            err=True,
        )


def train(
    data: Path,
    out: Annotated[Path, typer.Option("--out", help="run directory")],
    config: Annotated[
        Path | None, typer.Option(help="TOML or JSON with sections model and train")
    ] = None,
    max_steps: int | None = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="training budget in minutes (default: the config's, 10)")
    ] = None,
    device: str = "auto",
    seed: Annotated[int | None, typer.Option(help="random seed (default 0)")] = None,
    resume: bool = False,
    allow_data_change: Annotated[
        bool, typer.Option("--allow-data-change", help="--resume on other data than the run's")
    ] = False,
) -> None:
    """Fit the BiGAN on normal images (runs under torchrun for several processes).
    SIGTERM or ^C writes a checkpoint first; --resume continues from it."""
    from dataclasses import replace

    from training.config import load_config
    from training.signals import StopSignals, TrainingInterrupted
    from training.train import train as fit

    model_cfg, cfg = load_config(config)
    if resume:
        _resume_differences(out, config, seed, model_cfg, cfg)
    if max_steps is not None:
        cfg = replace(cfg, max_steps=max_steps)
    if max_minutes is not None:
        cfg = replace(cfg, max_minutes=max_minutes)
    if cfg.max_steps <= 0 or cfg.max_minutes <= 0:
        raise NanoinspectError(
            f"the budget must be positive: --max-steps {cfg.max_steps}, --max-minutes "
            f"{cfg.max_minutes:g} would train nothing"
        )
    _warn_not_normal(data)
    with StopSignals() as stop:
        path = fit(
            data,
            out,
            model_cfg,
            cfg,
            seed=seed or 0,
            device=device,
            resume=resume,
            allow_data_change=allow_data_change,
            stop=stop,
        )
    if stop.received is not None:
        import signal

        name = signal.Signals(stop.received).name
        raise TrainingInterrupted(
            f"{name}: stopped with checkpoint {path}; continue with --resume", stop.received
        )
    typer.echo(f"checkpoint {path}; best by the self-check: {out / 'best.pt'}")
