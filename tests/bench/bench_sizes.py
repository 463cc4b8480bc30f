"""Quality against cost for model widths (ModelConfig.channels 8, 16 = the default, 32):
FLOPs per megapixel (torch's counter) and images/s of the exported graph on onnxruntime
(1024x704, batch 1, alternating) are measured here; speed does not depend on the weights, so
each width runs a freshly initialised export. Pixel AUROC and AUPRO are the ones recorded
in tests/bench/sizes.json: the test metrics of runs of the default-model recipe at each
width (their steps are stated: they are not all equals).

    python -m tests.bench.bench_sizes [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.detector import Detector
from tests.bench.common import CACHE, SIZE, THREADS, Row, alternate, bench_model, grey, median, show

RECORDED = Path(__file__).with_name("sizes.json")


def graph(channels: int) -> Path:
    """An export of the default config at this width, random weights (cached)."""
    import onnx
    import torch

    from models.config import ModelConfig
    from models.networks import BiGAN
    from models.scoring import AnomalyScorer
    from training.calibrate import write_artifact
    from training.export import scorer_from_artifact, write_graph

    path = CACHE / f"width-{channels}.onnx"
    if not path.is_file():
        _, meta = scorer_from_artifact(bench_model())
        cfg = ModelConfig.from_dict({**meta.model_config, "channels": channels})
        torch.manual_seed(0)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_graph(AnomalyScorer(BiGAN(cfg)).eval(), tmp)
        write_artifact(onnx.load(tmp), meta.with_(model_config=cfg.to_dict()), tmp)
        tmp.replace(path)
    return path


def rows(repeats: int = 3) -> list[Row]:
    from tests.bench.bench_runtime import model_flops
    from training.export import scorer_from_artifact

    recorded = json.loads(RECORDED.read_text())
    w, h = SIZE
    image = grey(w, h)[None, None]
    _, meta = scorer_from_artifact(bench_model())
    widths = sorted(v["channels"] for v in recorded.values())
    detectors, flops = {}, {}
    for c in widths:
        path = bench_model() if c == meta.model_config["channels"] else graph(c)
        detectors[c] = Detector(path, providers=("cpu",), threads=THREADS)
        scorer, _ = scorer_from_artifact(path)
        flops[c] = model_flops(scorer, image) / (w * h / 1e6)
    times = alternate(
        {c: lambda d=d: d.run(image, 0.5, 4.0) for c, d in detectors.items()}, repeats
    )
    out = []
    for c in widths:
        q = recorded[f"channels={c}"]
        ips = 1 / median(times[c])
        out.append(
            Row(
                "sizes",
                f"channels {c}" + (" (default)" if c == meta.model_config["channels"] else ""),
                f"recorded: AUROC {q['pixel_auroc']:.3f}, AUPRO {q['aupro']:.3f}",
                f"measured: {flops[c] / 1e9:.0f} GFLOP/MP, {ips:.2f} img/s",
                None,
                note=f"quality recorded in sizes.json, after {q['steps']} steps: {q['source']}",
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    show(rows(p.parse_args().repeats))


if __name__ == "__main__":
    main()
