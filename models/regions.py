"""From a pixel score map to the mask Omega and its regions (scipy.ndimage, torch-free).

One labelling pass over the map; everything after it works on the pixels above the
threshold only (a defect covers 0.1-5 % of an image), not on whole-image label arrays."""

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
    # it can make the image anomalous: it reaches inside the edge band, where the image score
    # is taken, on the map that decides (not a map drawn at an overridden alpha or sigma)
    counts: bool = True


def interior(shape: tuple[int, int], band: tuple[int, int]) -> tuple[slice, slice]:
    """The part of a map of `shape` inside a band of (rows, cols) along its edge."""
    (h, w), (by, bx) = shape, band
    return slice(by, h - by), slice(bx, w - bx)


def segment(
    score_map: np.ndarray,
    threshold: float,
    min_area: int,
    inside: tuple[slice, slice] | None = None,
    decides: bool = True,
) -> tuple[np.ndarray, list[Region]]:
    """Omega = score_map > threshold minus regions under min_area; regions by peak, descending.
    With `inside` (the part of the map the image score looks at: interior()), a region
    wholly outside it is marked counts=False; every region is, when the map does not decide
    (`decides` False: the image score is taken on another map)."""
    mask = score_map > threshold
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if n == 0:
        return mask, []
    # raster order, as ndimage.mean sums: the means come out bit for bit the same
    where = np.flatnonzero(mask)
    label = labels.ravel()[where] - 1
    values = score_map.ravel()[where]
    areas = np.bincount(label, minlength=n)
    keep = areas >= max(min_area, 1)
    if not keep.all():
        mask.ravel()[where[~keep[label]]] = False
    peaks = np.full(n, -np.inf, dtype=values.dtype)
    np.maximum.at(peaks, label, values)
    means = np.bincount(label, weights=values, minlength=n) / areas
    ys, xs = np.divmod(where, score_map.shape[1])
    y0, x0 = np.full(n, mask.shape[0]), np.full(n, mask.shape[1])
    y1, x1 = np.zeros(n, np.intp), np.zeros(n, np.intp)
    np.minimum.at(y0, label, ys)
    np.minimum.at(x0, label, xs)
    np.maximum.at(y1, label, ys)
    np.maximum.at(x1, label, xs)
    if not decides:
        counts = np.zeros(n, bool)
    elif inside is None:
        counts = np.ones(n, bool)
    else:
        ry, rx = inside
        within = (ys >= ry.start) & (ys < ry.stop) & (xs >= rx.start) & (xs < rx.stop)
        counts = np.bincount(label, weights=within, minlength=n) > 0
    regions = [
        Region(
            bbox=(int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)),
            area=int(areas[i]),
            peak_score=float(peaks[i]),
            mean_score=float(means[i]),
            counts=bool(counts[i]),
        )
        for i in np.flatnonzero(keep)
    ]
    regions.sort(key=lambda r: r.peak_score, reverse=True)
    return mask, regions
