"""Does averaging the map over the mat's symmetries steady the formula's image score? The
networks trained on all 8 flips and rotations of a patch, so each is an equally good view;
a normal image's peak that one view alone raises should fall in the average, a defect's
should stay. No retraining: `PYTHONPATH=. python quality/bigan/tta.py MODEL.onnx TEST_DIR`
(MODEL: an ablation variant, e.g. ABLATION/formula.onnx, at its own alpha and sigma)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from models.decision import image_decision
from models.detector import Detector
from models.images import load_image
from training.data import find_dataset, load_mask
from training.metrics import aupro, auroc, pixel_auroc

# a view and the map's way back; the Gaussian blur commutes with each
VIEWS = {
    "identity": (lambda a: a, lambda a: a),
    "flip h": (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
    "flip v": (lambda a: a[::-1], lambda a: a[::-1]),
    "rotate 180": (lambda a: a[::-1, ::-1], lambda a: a[::-1, ::-1]),
    "transpose": (lambda a: a.T, lambda a: a.T),
    "rotate 90": (lambda a: np.rot90(a, 1), lambda a: np.rot90(a, -1)),
    "rotate 270": (lambda a: np.rot90(a, -1), lambda a: np.rot90(a, 1)),
    "anti-transpose": (lambda a: np.rot90(a, 2).T, lambda a: np.rot90(a.T, -2)),
}
SETS = {"1 view": 1, "2 views (flip h)": 2, "4 views (flips)": 4, "8 views": 8}


def main(model: Path, test: Path) -> None:
    det = Detector(model, providers=("cpu",))
    alpha, sigma = det.meta.alpha, det.meta.sigma
    layout = find_dataset(test, need_train=False)
    labels = np.array([s.kind != "good" for s in layout.test])
    per_view: list[list[np.ndarray]] = []
    masks = []
    for s in layout.test:
        img = load_image(s.path).pixels
        masks.append(load_mask(s.mask_path, img.shape))
        maps = []
        for there, back in VIEWS.values():
            view = np.ascontiguousarray(there(img))
            out = det.run(view[None, None], alpha, sigma, ("score_map",))["score_map"][0, 0]
            maps.append(np.ascontiguousarray(back(out)))
        per_view.append(maps)
    print(f"{model} (alpha {alpha:g}, sigma {sigma:g}), {len(labels)} images")
    print("| views | image AUROC | pixel AUROC | AUPRO@0.3 |\n|---|---|---|---|")
    for name, n in SETS.items():
        maps = [np.mean(m[:n], axis=0) for m in per_view]
        image = auroc(labels, np.array([image_decision(m) for m in maps]))
        print(
            f"| {name} | {image:.3f} | {pixel_auroc(masks, maps):.3f} | {aupro(masks, maps):.3f} |"
        )
    for i, name in enumerate(VIEWS):
        image = auroc(labels, np.array([image_decision(m[i]) for m in per_view]))
        print(f"| {name} alone | {image:.3f} | | |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
