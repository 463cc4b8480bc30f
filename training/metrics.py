"""Detection and segmentation metrics on score maps (numpy + scikit-learn).

maps and masks are lists of (H, W) arrays of possibly different sizes; pixel metrics pool
every pixel of every image, as in the MVTec AD protocol."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from models.regions import EIGHT_CONNECTED


def _pool(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return float("nan")  # undefined with one class
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks: list[np.ndarray], maps: list[np.ndarray]) -> float:
    return auroc(_pool(masks), _pool(maps))


def roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(labels, bool), scores)
    return fpr, tpr


def pro_curve(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap against the pixel FPR on normal pixels, for every threshold.

    PRO(t) averages, over connected defect regions, the fraction of each region above t.
    One sort of all pixels gives the whole curve."""
    weights, normal = [], []
    labelled = [ndimage.label(m, structure=EIGHT_CONNECTED) for m in masks]
    n_regions = sum(n for _, n in labelled)
    if n_regions == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 0.0])
    for labels, n in labelled:
        areas = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        w = np.where(labels > 0, 1.0 / (areas[labels] * n_regions), 0.0)
        weights.append(w.ravel())
        normal.append((labels == 0).ravel())
    scores = _pool(maps)
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    w, neg = np.concatenate(weights)[order], np.concatenate(normal)[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # end of each tie group
    fpr = np.cumsum(neg)[last] / max(neg.sum(), 1)
    pro = np.cumsum(w)[last]
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to max_fpr, divided by max_fpr (1.0 is perfect)."""
    if not any(m.any() for m in masks):
        return float("nan")
    fpr, pro = pro_curve(masks, maps)
    keep = fpr <= max_fpr
    x = np.r_[fpr[keep], max_fpr]
    y = np.r_[pro[keep], np.interp(max_fpr, fpr, pro)]
    return float(np.trapezoid(y, x) / max_fpr)


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `scores > threshold`. The threshold lies midway
    between the lowest score it flags and the highest it does not: one ulp below a score,
    that image scored again in another batch (the graph's sums differ in the last bits)
    could fall on either side."""
    scores = np.asarray(scores)
    precision, recall, thresholds = precision_recall_curve(np.asarray(labels, bool), scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    lowest_flagged = thresholds[best]  # precision_recall_curve flags scores >= it
    below = scores[scores < lowest_flagged]
    if below.size == 0:  # every score flagged: no gap to sit in
        return float(np.nextafter(lowest_flagged, -np.inf)), float(f1[best])
    return float((float(lowest_flagged) + float(below.max())) / 2), float(f1[best])


def f1_iou(pred: list[np.ndarray], truth: list[np.ndarray]) -> tuple[float, float]:
    """F1 and IoU of predicted masks, pooled over all pixels."""
    p, t = _pool(pred).astype(bool), _pool(truth).astype(bool)
    tp = float(np.sum(p & t))
    fp, fn = float(np.sum(p & ~t)), float(np.sum(~p & t))
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
