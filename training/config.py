"""Training settings and the config file that sets them (TOML or JSON, sections `model` and
`train`). Unknown keys are an error: a typo must not silently train the default."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from models.config import ModelConfig
from models.errors import NanoinspectError
from models.images import crop_setting


@dataclass(frozen=True)
class TrainConfig:
    patch_size: int = 96  # side of the random square patches trained on
    batch_size: int = 16
    lr: float = 2e-4
    lr_d: float = 8e-4  # D's: it learns the GAN game and the defect map at once (TTUR)
    beta1: float = 0.5  # Adam betas as in DCGAN/BiGAN
    beta2: float = 0.999
    lambda_rec: float = 10.0  # weight of |G(E(s)) - s| against the adversarial terms
    corrupt_prob: float = 0.5  # share of patches E+G must restore from generic corruptions
    noisy_fills: bool = False  # the smooth corruptions carry the patch's own pixel noise
    lambda_seg: float = 1.0  # weight of D's map of the corruptions against its GAN loss
    ema: float = 0.0  # decay of a weight average scored and exported instead (0: the weights)
    max_steps: int = 1_000_000  # in practice the time budget ends training
    max_minutes: float = 10.0  # the training budget, wall clock
    checkpoint_every: int = 2000  # steps; each checkpoint is ranked by the self-check
    checkpoint_minutes: float = 2.0  # and a checkpoint at least this often, wall clock
    log_every: int = 10  # TensorBoard scalars
    image_every: int = 250  # TensorBoard image grids (input, reconstruction, score map)
    holdout_fraction: float = 0.15  # normal images kept out of training, for calibration
    crop_bottom: float = 0.0  # SEM banner to drop: rows (>= 1) or fraction of the height

    def __post_init__(self) -> None:
        crop_setting(self.crop_bottom)  # a bad banner setting fails before any work
        if not 0 <= self.ema < 1:
            raise NanoinspectError(f"config: ema must be in [0, 1), not {self.ema}")


def _from_section(cls: type, values: dict, section: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise NanoinspectError(f"config: unknown keys in [{section}]: {', '.join(unknown)}")
    try:
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise NanoinspectError(f"config: bad value in [{section}]: {e}") from None


def load_config(path: Path | None) -> tuple[ModelConfig, TrainConfig]:
    if path is None:
        return ModelConfig(), TrainConfig()
    if not path.is_file():
        raise NanoinspectError(f"config: {path} does not exist")
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as e:
        raise NanoinspectError(f"config: cannot parse {path}: {e}") from None
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise NanoinspectError(f"config: unknown sections {', '.join(unknown)} (use model, train)")
    return (
        _from_section(ModelConfig, raw.get("model", {}), "model"),
        _from_section(TrainConfig, raw.get("train", {}), "train"),
    )


def config_dict(model: ModelConfig, train: TrainConfig) -> dict:
    return {"model": asdict(model), "train": asdict(train)}
