"""`nanoinspect score`: score folders of micrographs into DIR/results.parquet|csv.

The driver is engine-agnostic: it lists the inputs, opens the resumable store (skipping
inputs already done), pulls rows from an engine (this machine's thread/process pool, or
Ray Data) into part files, and merges them. Torch-free."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from models.detector import Detector
from models.images import crop_setting
from service.batch.inputs import Item, check_output_names, expand
from service.batch.job import Job, validate
from service.batch.store import RESULTS, Store, storage_error

SHOWN_ERRORS = 5  # error lines printed; the results hold them all


@dataclass
class Summary:
    total: int
    ok: int
    failed: int
    anomalous: int
    skipped: int  # done by an earlier run
    scored: int  # by this run
    seconds: float
    results: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the first few, for the terminal

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        resumed = f" ({self.skipped} done by an earlier run)" if self.skipped else ""
        speed = (
            f"scored {self.scored} in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)"
            if self.scored
            else "nothing left to score"
        )
        return (
            f"{self.total} images{resumed}: {self.ok} ok, {self.failed} failed, "
            f"{self.anomalous} anomalous; {speed}; results {self.results[0]}"
        )


def run(job: Job) -> Summary:
    """Score every input not yet done; return counts over all inputs."""
    from tqdm import tqdm

    validate(job)
    if job.engine == "ray":  # before anything is written
        from service.batch.engine_ray import import_ray

        import_ray()
    items = expand(job.inputs, out=job.out)
    if job.kinds:
        check_output_names(items)
    # On Ray, Detectors live in the actors; the driver's copy only checks the model and
    # reads its identity, on the CPU.
    local = job.engine == "local"
    detector = Detector(
        job.model, batch_size=job.batch_size, providers=job.providers if local else ("cpu",)
    )
    given = job.crop_bottom
    crop = detector.meta.crop_bottom if given is None else crop_setting(given)
    store = Store(job.out, part_rows=job.part_rows)
    store.open(job.manifest(detector, crop))
    try:
        done = store.finished(retry_errors=job.retry_errors)
        todo = [i for i in items if i.path not in done]
        began = time.monotonic()
        bar = tqdm(
            total=len(items),
            initial=len(items) - len(todo),
            unit="img",
            desc="score",
            disable=not job.progress,
        )
        rows = _engine(job, todo, detector, crop)
        try:
            try:
                for batch in rows:
                    store.add(batch)
                    bar.update(len(batch))
            finally:
                rows.close()  # stop the engine's workers before the last part is written
                bar.close()
                store.flush()
            seconds = time.monotonic() - began
            table = store.merge(items)
        except OSError as e:  # disk full: parts written so far are whole, a rerun resumes
            raise storage_error(job.out, e) from None
    finally:
        store.close()
    ok = table["error"].null_count
    return Summary(
        total=table.num_rows,
        ok=ok,
        failed=table.num_rows - ok,
        anomalous=sum(1 for a in table["is_anomalous"].to_pylist() if a),
        skipped=len(items) - len(todo),
        scored=len(todo),
        seconds=seconds,
        results=[job.out / name for name in RESULTS],
        errors=_shown_errors(table.filter(pc.is_valid(table["error"]))),
    )


def _shown_errors(failed: pa.Table) -> list[str]:
    """The first SHOWN_ERRORS error lines, paths as the user would type them (relative to
    the working folder when under it), and how many more the results hold."""
    lines = []
    for path, error in zip(failed["path"].to_pylist(), failed["error"].to_pylist(), strict=True):
        if len(lines) == SHOWN_ERRORS:
            lines.append(f"... and {failed.num_rows - SHOWN_ERRORS} more (see the error column)")
            break
        rel = os.path.relpath(path)
        lines.append(error.replace(path, rel, 1) if not rel.startswith("..") else error)
    return lines


def _engine(
    job: Job, todo: list[Item], detector: Detector, crop: float | int
) -> Iterator[list[dict]]:
    if job.engine == "ray":
        from service.batch.engine_ray import ray_rows

        return ray_rows(job, todo, detector.sha256, crop, detector.meta.sample_bits)
    from service.batch.engine_local import local_rows

    return local_rows(job, todo, detector, crop)
