"""The scoring graph on onnxruntime versus the same weights in PyTorch eager (1024x704 grey,
batch 1 and 8, same thread count), the achieved FLOP/s versus numpy's float32 matmul rate,
and the shipped graph versus the one this code exports (what the graph's rewrites gained).

    python -m tests.bench.bench_runtime [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from models.detector import Detector
from tests.bench.common import (
    DEFAULT_MODEL,
    SIZE,
    THREADS,
    Row,
    alternate,
    bench_model,
    grey,
    matmul_rate,
    median,
    show,
)

SECTION = "runtime"


def model_flops(scorer, batch: np.ndarray) -> float:
    """FLOPs of one forward pass, counted by torch (convolutions dominate; the phase-space
    rewrite of the export adds ~1 %, not counted: this is the model's work)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        scorer(torch.from_numpy(batch), torch.tensor(0.5), torch.tensor(4.0))
    return float(counter.get_total_flops())


def rows(repeats: int = 3) -> list[Row]:
    import torch

    from training.export import scorer_from_artifact

    torch.set_num_threads(THREADS)
    model = bench_model()
    fast = Detector(model, providers=("cpu",), threads=THREADS)
    shipped = Detector(DEFAULT_MODEL, providers=("cpu",), threads=THREADS)
    scorer, meta = scorer_from_artifact(model)
    alpha, sigma = meta.alpha, meta.sigma
    w, h = SIZE
    one = grey(w, h)[None, None]
    eight = np.stack([grey(w, h, seed=i) for i in range(8)])[:, None]
    flops = model_flops(scorer, one)

    def torch_eager(batch: np.ndarray):
        def run() -> None:
            with torch.inference_mode():
                scorer(torch.from_numpy(batch), torch.tensor(alpha), torch.tensor(sigma))

        return run

    matmul = matmul_rate()
    t1 = alternate(
        {
            "ort": lambda: fast.run(one, alpha, sigma),
            "shipped": lambda: shipped.run(one, alpha, sigma),
            "torch": torch_eager(one),
            "matmul": matmul,
        },
        repeats,
    )
    t8 = alternate(
        {"ort": lambda: fast.run(eight, alpha, sigma), "torch": torch_eager(eight)},
        2,
    )
    ort1, torch1, ship1 = median(t1["ort"]), median(t1["torch"]), median(t1["shipped"])
    ort8, torch8 = median(t8["ort"]) / 8, median(t8["torch"]) / 8
    achieved = flops / ort1
    peak = matmul() / median(t1["matmul"])
    size = f"{w}x{h}"
    return [
        Row(SECTION, f"onnxruntime, {size}, batch 1", f"{ort1:.3f} s/img",
            f"torch eager {torch1:.3f} s/img", torch1 / ort1, 1.3),
        Row(SECTION, f"onnxruntime, {size}, batch 8", f"{ort8:.3f} s/img",
            f"torch eager {torch8:.3f} s/img", torch8 / ort8, 1.3),
        Row(SECTION, "achieved FLOP/s, batch 1", f"{achieved / 1e9:.1f} GFLOP/s",
            f"numpy f32 matmul {peak / 1e9:.1f} GFLOP/s", achieved / peak, 0.4,
            note=f"{flops / 1e9:.1f} GFLOP per {size} image (torch FLOP counter), "
            f"{THREADS} threads"),
        Row(SECTION, "this export vs shipped default.onnx", f"{ort1:.3f} s/img",
            f"shipped graph {ship1:.3f} s/img", ship1 / ort1,
            note="same weights; the generator's output stage in phase space (models/phase.py)"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    show(rows(p.parse_args().repeats))


if __name__ == "__main__":
    main()
