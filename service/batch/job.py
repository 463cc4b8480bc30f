"""What one `nanoinspect score` run is asked to do (Job), checked before anything is
written; the driver and both engines take it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.errors import NanoinspectError
from models.images import crop_setting

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
    crop_bottom: float | int | None = None  # rows or a fraction; None: as the model was trained
    engine: Literal["local", "ray"] = "local"
    providers: tuple[str, ...] = ("cuda", "cpu")  # local: onnxruntime's, in order
    decoder: Literal["threads", "processes"] = "threads"
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    retry_errors: bool = False
    part_rows: int = 256  # rows per part file (a kill loses at most the unwritten ones)
    progress: bool = True

    def manifest(self, sha256: str, crop: float | int) -> dict:
        """What the results depend on; speed settings (engine, workers...) may change."""
        return {
            "model_sha256": sha256,
            "inputs": [os.path.abspath(i) for i in self.inputs],
            "alpha": self.alpha,
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
