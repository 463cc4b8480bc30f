"""Evaluation of an artifact on a labelled test set: metrics.json, per-image scores.csv,
curves and overlays in an HTML report, optional per-image score maps. Runs the Detector,
i.e. exactly what serves."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from models.detector import Detector
from models.errors import DataError
from models.images import load_image
from training import metrics
from training.data import find_dataset, load_mask


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _summary(kind_masks, kind_maps, kind_scores, kind_labels, kind_pred) -> dict:
    labels = np.array(kind_labels)
    out = {
        "images": len(kind_labels),
        "image_auroc": metrics.auroc(labels, np.array(kind_scores)),  # of the score that decides
    }
    if kind_masks is not None:
        f1, iou = metrics.f1_iou(kind_pred, kind_masks)
        out |= {
            "pixel_auroc": metrics.pixel_auroc(kind_masks, kind_maps),
            "aupro": metrics.aupro(kind_masks, kind_maps),
            "pixel_f1": f1,
            "pixel_iou": iou,
        }
    return out


def evaluate(
    model: Path, data: Path, out: Path, *, save_maps: Path | None = None, alpha: float | None = None
) -> dict:
    """Score every test image of DATA; write OUT/metrics.json and OUT/report.html. Metrics
    a test set cannot define (AUROC without defects) are null, with a warning."""
    from training.report import write_report

    for flag, path in (("--out", out), ("--save-maps", save_maps)):
        if path is not None and path.exists() and not path.is_dir():
            raise DataError(f"{flag} {path} is a file, not a folder")
    det = Detector(model, providers=("cpu",))
    layout = find_dataset(data, need_train=False)
    if not layout.test:
        raise DataError(f"{data}: no test images (expected the MVTec AD layout with test/)")
    has_masks = layout.has_masks
    if not has_masks:
        _warn(f"{data}: no ground-truth masks, image metrics only")
    kinds = {s.kind for s in layout.test}
    if kinds == {"good"} or "good" not in kinds:
        only = "good" if kinds == {"good"} else "defective"
        _warn(f"{data}: only {only} test images: AUROC needs both good and defective (null)")
    crop = det.meta.crop_bottom
    rows = []
    for s in layout.test:
        img = load_image(s.path, crop_bottom=crop, sample_bits=det.meta.sample_bits).pixels
        res = det.score([img], alpha=alpha)[0]
        mask = load_mask(s.mask_path, img.shape, crop) if has_masks else None
        rows.append((s, img, res, mask))
        if save_maps is not None:
            target = save_maps / s.kind / f"{s.path.stem}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, res.score_map.astype(np.float32))

    def summary(selected):
        return _summary(
            [m for _, _, _, m in selected] if has_masks else None,
            [r.score_map for _, _, r, _ in selected],
            [r.score for _, _, r, _ in selected],
            [s.kind != "good" for s, _, _, _ in selected],
            [r.mask for _, _, r, _ in selected],
        )

    kinds = sorted({s.kind for s, *_ in rows} - {"good"})
    good = [row for row in rows if row[0].kind == "good"]
    result = {
        "model": {"name": det.name, "sha256": det.sha256, "alpha": rows[0][2].alpha},
        "data": str(data),
        **summary(rows),
        "per_type": {k: summary(good + [row for row in rows if row[0].kind == k]) for k in kinds},
    }
    result = _defined(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    _write_scores(out / "scores.csv", rows, data)
    write_report(out, result, rows)
    return result


def _write_scores(path: Path, rows, data: Path) -> None:
    """Per image the score and verdict every other surface gives (the ranking behind the
    AUROC), so a person can see which images were missed."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", "kind", "score", "is_anomalous", "out_of_distribution"])
        for s, _, r, _ in rows:
            rel = s.path.relative_to(data) if s.path.is_relative_to(data) else s.path
            out.writerow([rel, s.kind, repr(r.score), r.is_anomalous, r.out_of_distribution or ""])


def _defined(value):
    """NaN (a metric a test set cannot define) as None: JSON null, not the invalid NaN."""
    if isinstance(value, dict):
        return {k: _defined(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value
