"""The Ray engine: the same rows as the local engine, computed on a Ray cluster.

Ray Data pipeline: the list of paths -> map_batches(decode) as tasks -> map_batches(Scorer)
on a pool of actors, each holding one Detector (and `--gpus-per-worker` GPUs) -> rows
streamed back to the driver, which writes them to the job's part files exactly as the
local engine does, so resuming, merging and the exit status are shared. Masks, overlays
and maps are written by the actors: on a cluster, --out must be on a shared file system.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.errors import NanoinspectError
from service.batch.inputs import Item
from service.batch.job import Job
from service.batch.rows import error_row, finish, load, score_group
from service.batch.store import SCHEMA

INSTALL = "--engine ray needs Ray: pip install 'nanoinspect[ray]'"
DECODED = pa.schema(
    [
        ("path", pa.string()),
        ("relative", pa.string()),
        ("pixels", pa.large_binary()),  # float32 (height, width), C order; null on error
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("error", pa.string()),
        ("code", pa.string()),
        ("notes", pa.string()),  # JSON list: what decoding did
        ("decode_ms", pa.float64()),
    ]
)


def decode_batch(batch: pa.Table, crop_bottom: float | int, sample_bits: int) -> pa.Table:
    """Ray task: files -> float32 pixels as bytes (Arrow has no ragged 2-D type to lean on)."""
    rows = []
    for path, rel in zip(batch["path"].to_pylist(), batch["relative"].to_pylist(), strict=True):
        x = load(path, crop_bottom, sample_bits)
        h, w = x.pixels.shape if x.pixels is not None else (None, None)
        pixels = x.pixels.tobytes() if x.pixels is not None else None
        rows.append(
            {
                "path": path,
                "relative": rel,
                "pixels": pixels,
                "height": h,
                "width": w,
                "error": x.error,
                "code": x.code,
                "notes": json.dumps(x.notes),
                "decode_ms": x.ms,
            }
        )
    return pa.Table.from_pylist(rows, schema=DECODED)


class Scorer:
    """Ray actor: one Detector, kept warm across batches."""

    def __init__(
        self,
        model: str,
        out: str,
        kinds: tuple[str, ...],
        params: dict[str, float | None],
        gpus: float,
        batch_size: int,
    ):
        from models.detector import Detector

        gpu = {"providers": ("cuda", "cpu"), "require_gpu": True} if gpus > 0 else {}
        cpu = {} if gpus > 0 else {"providers": ("cpu",), "threads": 1}
        self.detector = Detector(model, batch_size=batch_size, **gpu, **cpu)
        self.out, self.kinds, self.params = Path(out), kinds, params

    def __call__(self, batch: pa.Table) -> pa.Table:
        sha, rows = self.detector.sha256, []
        decoded = batch.to_pylist()
        good = [d for d in decoded if d["error"] is None]
        images = [
            np.frombuffer(d["pixels"], np.float32).reshape(d["height"], d["width"]) for d in good
        ]
        results, ms = score_group(self.detector, images, self.params) if good else ([], 0.0)
        for d, img, r in zip(good, images, results, strict=True):
            item = Item(d["path"], d["relative"])
            if isinstance(r, str):
                rows.append(
                    error_row(item, f"{item.path}: {r}", "scoring_failed", sha, d["decode_ms"])
                )
            else:
                timings = {"decode_ms": d["decode_ms"], "infer_ms": ms}
                notes = json.loads(d["notes"])
                rows.append(finish(self.out, self.kinds, item, img, r, sha, timings, notes))
        for d in decoded:
            if d["error"] is not None:
                item = Item(d["path"], d["relative"])
                rows.append(error_row(item, d["error"], d["code"], sha, d["decode_ms"]))
        return pa.Table.from_pylist(rows, schema=SCHEMA)


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise NanoinspectError(INSTALL) from None
    return ray


def ray_rows(
    job: Job, todo: list[Item], sha256: str, crop: float | int, sample_bits: int
) -> Iterator[list[dict]]:
    """Rows of `todo` as Ray produces them; starts (and stops) a local Ray unless given an
    address or already connected."""
    ray = import_ray()
    if not todo:
        return
    started = not ray.is_initialized()
    if started and job.ray_address:
        ray.init(address=job.ray_address, logging_level="warning")
    elif started:  # a light local instance: no dashboard, a small object store
        # token auth stays on (Ray's default); only its notice that it is on is silenced
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 << 20,
            logging_level="warning",
            configure_logging=True,
        )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts rows
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "disabled"
        items = [{"path": i.path, "relative": i.relative} for i in todo]
        ds = ray.data.from_items(items).map_batches(
            decode_batch,
            fn_kwargs={"crop_bottom": crop, "sample_bits": sample_bits},
            batch_size=job.batch_size,
            batch_format="pyarrow",
            num_cpus=0.5,  # unlike the actors' 1: keeps Ray from fusing decoding into them
        )
        ds = ds.map_batches(
            Scorer,
            fn_constructor_kwargs={
                "model": str(job.model.absolute()),
                "out": str(job.out.absolute()),
                "kinds": tuple(job.kinds),
                "params": job.params(),
                "gpus": job.gpus_per_worker,
                "batch_size": job.batch_size,
            },
            batch_size=job.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.workers or 1),
            num_cpus=1,
            num_gpus=job.gpus_per_worker or None,
        )
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = table.to_pylist()
            if any(r["model_sha256"] != sha256 for r in rows):
                raise NanoinspectError("a Ray worker loaded a different model file than the driver")
            yield rows
    finally:
        if started:
            ray.shutdown()
