"""Images/s of `nanoinspect score`'s local engine against the Detector's best batched rate on
the same images (already decoded, batch 1 or `batch_size` a call, whichever is faster), in
the same run: on a compute-bound CPU the job should cost little beyond inference. Variants
alternate within each repeat so drift on a shared machine hits all of them alike; medians
over repeats.

    python -m tests.bench.bench_batch [--model M] [--n 16] [--size 1024x704] [--repeats 2]

The job is timed end to end as a user sees it: model load, listing, decoding, scoring, part
files and results.parquet/csv (no masks)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from models.detector import Detector
from models.images import load_image
from service.batch.driver import run
from service.batch.job import Job
from tests.bench.common import SIZE, Row, alternate, bench_model, median, show

SECTION = "batch job"


def make_images(root: Path, n: int, width: int, height: int) -> list[Path]:
    from tests.test_batch_support import write_png
    from training.synth import draw_sample

    defects = [None, None, "bead", "film", "clump", "particle"]
    return [
        write_png(
            root / f"{i:04d}.png",
            draw_sample(np.random.default_rng(i), width, height, defects[i % len(defects)])[0],
        )
        for i in range(n)
    ]


def job_seconds(model: Path, root: Path, out: Path, batch: int, workers: int) -> float:
    """Wall seconds of one `nanoinspect score` run."""
    t0 = time.perf_counter()
    job = Job(model, [str(root)], out, batch_size=batch, workers=workers, progress=False)
    summary = run(job)
    assert summary.ok == summary.total
    return time.perf_counter() - t0


def rows(
    model: Path | None = None,
    n: int = 16,
    size: str = f"{SIZE[0]}x{SIZE[1]}",
    repeats: int = 2,
    batch_size: int = 8,
    workers: int | None = None,
) -> list[Row]:
    model = model or bench_model()
    workers = workers or min(4, os.cpu_count() or 1)
    w, h = (int(v) for v in size.split("x"))
    detector = Detector(model, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        pixels = [load_image(f).pixels for f in make_images(root, n, w, h)]
        runs = iter(range(10**6))

        def batched(k: int):
            return lambda: [detector.score(pixels[i : i + k]) for i in range(0, n, k)]

        times = alternate(
            {
                "job": lambda: job_seconds(
                    model, root, Path(tmp) / f"t{next(runs)}", batch_size, workers
                ),
                "batch 1": batched(1),
                f"batch {batch_size}": batched(batch_size),
            },
            repeats,
        )
    rate = {k: n / median(v) for k, v in times.items()}
    best = max((k for k in rate if k != "job"), key=rate.get)
    what = f"{n} PNGs {size}, batch {batch_size}, {workers} decoders; Detector " + ", ".join(
        f"{k}: {v:.2f} img/s" for k, v in rate.items() if k != "job"
    )
    return [
        Row(SECTION, "local engine, thread decoders", f"{rate['job']:.2f} img/s",
            f"Detector, {best}: {rate[best]:.2f} img/s", rate["job"] / rate[best], 0.95,
            note=what),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args()
    show(rows(a.model, a.n, a.size, a.repeats, a.batch_size, a.workers))


if __name__ == "__main__":
    main()
