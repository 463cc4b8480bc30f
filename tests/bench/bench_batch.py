"""Images/s of `nanoinspect score`'s local engine (thread decoders, process decoders) versus a
plain loop that decodes each file and calls Detector.score on it alone, on the same files
in the same run. Variants alternate within each repeat so drift on a shared machine hits
all of them alike; medians over repeats, printed as ratios to the plain loop.

    python -m tests.bench.bench_batch [--model M] [--n 16] [--size 512x512] [--repeats 2]

Both sides are timed end to end as a user sees them: model load, decoding, scoring, and
for the engine its listing, part files and results.parquet/csv (no masks)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from models.detector import Detector
from models.images import load_image
from service.batch import Job, run
from tests.bench.common import Row, alternate, bench_model, median, show


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


def plain_loop(model: Path, files: list[Path]) -> float:
    t0 = time.perf_counter()
    detector = Detector(model)
    for f in files:
        detector.score([load_image(f).pixels])
    return time.perf_counter() - t0


def engine(model: Path, root: Path, out: Path, decoder: str, batch: int, workers: int) -> float:
    t0 = time.perf_counter()
    job = Job(
        model, [str(root)], out, batch_size=batch, workers=workers, decoder=decoder, progress=False
    )
    summary = run(job)
    assert summary.ok == summary.total
    return time.perf_counter() - t0


def rows(
    model: Path | None = None,
    n: int = 16,
    size: str = "512x512",
    repeats: int = 2,
    batch_size: int = 8,
    workers: int | None = None,
) -> list[Row]:
    model = model or bench_model()
    workers = workers or min(4, os.cpu_count() or 1)
    w, h = (int(v) for v in size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        files = make_images(root, n, w, h)
        runs = iter(range(10**6))
        times = alternate(
            {
                "loop": lambda: plain_loop(model, files),
                "threads": lambda: engine(
                    model, root, Path(tmp) / f"t{next(runs)}", "threads", batch_size, workers
                ),
                "processes": lambda: engine(
                    model, root, Path(tmp) / f"p{next(runs)}", "processes", batch_size, workers
                ),
            },
            repeats,
        )
    loop = n / median(times["loop"])
    rate = {k: n / median(v) for k, v in times.items()}
    what = f"{n} PNGs {size}, batch {batch_size}, {workers} decoders"
    return [
        Row("batch job", "local engine, thread decoders", f"{rate['threads']:.2f} img/s",
            f"plain loop {loop:.2f} img/s", rate["threads"] / loop, 1.5, note=what),
        Row("batch job", "local engine, process decoders", f"{rate['processes']:.2f} img/s",
            f"plain loop {loop:.2f} img/s", rate["processes"] / loop),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--size", default="512x512")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args()
    show(rows(a.model, a.n, a.size, a.repeats, a.batch_size, a.workers))


if __name__ == "__main__":
    main()
