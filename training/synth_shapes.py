"""Drawing primitives of `training.synth`: fibre tubes along smooth random paths, domes,
the SEM edge-brightening profile, and the blur of a layer by its depth in the mat."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from training.domains import Domain

PAD = 12  # render margin so fibres, blurs and shadows continue past the border
LIGHT = (0.8, -0.6)  # in-plane direction of the SE detector: one flank of each fibre is brighter
F32 = np.float32


def profile(u: np.ndarray, side: np.ndarray) -> np.ndarray:
    """SEM edge brightening: secondary-electron yield grows as the surface tilts away from the
    beam, so a fibre or dome is brightest at its rims; `side` is the detector's one-sided light."""
    return (0.45 + 0.55 * u * u + 0.12 * side).astype(F32)


def tubes(pts: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render tubes around densely sampled centrelines, pts = (x, y, tx, ty, r, gain) x N: one
    EDT to the rasterised centrelines finds the nearest sample, whose tangent line gives the
    sub-pixel distance; only a band around the lines is shaded. Returns premult value, alpha."""
    h, w = shape
    val, alpha = np.zeros((2, h * w), F32)
    ix, iy = np.rint(pts[0]).astype(np.intp), np.rint(pts[1]).astype(np.intp)
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    if not ok.any():
        return val.reshape(shape), alpha.reshape(shape)
    flat = iy[ok] * w + ix[ok]
    attrs = np.zeros((6, h * w), F32)
    attrs[:, flat] = pts[:, ok]
    line = np.ones(h * w, bool)
    line[flat] = False
    dist, (ny, nx) = ndi.distance_transform_edt(line.reshape(shape), return_indices=True)
    band = np.flatnonzero(dist <= pts[4].max() + 1.5)
    px, py, tx, ty, r, g = attrs[:, (ny * w + nx).ravel()[band]]
    yy, xx = np.divmod(band, w)
    sd = (xx - px) * ty - (yy - py) * tx  # signed distance to the local tangent line
    d = np.maximum(np.abs(sd), dist.ravel()[band] - 0.71)
    a = np.clip(r - d + 0.5, 0.0, 1.0)
    side = np.clip(sd / r, -1, 1) * (ty * LIGHT[0] - tx * LIGHT[1])
    val[band], alpha[band] = g * profile(np.clip(d / r, 0, 1), side) * a, a
    return val.reshape(shape), alpha.reshape(shape)


def window(shape: tuple[int, int], cx: float, cy: float, ext: float) -> tuple:
    """The slice of the canvas within ext px of (cx, cy) and its float pixel grids."""
    y0, x0 = max(0, int(cy - ext)), max(0, int(cx - ext))
    y1, x1 = min(shape[0], int(cy + ext) + 2), min(shape[1], int(cx + ext) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(F32)
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def dome(
    rng: np.random.Generator, cx: float, cy: float, r0: float, rough: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A roughly round body (particle, clump core, film outline) with a radial harmonic outline,
    shaded as a dome with bright rims. Returns premultiplied value and alpha."""
    val, alpha = np.zeros(shape, F32), np.zeros(shape, F32)
    win, yy, xx = window(shape, cx, cy, r0 * (1 + rough) + 2)
    dx, dy = xx - cx, yy - cy
    phi, rho = np.arctan2(dy, dx), np.hypot(dx, dy)
    rad = np.full(dx.shape, r0, F32)
    for k in (2, 3, 4, 5):
        rad += r0 * rough * rng.uniform(0, 1) / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rad = np.maximum(rad, 0.3 * r0)
    a = np.clip(rad - rho + 0.5, 0, 1)
    side = np.clip((dx * LIGHT[0] + dy * LIGHT[1]) / rad, -1, 1)
    val[win], alpha[win] = profile(np.clip(rho / rad, 0, 1), side) * a, a
    return val, alpha


def paths(
    rng: np.random.Generator,
    seeds: np.ndarray,
    half: float,
    wiggle: float,
    step: float = 0.7,
    wavelength: tuple[float, float] = (0.6, 3.5),
) -> np.ndarray:
    """Smooth random paths of length 2 * half through seeds = (x0, y0, theta, radius, gain) x n:
    heading = theta + a few sinusoids of arc length, so fibres bend gently (or curl, with short
    wavelengths). Returns (x, y, tx, ty, radius, gain) x (n * samples)."""
    x0, y0, theta, radius, gain = seeds[:, :, None]
    n, s = seeds.shape[1], np.arange(-half, half, step, dtype=F32)
    lam = rng.uniform(*wavelength, (3, n, 1)) * min(half, 250.0)
    amp, ph = rng.uniform(0, wiggle, (3, n, 1)), rng.uniform(0, 2 * np.pi, (3, n, 1))
    head = theta + (amp * np.sin(2 * np.pi * s / lam + ph)).sum(0)
    tx, ty = np.cos(head).astype(F32), np.sin(head).astype(F32)
    x, y, c = np.cumsum(tx * step, 1), np.cumsum(ty * step, 1), len(s) // 2
    x, y = x + x0 - x[:, c : c + 1], y + y0 - y[:, c : c + 1]
    return np.stack(np.broadcast_arrays(x, y, tx, ty, radius, gain)).reshape(6, -1).astype(F32)


def layer_depth(k: int, layers: int) -> float:
    """Depth of layer k of a mat, 0 for the deepest, 1 for the top."""
    return k / (layers - 1) if layers > 1 else 1.0


def layer_blur(dom: Domain, depth: float) -> float:
    """Blur of a layer at depth (0 deepest, 1 top): the focus sits on the top of the mat."""
    return 0.3 + dom.depth_blur * (1 - depth) ** 1.5 if depth < 0.9 else 0.0
