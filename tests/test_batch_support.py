"""Shared by the batch-job tests: input folders, bad files, and the comparison of result
tables. Holds no tests itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ["decode_ms", "infer_ms", "save_ms"]


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def make_inputs(root: Path) -> Path:
    """10 micrographs in two sizes and three formats, in nested folders."""
    from training.synth import draw_sample

    for i in range(6):
        img, _ = draw_sample(np.random.default_rng(i), 96, 96, "bead" if i % 2 else None)
        write_png(root / "a" / f"{i:03d}.png", img)
    for i in range(3):
        img, _ = draw_sample(np.random.default_rng(10 + i), 80, 64, "film")
        write_png(root / "b" / "sub" / f"{i:03d}.png", img)
    img, _ = draw_sample(np.random.default_rng(20), 96, 96, "clump")
    Image.fromarray((img * 65535).astype(np.uint16)).save(root / "c16.tif")
    return root


def make_noise(root: Path, n: int, size: int = 160) -> Path:
    """Many cheap inputs (smoothed noise), for runs that must last long enough to be killed."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.random((size // 4, size // 4)).repeat(4, 0).repeat(4, 1)
        write_png(root / f"n{i:03d}.png", img.astype(np.float32))
    return root


def make_bad(root: Path, good: Path) -> dict[str, str]:
    """Bad files next to good ones; returns {file name: expected error_code}."""
    root.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "random.png").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "text.png").write_text("this is not an image\n")
    (root / "good.png").write_bytes(data)
    return {
        "truncated.png": "corrupt",
        "random.png": "unsupported_type",
        "text.png": "unsupported_type",
    }


def table(out: Path) -> pa.Table:
    return pq.read_table(out / "results.parquet")


def same_results(a: pa.Table, b: pa.Table, rtol: float = 1e-5) -> bool:
    """Equal rows, timings aside, floats within rtol: onnxruntime's feature terms round
    differently with the images batched alongside (README: Determinism)."""
    a, b = a.drop_columns(TIMINGS), b.drop_columns(TIMINGS)
    if a.column_names != b.column_names or a.num_rows != b.num_rows:
        return False

    def close(x, y) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=rtol, abs_tol=1e-9)
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y, strict=True))
        return x == y

    for name in a.column_names:
        xs, ys = a[name].to_pylist(), b[name].to_pylist()
        if name == "regions":
            xs = [x if x is None else json.loads(x) for x in xs]
            ys = [y if y is None else json.loads(y) for y in ys]
        if not close(xs, ys):
            return False
    return True


def cli(*args: str, **kw) -> subprocess.Popen:
    """`nanoinspect score ...` as a separate process (torch hidden: it must not be needed)."""
    code = "import sys; sys.modules['torch'] = None; from cli import app; app()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "score", *args, "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
