"""The image decision: the map's peak, with the edge band (reflected context) left out."""

from __future__ import annotations

import numpy as np
import pytest

from models.decision import EDGE, decided_part, image_decision


def test_edge_peak_is_left_out_inner_peak_counts():
    m = np.zeros((200, 300), np.float32)
    m[0, 150] = 9.0  # on the edge, where normal maps peak
    m[EDGE - 1, 150] = 8.0  # still inside the band
    m[100, 150] = 2.0
    assert image_decision(m) == 2.0
    m[EDGE, 150] = 3.0  # the first row that counts
    assert image_decision(m) == 3.0


@pytest.mark.parametrize("px", [0.5, 2.0])
def test_band_follows_the_working_scale(px):
    """A map of an image zoomed for scoring: the band is EDGE working-scale pixels."""
    m = np.zeros((400, 400), np.float32)
    band = round(EDGE * px)
    m[band - 1, 200], m[band, 200] = 9.0, 1.0
    assert image_decision(m, px) == 1.0


def test_small_maps_keep_their_centre():
    m = np.zeros((9, 40), np.float32)
    m[4, 20] = 5.0
    assert image_decision(m) == 5.0
    assert image_decision(np.full((1, 1), 7.0, np.float32)) == 7.0


@pytest.mark.parametrize("shape", [(200, 300), (9, 40), (1, 1)])
def test_decided_part_is_what_the_peak_is_taken_over(shape):
    """Statistics other than the peak (quality scripts) read the same part of the map."""
    m = np.random.default_rng(0).random(shape).astype(np.float32)
    part = decided_part(m)
    band = (shape[0] - part.shape[0]) // 2
    assert part.size > 0 and image_decision(m) == float(part.max())
    assert part.shape == (shape[0] - 2 * band, shape[1] - 2 * band)
    assert band == min(EDGE, (shape[0] - 1) // 4, (shape[1] - 1) // 4)
