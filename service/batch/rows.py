"""The per-image work both batch engines share: decode a file, turn a Result into a row,
write its mask/overlay/map. Any failure of one image becomes that image's error row."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models import render
from models.atomic import replacing
from models.detector import score_isolated
from models.errors import NanoinspectError
from models.images import load_image
from service.batch.inputs import Item, output_path
from service.batch.store import DISK_FULL, storage_error

if TYPE_CHECKING:  # decoder processes import this module: keep onnxruntime out of them
    from models.detector import Detector, Result


@dataclass(frozen=True)
class Loaded:
    pixels: np.ndarray | None  # float32 (H, W) in [0, 1]; None when decoding failed
    error: str | None
    code: str | None
    ms: float
    notes: tuple[str, ...] = ()  # what decoding did (models.images.Decoded.notes)


def load(path: str, crop_bottom: float | int, sample_bits: int = 16) -> Loaded:
    """Decode one file (runs in a worker thread, process or Ray task; picklable result);
    untagged 16-bit data is read as the model's training images were (sample_bits)."""
    t0 = time.perf_counter()
    try:
        decoded = load_image(path, crop_bottom=crop_bottom, sample_bits=sample_bits)
        pixels, error, code, notes = decoded.pixels, None, None, decoded.notes
    except NanoinspectError as e:
        pixels, error, code, notes = None, str(e), e.code, ()
    except Exception as e:  # a decoder bug must cost one row, not the night's job
        pixels, error, code, notes = None, f"{path}: {type(e).__name__}: {e}", "unreadable", ()
    return Loaded(pixels, error, code, (time.perf_counter() - t0) * 1000, notes)


def error_row(item: Item, error: str, code: str | None, sha256: str, decode_ms: float) -> dict:
    return {
        "path": item.path,
        "relative_path": item.relative,
        "error": error,
        "error_code": code or "error",
        "model_sha256": sha256,
        "decode_ms": decode_ms,
    }


def result_row(
    item: Item, r: Result, sha256: str, timings: dict[str, float], notes: Sequence[str] = ()
) -> dict:
    """The row of a scored image: the fields of the API's answer (decode notes first)."""
    height, width = r.mask.shape
    return {
        "path": item.path,
        "relative_path": item.relative,
        "width": width,
        "height": height,
        "score": r.score,
        "is_anomalous": bool(r.is_anomalous),
        "out_of_distribution": r.out_of_distribution,
        "reason": r.reason,
        "image_threshold": r.image_threshold,
        "pixel_threshold": r.pixel_threshold,
        "alpha": r.alpha,
        "sigma": r.sigma,
        "anomalous_area_fraction": r.anomalous_area_fraction,
        "n_regions": len(r.regions),
        "regions": json.dumps([asdict(g) for g in r.regions]),
        "notes": json.dumps([*notes, *r.notes]),
        "model_sha256": sha256,
        **timings,
    }


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a killed run leaves no truncated mask behind."""
    with replacing(path) as (tmp,):
        tmp.write_bytes(data)


def save(out: Path, kinds: Sequence[str], item: Item, pixels: np.ndarray, r: Result) -> None:
    if "masks" in kinds:
        _write(output_path(out, "masks", item, ".png"), render.mask_png(r.mask))
    if "overlays" in kinds:
        png = render.overlay_png(pixels, r.score_map, r.mask, r.regions, r.pixel_threshold)
        _write(output_path(out, "overlays", item, ".png"), png)
    if "maps" in kinds:
        buf = io.BytesIO()
        np.save(buf, r.score_map.astype(np.float32, copy=False))
        _write(output_path(out, "maps", item, ".npy"), buf.getvalue())


def finish(
    out: Path,
    kinds: Sequence[str],
    item: Item,
    pixels: np.ndarray,
    r: Result,
    sha256: str,
    timings: dict[str, float],
    notes: Sequence[str] = (),
) -> dict:
    """Outputs first, then the row: a row on disk means its files are complete. A full disk
    stops the job (StorageError) instead of marking every input as failed."""
    t0 = time.perf_counter()
    try:
        save(out, kinds, item, pixels, r)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise storage_error(out, e) from None
        return error_row(
            item,
            f"{item.path}: cannot write outputs ({e})",
            "write_failed",
            sha256,
            timings["decode_ms"],
        )
    timings |= {"save_ms": (time.perf_counter() - t0) * 1000}
    return result_row(item, r, sha256, timings, notes)


def score_group(
    detector: Detector, images: list[np.ndarray], params: dict[str, float | None]
) -> tuple[list[Result | str], float]:
    """Score same-size images together with the job's params (Job.params), one bad image
    costing only its own row. Returns (Result or error message per image, ms per image)."""
    t0 = time.perf_counter()
    results = score_isolated(lambda batch: detector.score(batch, **params), images)
    out: list[Result | str] = [
        f"scoring failed: {type(r).__name__}: {r}" if isinstance(r, Exception) else r
        for r in results
    ]
    return out, (time.perf_counter() - t0) * 1000 / max(len(images), 1)
