"""How the formula's image score ranks a labelled test set at each alpha and sigma, and by
other statistics of its map than the peak: the networks of one exported model, no
retraining. `PYTHONPATH=. python quality/bigan/imgscore.py MODEL.onnx TEST_DIR` (MODEL: an
ablation variant with weights 1, 0, 0, 0, so the graph's map is alpha d + (1 - alpha) r)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from models.decision import decided_part, image_decision
from models.detector import Detector
from models.images import load_image
from training.metrics import auroc

SIGMAS = (2.0, 4.0, 8.0)
ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.0)


def top(share: float):
    """The mean of the highest `share` of the map's decided part."""

    def stat(m: np.ndarray) -> float:
        part = np.sort(decided_part(m).ravel())
        return float(part[-max(1, int(part.size * share)) :].mean())

    return stat


STATS = {
    "peak": image_decision,  # the product's image score
    "top 0.1 %": top(1e-3),
    "top 1 %": top(1e-2),
    "peak of blur 8": lambda m: image_decision(ndi.gaussian_filter(m, 8)),
    "mean": lambda m: float(decided_part(m).mean()),
}


def main(model: Path, test: Path) -> None:
    det = Detector(model, providers=("cpu",))
    files = sorted((test / "test").glob("*/*.png"))
    labels = np.array([f.parent.name != "good" for f in files])
    images = [load_image(f).pixels for f in files]

    def maps(alpha: float, sigma: float) -> list[np.ndarray]:
        return [
            det.run(im[None, None], alpha, sigma, ("score_map",))["score_map"][0, 0]
            for im in images
        ]

    print("| sigma | alpha | " + " | ".join(STATS) + " |")
    print("|---" * (2 + len(STATS)) + "|")
    for sigma in SIGMAS:
        d, r = maps(1.0, sigma), maps(0.0, sigma)
        for alpha in ALPHAS:
            mixed = [alpha * a + (1 - alpha) * b for a, b in zip(d, r, strict=True)]
            row = [auroc(labels, np.array([f(m) for m in mixed])) for f in STATS.values()]
            print(f"| {sigma:g} | {alpha:g} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
