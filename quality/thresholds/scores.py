"""Image scores of a model's held-out normals, its test normals and its test defects at every
(alpha, sigma) its threshold table calibrates, as JSON for rules.py.
Usage: python quality/thresholds/scores.py MODEL RUN TEST OUT.json"""

import json
import sys
from pathlib import Path

from models.detector import Detector
from training.data import find_dataset, load_images
from training.export import calibration_set
from training.refit import load_checkpoint

model, run, test, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
det = Detector(model, providers=("cpu",))
info = load_checkpoint(run)["meta"]
args = (info["train"]["crop_bottom"], info["holdout"], info.get("sample_bits", 16))
held, _ = calibration_set(Path(info["data"]), *args)
layout = find_dataset(test, need_train=False)
good = load_images([s for s in layout.test if s.kind == "good"])
bad = load_images([s for s in layout.test if s.kind != "good"])
found = {"own": [det.meta.alpha, det.meta.sigma], "pairs": {}}
for alpha, sigma in det.meta.calibrated_settings():
    found["pairs"][f"{alpha},{sigma}"] = {
        name: [r.score for r in det.score(images, alpha=alpha, sigma=sigma)]
        for name, images in (("held", held), ("good", good), ("bad", bad))
    }
out.write_text(json.dumps(found))
