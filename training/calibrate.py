"""Calibration of an exported artifact, run on onnxruntime so it applies to any artifact.

1. Component scales: the means of raw d and r on held-out normal images, written into the
   graph's `r_scale` / `d_scale` initializers, so both terms average 1 on normal data.
2. alpha and sigma: kept, or chosen on a labelled validation set (best pixel AUROC + AUPRO).
3. gamma and tau: at target false-positive rates on normal images, or at best F1 when
   labelled defects are given.
The graph is linear in alpha (blur(alpha d + (1-alpha) r) = alpha blur(d) + (1-alpha) blur(r)),
so two passes at alpha = 1 and alpha = 0 give the maps and scores for every alpha.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from models.artifact import ArtifactMeta
from models.detector import Detector
from models.errors import ArtifactError, DataError
from training import metrics

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
PIXEL_FPR = 0.005  # share of normal pixels above gamma (before min_area)
IMAGE_FPR = 0.05  # share of normal images above tau
SIGMAS = (1.0, 2.0, 4.0, 8.0)  # smoothing tried on labelled validation data


def _quality(row: dict[str, float]) -> float:
    """What alpha and sigma are chosen by on validation data: localisation first."""
    return row["pixel_auroc"] + row["aupro"]


@dataclass(frozen=True)
class Labelled:
    image: np.ndarray  # float32 (H, W)
    mask: np.ndarray  # bool (H, W), all False for a good image
    kind: str  # "good" or the defect type


def write_artifact(model: onnx.ModelProto, meta: ArtifactMeta, path: Path) -> None:
    """Set the scale initializers and metadata from meta, then replace path atomically."""
    scales = {i.name: i for i in model.graph.initializer if i.name in ("r_scale", "d_scale")}
    if len(scales) != 2:
        raise ArtifactError(f"{path}: the graph has no r_scale/d_scale initializers to calibrate")
    for name, init in scales.items():
        init.CopyFrom(numpy_helper.from_array(np.asarray(getattr(meta, name), np.float32), name))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_props())
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, path)


def _passes(det: Detector, images: list[np.ndarray], sigma: float):
    """Per image: blur(d), blur(r) and the scores at alpha = 1 and 0."""
    out = []
    for img in images:
        one = det.run(img[None, None], 1.0, sigma)
        zero = det.run(img[None, None], 0.0, sigma)
        out.append(
            (
                one["score_map"][0, 0],
                zero["score_map"][0, 0],
                float(one["score"][0]),
                float(zero["score"][0]),
            )
        )
    return out


def ablation(passes, masks: list[np.ndarray], labels: np.ndarray) -> dict[float, dict[str, float]]:
    table = {}
    for a in ALPHAS:
        maps = [a * d + (1 - a) * r for d, r, _, _ in passes]
        scores = np.array([a * s1 + (1 - a) * s0 for _, _, s1, s0 in passes])
        table[a] = {
            "pixel_auroc": metrics.pixel_auroc(masks, maps),
            "aupro": metrics.aupro(masks, maps),
            "image_auroc": metrics.auroc(labels, scores),
        }
    return table


def calibrate(
    path: Path,
    normals: list[np.ndarray],
    labelled: list[Labelled] = (),
    *,
    alpha: float | None = None,
    sigma: float | None = None,
    min_area: int | None = None,
    pixel_fpr: float = PIXEL_FPR,
    image_fpr: float = IMAGE_FPR,
) -> ArtifactMeta:
    """Calibrate the artifact at path in place; returns its new metadata."""
    if not normals:
        raise DataError("calibration needs at least one held-out normal image")
    det = Detector(path, providers=("cpu",))
    meta = det.meta.with_(
        sigma=det.meta.sigma if sigma is None else sigma,
        min_area=det.meta.min_area if min_area is None else min_area,
    )
    d_raw, r_raw = [], []
    for img in normals:
        out = det.run(img[None, None], 1.0, meta.sigma)
        d_raw.append(float(out["d_map"].mean(dtype=np.float64)) * meta.d_scale)
        r_raw.append(float(np.abs(out["reconstruction"][0, 0] - img).mean(dtype=np.float64)))
    meta = meta.with_(
        d_scale=max(float(np.mean(d_raw)), 1e-12), r_scale=max(float(np.mean(r_raw)), 1e-12)
    )
    model = onnx.load(path)
    write_artifact(model, meta, path)
    det = Detector(path, providers=("cpu",))

    calibration: dict = {"normal_images": len(normals), "labelled_images": len(labelled)}
    if labelled:
        masks = [s.mask for s in labelled]
        labels = np.array([s.kind != "good" for s in labelled])
        tables = {}
        for sig in SIGMAS if sigma is None else (meta.sigma,):
            passes = _passes(det, [s.image for s in labelled], sig)
            tables[sig] = (passes, ablation(passes, masks, labels))
        choices = [(sig, a) for sig in tables for a in (ALPHAS if alpha is None else (alpha,))]
        sig, alpha = max(choices, key=lambda c: _quality(tables[c[0]][1][c[1]]))
        passes = tables[sig][0]
        meta = meta.with_(sigma=sig)
        calibration["ablation"] = {
            f"sigma={s_}": {str(a): v for a, v in t.items()} for s_, (_, t) in tables.items()
        }
        maps = [alpha * d + (1 - alpha) * r for d, r, _, _ in passes]
        scores = np.array([alpha * s1 + (1 - alpha) * s0 for _, _, s1, s0 in passes])
        gamma, pixel_f1 = metrics.best_f1_threshold(
            np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
        )
        tau, image_f1 = metrics.best_f1_threshold(labels, scores)
        calibration |= {"method": "best_f1", "pixel_f1": pixel_f1, "image_f1": image_f1}
    else:
        alpha = meta.alpha if alpha is None else alpha
        passes = _passes(det, normals, meta.sigma)
        maps = [alpha * d + (1 - alpha) * r for d, r, _, _ in passes]
        scores = np.array([alpha * s1 + (1 - alpha) * s0 for _, _, s1, s0 in passes])
        gamma = float(np.quantile(np.concatenate([m.ravel() for m in maps]), 1 - pixel_fpr))
        tau = float(np.quantile(scores, 1 - image_fpr, method="higher"))
        calibration |= {"method": "target_fpr", "pixel_fpr": pixel_fpr, "image_fpr": image_fpr}
    calibration["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta = meta.with_(
        alpha=float(alpha), pixel_threshold=gamma, image_threshold=tau, calibration=calibration
    )
    write_artifact(onnx.load(path), meta, path)
    return meta
