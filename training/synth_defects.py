"""Defects of `training.synth`, each drawn as parts (premultiplied value, alpha, mask, depth
in the layer stack) whose mask is exact: beads, films, clumps, particles and beaded mats.
Sizes follow the fibres (the magnification) within bounds, except in classic."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from training.domains import Domain
from training.synth_shapes import (
    F32,
    LIGHT,
    PAD,
    dome,
    layer_blur,
    layer_depth,
    paths,
    profile,
    tubes,
    window,
)

_REF_AREA = 1024 * 704  # defect sizes are stated for an image of this size


def _inside(pts: np.ndarray, shape: tuple[int, int], m: float) -> np.ndarray:
    """Indices of centreline samples at least m px inside the visible (unpadded) image."""
    (h, w), x, y = shape, pts[0], pts[1]
    return np.flatnonzero((x > PAD + m) & (x < w - PAD - m) & (y > PAD + m) & (y < h - PAD - m))


def _spot(rng: np.random.Generator, shape: tuple[int, int], m: float) -> tuple[float, float]:
    """A random point at least m px inside the visible image (less if the image is small)."""
    h, w = shape
    m = min(m, (min(h, w) - 2 * PAD) / 2 - 1)
    return rng.uniform(PAD + m, w - PAD - m), rng.uniform(PAD + m, h - PAD - m)


def _scale(rf: float, dom: Domain) -> float:
    """The length defect sizes follow: the fibre radius (the magnification), kept within 3.2-8 px
    so that one defect covers roughly 0.1-5 % of a 1024x704 image; classic keeps its own."""
    return rf if dom.legacy_sizes else float(np.clip(rf, 3.2, 8.0))


def _spindle(canvas: tuple, at: np.ndarray, b: float, a: float, gain: float) -> None:
    """Paint one spindle of half-width b and half-length a onto (premult, alpha, core), centred
    on the fibre sample at = (x, y, tx, ty, r, ...) and aligned with it."""
    pm, al, core = canvas
    cx, cy, tx, ty, r = at[:5]
    win, yy, xx = window(pm.shape, cx, cy, a + 2)
    t, n = (xx - cx) * tx + (yy - cy) * ty, (xx - cx) * ty - (yy - cy) * tx
    wt = r + (b - r) * np.clip(1 - (t / a) ** 2, 0, 1) ** 1.5
    # fades out where the spindle is no wider than its fibre: the fibre itself shows there
    ab = np.clip(wt - np.abs(n) + 0.5, 0, 1) * np.clip(wt - r - 0.5, 0, 1)
    side = np.clip(n / wt, -1, 1) * (ty * LIGHT[0] - tx * LIGHT[1])
    v = gain * profile(np.clip(np.abs(n) / wt, 0, 1), side)
    pm[win], al[win] = pm[win] * (1 - ab) + v * ab, al[win] + ab * (1 - al[win])
    core[win] |= ab > 0.5


def _bead(rng: np.random.Generator, layers: list, shape: tuple, rf: float, dom: Domain) -> list:
    """1-3 spindles on top-layer fibres, aligned with the fibre, 3-5 fibre diameters wide (more
    on thin fibres outside classic)."""
    canvas = np.zeros(shape, F32), np.zeros(shape, F32), np.zeros(shape, bool)
    s = _scale(rf, dom)
    for _ in range(rng.integers(1, 4)):
        b = max(min(2 * s * rng.uniform(1.5, 2.5), (min(shape) - 2 * PAD) / 10), 2 * rf)
        a = b * rng.uniform(1.6, 2.4)
        pts = next((lay[2] for lay in reversed(layers) if _inside(lay[2], shape, a).size), None)
        if pts is None:
            (cx, cy), th = _spot(rng, shape, a), rng.uniform(0, np.pi)
            at = np.array([cx, cy, np.cos(th), np.sin(th), 0.5])  # no fibre here: a free spindle
        else:
            at = pts[:, rng.choice(_inside(pts, shape, a))]
        _spindle(canvas, at, b, a, rng.uniform(1.0, 1.15))
    return [(*canvas, len(layers))]


def _beaded(rng: np.random.Generator, layers: list, shape: tuple, rf: float, dom: Domain) -> list:
    """A beaded mat, as a line with a bad solution or voltage produces it: many small spindles
    spread over the fibres of the top three layers, each blurred and dimmed like its fibre.
    Together they cover roughly 1-4 % of the image; the mask is every visible bead."""
    h, w = shape
    top = range(max(0, len(layers) - 3), len(layers))
    b_mean = rf + float(np.clip(1.3 * rf, 2.5, 10.0))
    count = rng.uniform(0.008, 0.03) * (h - 2 * PAD) * (w - 2 * PAD) / (3.0 * b_mean**2)
    where = [_inside(layers[k][2], shape, 0) for k in top]  # beads may run off the edge
    layer = np.repeat(np.arange(len(where)), [len(i) for i in where])
    if not layer.size:  # no fibre in sight: a few free spindles
        return _bead(rng, layers, shape, rf, dom)
    picks = rng.choice(layer.size, max(3, round(count)))
    sample = np.concatenate(where)[picks]
    parts = []
    for j, k in enumerate(top):
        canvas = np.zeros(shape, F32), np.zeros(shape, F32), np.zeros(shape, bool)
        for at in layers[k][2][:, sample[layer[picks] == j]].T:
            b = at[4] + (b_mean - rf) * rng.uniform(0.7, 1.3)
            _spindle(canvas, at, b, b * rng.uniform(1.4, 2.2), at[5] * rng.uniform(1.0, 1.1))
        pm, al, core = canvas
        if blur := layer_blur(dom, layer_depth(k, len(layers))):
            pm, al = ndi.gaussian_filter(pm, blur), ndi.gaussian_filter(al, blur)
            core = al > 0.5
        parts.append((pm, al, core, k + 1))
    return parts


def _film_sizes(s: float, area: float, dom: Domain) -> tuple[float, float, float, float]:
    """Area range of a film's mesh cell, then of a free film, as shares of the visible image:
    a cell's size follows the fibres' spacing (~s), unlike classic's image-relative films."""
    if dom.legacy_sizes:
        return 0.015, 0.06, 0.02, 0.05
    lo = min(float(np.clip(150 * s**2, 0.002 * _REF_AREA, 0.01 * _REF_AREA)) / area, 0.015)
    hi = min(float(np.clip(1200 * s**2, 0.012 * _REF_AREA, 0.04 * _REF_AREA)) / area, 0.06)
    return lo, hi, lo + 0.1 * (hi - lo), lo + 0.6 * (hi - lo)


