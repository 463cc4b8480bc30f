"""What one `nanoinspect score` run is asked to do (Job), checked before anything is
written; the driver and both engines take it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from models.errors import NanoinspectError
from models.images import crop_setting

if TYPE_CHECKING:
    from models.detector import Detector

KINDS = ("masks", "overlays", "maps")  # what --save-masks/--save-overlays/--save-maps write


@dataclass(frozen=True)
class Job:
    model: Path
    inputs: list[str]
    out: Path
    batch_size: int = 8
    workers: int | None = None  # local: decoders (default min(4, CPUs)); ray: actors (1)
    kinds: tuple[str, ...] = ()  # subset of KINDS
    alpha: float | None = None  # None: the model's
    image_threshold: float | None = None  # tau; None: calibrated for alpha (the model's)
    pixel_threshold: float | None = None  # gamma; likewise
    crop_bottom: float | int | None = None  # rows or a fraction; None: as the model was trained
    engine: Literal["local", "ray"] = "local"
    providers: tuple[str, ...] = ("cuda", "cpu")  # local: onnxruntime's, in order
    decoder: Literal["threads", "processes"] = "threads"
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    retry_errors: bool = False
    part_rows: int = 256  # rows per part file (a kill loses at most the unwritten ones)
    progress: bool = True

    def params(self) -> dict[str, float | None]:
        """The keyword arguments of Detector.score this job sets (None: the model's)."""
        return {
            "alpha": self.alpha,
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
        }

    def manifest(self, detector: Detector, crop: float | int) -> dict:
        """What the results depend on, the thresholds as used included; speed settings
        (engine, workers...) may change."""
        m = detector.meta
        alpha = m.alpha if self.alpha is None else self.alpha
        gamma, tau, notes = detector.thresholds(
            alpha, m.sigma, self.pixel_threshold, self.image_threshold
        )
        return {
            "model_sha256": detector.sha256,
            "model_name": m.name,
            "model_created": m.created,
            "inputs": [os.path.abspath(i) for i in self.inputs],
            "alpha": self.alpha,
            "sigma": m.sigma,
            "image_threshold": tau,
            "pixel_threshold": gamma,
            "thresholds_note": "; ".join(notes) or None,
            "crop_bottom": crop,
            "outputs": sorted(self.kinds),
        }


def validate(job: Job) -> None:
    if job.out.exists() and not job.out.is_dir():
        raise NanoinspectError(f"--out {job.out} is a file, not a results folder")
    unknown = set(job.kinds) - set(KINDS)
    if unknown:
        raise NanoinspectError(f"unknown outputs {sorted(unknown)}; choose from {KINDS}")
    if job.alpha is not None and not 0.0 <= job.alpha <= 1.0:
        raise NanoinspectError(f"--alpha must lie in [0, 1], not {job.alpha}")
    for flag, value in (
        ("--image-threshold", job.image_threshold),
        ("--pixel-threshold", job.pixel_threshold),
    ):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise NanoinspectError(f"{flag} must be a finite number >= 0, not {value}")
    if job.batch_size < 1 or (job.workers is not None and job.workers < 1):
        raise NanoinspectError("--batch-size and --workers must be at least 1")
    if job.gpus_per_worker < 0:
        raise NanoinspectError("--gpus-per-worker must be >= 0")
    if job.engine not in ("local", "ray"):
        raise NanoinspectError(f"--engine must be local or ray, not {job.engine!r}")
    if job.decoder not in ("threads", "processes"):
        raise NanoinspectError(f"--decoder must be threads or processes, not {job.decoder!r}")
    if job.crop_bottom is not None:
        crop_setting(job.crop_bottom)
