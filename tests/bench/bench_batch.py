"""Images/s of `nanoinspect score`'s local engine (thread decoders, process decoders) versus a
plain loop that decodes each file and calls Detector.score on it alone, on the same files
in the same run. Variants alternate within each repeat so drift on a shared machine hits
all of them alike; medians over repeats, printed as ratios to the plain loop.

    python -m tests.bench.bench_batch [--model M] [--n 64] [--size 512x512] [--repeats 5]

Both sides are timed end to end as a user sees them: model load, decoding, scoring, and
for the engine its listing, part files and results.parquet/csv (no masks)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from models.detector import Detector
from models.images import load_image
from service.batch import Job, run

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "default.onnx"


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", default="512x512")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    a = p.parse_args()
    if not a.model.is_file():
        raise SystemExit(f"{a.model}: no model; run `make default-model` or pass --model")
    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        files = make_images(root, a.n, w, h)
        variants = {
            "plain loop, 1 image per call": lambda i: plain_loop(a.model, files),
            "engine, thread decoders": lambda i: engine(
                a.model, root, Path(tmp) / f"t{i}", "threads", a.batch_size, a.workers
            ),
            "engine, process decoders": lambda i: engine(
                a.model, root, Path(tmp) / f"p{i}", "processes", a.batch_size, a.workers
            ),
        }
        for fn in variants.values():  # warm-up: page cache, imports, onnxruntime kernels
            fn(-1)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for i in range(a.repeats):
            for name, fn in variants.items():
                times[name].append(fn(i))
    print(
        f"{a.n} images {w}x{h}, batch {a.batch_size}, {a.workers} decoders, "
        f"{os.cpu_count()} CPUs, {a.repeats} repeats (median)"
    )
    base = statistics.median(times["plain loop, 1 image per call"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:32s} {a.n / med:8.1f} images/s   x{base / med:.2f}")


if __name__ == "__main__":
    main()
