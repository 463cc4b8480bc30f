"""Detector.score against a bare onnxruntime session on the same model and image:
what the runtime adds around the graph, with each of its stages timed in the same run
(zoom to the training fibre scale, the graph asked for two outputs, Omega and its regions,
the image decision).

    python -m tests.bench.bench_detector [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from models.detector import Detector
from models.regions import segment
from models.scale import to_scale
from tests.bench.common import SIZE, THREADS, Row, alternate, bench_model, grey, median, show

SECTION = "detector"


def rows(repeats: int = 5, batch: int = 4) -> list[Row]:
    d = Detector(bench_model(), providers=("cpu",), threads=THREADS, batch_size=batch)
    m = d.meta
    w, h = SIZE
    images = [grey(w, h, seed=i, defect="bead" if i % 2 else None) for i in range(batch)]
    one = images[1]
    smap = d.score([one])[0].score_map

    def bare(x: np.ndarray, outputs: list[str] | None = None):
        feeds = {
            "image": x,
            "alpha": np.asarray(m.alpha, np.float32),
            "sigma": np.asarray(m.sigma, np.float32),
        }
        return lambda: d.session.run(outputs, feeds)

    stacked = np.stack(images)[:, None]
    t = alternate(
        {
            "bare": bare(one[None, None]),
            "bare2": bare(one[None, None], ["score_map", "score"]),
            "score": lambda: d.score([one]),
            "zoom": lambda: to_scale(one, m.fibre_scale),
            "segment": lambda: segment(smap, m.pixel_threshold, m.min_area),
            "decision": lambda: float(smap.max()),
        },
        repeats,
    )
    tb = alternate({"bare": bare(stacked), "score": lambda: d.score(images)}, repeats)
    ms = {k: median(v) * 1000 for k, v in t.items()}
    bare_b, score_b = median(tb["bare"]) / batch, median(tb["score"]) / batch
    size = f"{w}x{h}"
    stages = ", ".join(
        f"{k} {ms[k]:.1f}" for k in ("zoom", "bare2", "segment", "decision")
    ).replace("bare2", "graph (2 outputs)")
    return [
        Row(SECTION, f"Detector.score, {size}, batch 1", f"{ms['score'] / 1000:.3f} s/img",
            f"bare session, all outputs {ms['bare'] / 1000:.3f} s/img", ms["score"] / ms["bare"],
            1.10, "<=", f"stages in ms: {stages}; Detector overhead "
            f"{ms['score'] - ms['bare2']:.1f} ms over the 2-output graph"),
        Row(SECTION, f"Detector.score, {size}, batch {batch}", f"{score_b:.3f} s/img",
            f"bare session, all outputs {bare_b:.3f} s/img", score_b / bare_b, 1.10, "<="),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    show(rows(p.parse_args().repeats))


if __name__ == "__main__":
    main()
