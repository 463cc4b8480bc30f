"""The scoring graph's cost, side by side in one run: two ONNX artifacts on onnxruntime's
CPU provider, a 1024x704 image, runs alternated, the median of each (the Detector's work
around the graph is the same for both).

    python quality/bigan/speed.py OLD.onnx NEW.onnx [--repeats 7]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main(paths: list[str], repeats: int) -> None:
    sessions = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in paths]
    image = np.random.default_rng(0).random((1, 1, 704, 1024), dtype=np.float32)
    feeds = {"image": image, "alpha": np.array(0.5, np.float32), "sigma": np.array(2.0, np.float32)}
    times: list[list[float]] = [[] for _ in paths]
    for s in sessions:
        s.run(["score_map"], feeds)  # warm-up
    for _ in range(repeats):
        for s, t in zip(sessions, times, strict=True):
            began = time.perf_counter()
            s.run(["score_map", "score"], feeds)
            t.append(time.perf_counter() - began)
    medians = [statistics.median(t) for t in times]
    for p, m in zip(paths, medians, strict=True):
        print(f"{p}: {m * 1000:.0f} ms per 1024x704 image, {1 / m:.2f} images/s")
    print(f"new / old images/s: {medians[0] / medians[1]:.2f}x")


if __name__ == "__main__":
    n = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 7
    main([a for a in sys.argv[1:3]], n)
