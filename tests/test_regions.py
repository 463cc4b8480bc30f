"""segment() against scipy.ndimage's whole-image measurements: the same mask and regions,
bit for bit (the Detector's outputs must not move when its post-processing gets faster)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from models.regions import EIGHT_CONNECTED, segment


def reference(score_map: np.ndarray, threshold: float, min_area: int):
    labels, n = ndimage.label(score_map > threshold, structure=EIGHT_CONNECTED)
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = areas >= max(min_area, 1)
    mask = np.concatenate(([False], keep))[labels]
    peaks = ndimage.maximum(score_map, labels, index)
    means = ndimage.mean(score_map, labels, index)
    boxes = ndimage.find_objects(labels)
    regions = [
        ((s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start),
         int(areas[i]), float(peaks[i]), float(means[i]))
        for i, s in enumerate(boxes) if keep[i]
    ]  # fmt: skip
    return mask, sorted(regions, key=lambda r: r[2], reverse=True)


CASES = [(0, 0.52, 1), (1, 0.51, 30), (2, 2.0, 5)]  # many regions; some dropped; none


@pytest.mark.parametrize(("seed", "threshold", "min_area"), CASES)
def test_segment_matches_ndimage(seed, threshold, min_area):
    noise = np.random.default_rng(seed).random((173, 251)).astype(np.float32)
    score_map = ndimage.gaussian_filter(noise, 2)
    mask, regions = segment(score_map, threshold, min_area)
    want_mask, want = reference(score_map, threshold, min_area)
    assert mask.dtype == bool and np.array_equal(mask, want_mask)
    assert [(r.bbox, r.area, r.peak_score, r.mean_score) for r in regions] == want
    assert len(want) > 0 or threshold > 1
