"""From a pixel score map to the mask Omega and its regions (scipy.ndimage, torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    bbox: tuple[int, int, int, int]  # x, y, width, height
    area: int  # pixels
    peak_score: float
    mean_score: float


def segment(
    score_map: np.ndarray, threshold: float, min_area: int
) -> tuple[np.ndarray, list[Region]]:
    """Omega = score_map > threshold minus regions under min_area; regions by peak, descending."""
    labels, n = ndimage.label(score_map > threshold, structure=EIGHT_CONNECTED)
    if n == 0:
        return np.zeros(score_map.shape, dtype=bool), []
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = areas >= max(min_area, 1)
    mask = keep[labels - 1] & (labels > 0)
    peaks = ndimage.maximum(score_map, labels, index)
    means = ndimage.mean(score_map, labels, index)
    regions = [
        Region(
            bbox=(sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start),
            area=int(areas[i]),
            peak_score=float(peaks[i]),
            mean_score=float(means[i]),
        )
        for i, sl in enumerate(ndimage.find_objects(labels))
        if keep[i]
    ]
    regions.sort(key=lambda r: r.peak_score, reverse=True)
    return mask, regions
