"""Collect what the model card reports about a `make default-model` build into one JSON file
(models/default.metrics.json), which tests/test_default_model.py holds the model to."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from models.detector import Detector

KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_f1", "pixel_iou")


def collect(build: Path, model: Path) -> dict:
    det = Detector(model, providers=("cpu",))
    run = json.loads((build / "run" / "config.json").read_text())
    test = json.loads((build / "report" / "metrics.json").read_text())
    ablation = {}  # training.ablation's families of terms, on the same networks
    for path in sorted(build.glob("ablation/*/metrics.json")):
        m = json.loads(path.read_text())
        ablation[path.parent.name] = {k: m[k] for k in KEYS}
    return {
        "chosen": {
            "alpha": det.meta.alpha,
            "sigma": det.meta.sigma,
            "term_weights": det.meta.term_weights,
            "pixel_threshold": det.meta.pixel_threshold,
            "image_threshold": det.meta.image_threshold,
        },
        "self_check": det.meta.calibration,
        "test": test,
        "test_ablation": ablation,
        "train": {
            "config": run["train"],
            "model": run["model"],
            "seed": run["seed"],
            "steps": det.meta.train_config.get("steps"),
        },
    }


if __name__ == "__main__":
    print(json.dumps(collect(Path(sys.argv[1]), Path(sys.argv[2])), indent=2))