def _film(rng: np.random.Generator, layers: list, shape: tuple, rf: float, dom: Domain) -> list:
    """A semi-transparent membrane filling a mesh cell between the fibres of the top two layers,
    tucked under them (a free blob if no cell fits), with a brighter rim."""
    h, w = shape
    visible = (h - 2 * PAD) * (w - 2 * PAD)
    lo, hi, blob_lo, blob_hi = _film_sizes(_scale(rf, dom), visible, dom)
    free = np.maximum(layers[-1][1], layers[-2][1] if len(layers) > 1 else 0) < 0.5
    comp, n = ndi.label(free)
    count = np.bincount(comp.ravel(), minlength=n + 1)
    area = count / visible
    border = np.ones(shape, bool)
    border[PAD + 2 : h - PAD - 2, PAD + 2 : w - PAD - 2] = False
    area[np.unique(comp[border])] = 0  # cells cut by the image border
    inscribed = ndi.maximum(ndi.distance_transform_edt(free), comp, np.arange(n + 1))
    cells = np.flatnonzero((area > lo) & (area < hi) & (inscribed > 0.4 * np.sqrt(count)))
    if cells.size:
        foot = comp == rng.choice(cells)
    else:
        r0 = np.sqrt(rng.uniform(blob_lo, blob_hi) * visible / np.pi)
        cx, cy = _spot(rng, shape, r0)
        foot = dome(rng, cx, cy, r0, 1.0, shape)[1] > 0.5
    foot = ndi.binary_dilation(foot, iterations=int(rf) + 1)
    soft = ndi.gaussian_filter(foot.astype(F32), 0.8)
    rim = np.clip(2 * (1 - ndi.gaussian_filter(soft, 2.0)), 0, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(F32) / 20
    ripple = np.cos(xx * rng.normal() + yy * rng.normal() + rng.uniform(0, 6.3))
    val = rng.uniform(0.38, 0.5) + 0.2 * rim + 0.03 * ripple
    al = soft * rng.uniform(0.6, 0.8)
    return [((val * al).astype(F32), al.astype(F32), soft > 0.5, max(0, len(layers) - 2))]


def _clump(rng: np.random.Generator, layers: list, shape: tuple, rf: float, dom: Domain) -> list:
    """A dense tangle of short, thick, bent fibre pieces around an irregular blob."""
    s = _scale(rf, dom)
    rc = min(s * rng.uniform(8, 12), (min(shape) - 2 * PAD) / 8)
    cx, cy = _spot(rng, shape, rc)
    pm, al = dome(rng, cx, cy, rc * rng.uniform(0.3, 0.45), 0.8, shape)
    n = int(rng.integers(10, 18))
    ang, dist = rng.uniform(0, 2 * np.pi, n), rc * np.sqrt(rng.uniform(0, 0.6, n))
    x0, y0, th = cx + dist * np.cos(ang), cy + dist * np.sin(ang), rng.uniform(0, 2 * np.pi, n)
    radius = min(s, rc / 4) * rng.uniform(1.2, 1.8, n)
    seeds = np.stack([x0, y0, th, radius, rng.uniform(0.9, 1.15, n)])
    vp, ap = tubes(paths(rng, seeds, rc * rng.uniform(0.6, 0.9), 0.8, 0.5), shape)
    pm, al = pm * (1 - ap) + vp, al + ap * (1 - al)
    return [(pm, al, al > 0.5, len(layers))]


def _particle(rng: np.random.Generator, layers: list, shape: tuple, rf: float, dom: Domain) -> list:
    """1-4 small roughly round bright particles lying on top of the mat."""
    pm, al, s = np.zeros(shape, F32), np.zeros(shape, F32), _scale(rf, dom)
    for _ in range(rng.integers(1, 5)):
        r0 = min(s * rng.uniform(2.3, 3.5), (min(shape) - 2 * PAD) / 12)
        v, a = dome(rng, *_spot(rng, shape, r0 + 1), r0, 0.3, shape)
        pm, al = pm * (1 - a) + v * rng.uniform(1.0, 1.15), al + a * (1 - al)
    return [(pm, al, al > 0.5, len(layers))]


DRAW = {"bead": _bead, "film": _film, "clump": _clump, "particle": _particle, "beaded": _beaded}
