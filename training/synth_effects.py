"""Sample and microscope effects of `training.synth` beyond the classic look: a grainy
substrate, charging glow and streaks, defocus, scan-line jitter, brightness and contrast.
Each is drawn from streams the defect does not touch and none depends on the defect, so a
micrograph with and without a defect still differs only at the defect."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from training.domains import Domain

_F32 = np.float32


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation; wide filters run on a
    coarser grid and are interpolated up, which looks the same and costs far less."""
    f = max(1, int(sigma // 4))
    coarse = (-(-shape[0] // f) + 1, -(-shape[1] // f) + 1)
    n = ndi.gaussian_filter(rng.standard_normal(coarse, dtype=_F32), sigma / f)
    if f > 1:
        n = ndi.zoom(n, f, order=1)
    n = n[: shape[0], : shape[1]]
    return n / max(float(n.std()), 1e-6)


def substrate(rng: np.random.Generator, shape: tuple[int, int], dom: Domain) -> np.ndarray:
    """Texture of a visible support (a filter membrane, a foil): grains with bright rims, as
    secondary-electron yield rises on tilted grain flanks, over slower mottling."""
    g = _unit_noise(rng, shape, dom.grain)
    gy, gx = np.gradient(g)
    rims = np.hypot(gx, gy)
    rims = rims / max(float(rims.mean()), 1e-6) - 1
    slow = _unit_noise(rng, shape, dom.grain * 12)
    return (dom.substrate * (0.6 * np.tanh(g) + 0.45 * rims + 0.3 * slow)).astype(_F32)


def glow(rng: np.random.Generator, cover: np.ndarray, dom: Domain) -> np.ndarray:
    """Charging glow to add to the scene: broad bright patches where charge builds up, strongest
    on the fibres (`cover`, the top layers' coverage) that hold it."""
    h, w = cover.shape
    field = _unit_noise(rng, (h, w), max(h, w) / 12)
    patches = np.clip(field - rng.uniform(0.0, 0.8), 0, 1) * rng.uniform(0.6, 1.0)
    fibres = 0.35 + 0.65 * ndi.gaussian_filter(cover, 3.0)
    return (dom.glow * patches * fibres).astype(_F32)


def defocus(img: np.ndarray, rng: np.random.Generator, dom: Domain) -> np.ndarray:
    """The beam spot (0.5 px) widened by defocus."""
    sigma = rng.uniform(*dom.focus) if dom.focus[1] > 0 else 0.0
    return ndi.gaussian_filter(img, float(np.hypot(0.5, sigma)))


def line_shifts(rng: np.random.Generator, rows: int, dom: Domain, limit: int) -> np.ndarray:
    """Whole-pixel horizontal displacement of each scan line: a hum (a sinusoid over a few
    dozen lines) plus line-to-line jitter. Whole pixels, so a mask can follow it exactly."""
    y = np.arange(rows)
    hum = np.sin(2 * np.pi * y / rng.uniform(8, 40) + rng.uniform(0, 2 * np.pi))
    s = dom.line_shift * (rng.uniform(0.5, 1.2) * hum + 0.7 * rng.standard_normal(rows))
    return np.clip(np.rint(s), -limit, limit).astype(np.intp)


def shift_lines(a: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Move row y of a by shifts[y] px to the right (edge values fill in)."""
    cols = np.clip(np.arange(a.shape[1]) - shifts[:, None], 0, a.shape[1] - 1)
    return np.take_along_axis(a, cols, axis=1)


def streaks(rng: np.random.Generator, shape: tuple[int, int], dom: Domain) -> np.ndarray:
    """Charging streaks to add to the image: a few scan lines that flare bright where the beam
    meets charge and fade to the right, the scan direction."""
    h, w = shape
    out = np.zeros(shape, _F32)
    x = np.arange(w, dtype=_F32)
    for _ in range(rng.poisson(dom.streaks * h / 1000)):
        y0, t = int(rng.integers(0, h)), int(np.exp(rng.uniform(0.7, 3.7)))  # 2-40 lines
        x0, length = rng.uniform(-0.2 * w, 0.9 * w), rng.uniform(0.05, 0.6) * w
        amp = rng.uniform(0.15, 0.5)
        prof = np.where(x >= x0, np.exp(-np.clip(x - x0, 0, None) / length), 0)
        prof *= np.clip((x - x0) / 3, 0, 1)  # a short rise
        rows = amp * prof * np.hanning(t + 2)[1:-1, None]
        out[y0 : y0 + t] += rows[: h - y0]
    return out


def exposure(img: np.ndarray, rng: np.random.Generator, dom: Domain) -> np.ndarray:
    """The operator's brightness and contrast setting."""
    return (rng.uniform(*dom.brightness) + rng.uniform(*dom.contrast) * img).astype(_F32)
