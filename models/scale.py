"""Magnification: the fibre scale of a micrograph, so that an image taken at another
magnification than the training images can be resampled to theirs before scoring.

Lines change magnification from day to day; a model fitted at one scale reads fibres twice
as wide as a texture it never saw. The scale is the half-width of the image's radially
averaged autocorrelation (pixel noise and slow shading set aside): it grows with the fibre
width of a mat of fibres in any orientation, and is cheap (two FFTs). Torch-free.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

SHADING_SIGMA = 32.0  # px: brightness changes slower than this are illumination, not fibres
MAX_SIDE = 384  # larger images are measured on a centre crop of this side (15 ms)
TOLERANCE = 1.25  # scales within this factor of the training scale are left alone
# below this correlation of neighbouring pixels an image is pixel noise, not a mat: it has no
# fibre scale (real micrographs, noisy ones included, measure 0.64-0.97; white noise 0)
MIN_NEIGHBOUR_CORRELATION = 0.3
LIMITS = (0.25, 4.0)  # resampling factors beyond these are clipped
# the scales a model works at: a finer training set is zoomed in (a bead of a 2 px fibre
# spans too few cells of the grids), a coarser one zoomed out (nothing is lost but time)
WORKING = (3.0, 6.0)


def working_scale(scales: list[float]) -> float:
    """The one scale a model is trained and scores at: its images' median, within WORKING."""
    return float(np.clip(np.median(scales), *WORKING))


def _shading(img: np.ndarray) -> np.ndarray:
    """ndimage.gaussian_filter(img, SHADING_SIGMA, mode="reflect") to rounding, by FFT: the
    image mirrored out by the kernel's radius, then one circular convolution, which the
    margin keeps from wrapping into the image. Twice as fast as ndimage's 257-tap kernel,
    and the Detector measures every image."""
    r = int(4.0 * SHADING_SIGMA + 0.5)  # ndimage's truncate 4.0
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / SHADING_SIGMA) ** 2)
    taps /= taps.sum()
    padded = np.pad(img, r, mode="symmetric")  # ndimage's "reflect"
    shape = tuple(sfft.next_fast_len(n, real=True) for n in padded.shape)
    rows, cols = (np.roll(np.pad(taps, (0, n - taps.size)), -r) for n in shape)
    gain = np.outer(sfft.fft(rows).real, sfft.rfft(cols).real)
    out = sfft.irfft2(sfft.rfft2(padded, shape) * gain, shape)
    return out[r : r + img.shape[0], r : r + img.shape[1]]


def fibre_scale(image: np.ndarray) -> float:
    """The lag (px) at which the autocorrelation of the shading-free image falls to 1/2."""
    h, w = image.shape
    y, x = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
    img = image[y : y + MAX_SIDE, x : x + MAX_SIDE].astype(np.float64)
    detail = img - _shading(img)
    detail -= detail.mean()
    power = np.abs(np.fft.rfft2(detail, s=(2 * img.shape[0], 2 * img.shape[1]))) ** 2
    ac = np.fft.irfft2(power)[: img.shape[0] // 2, : img.shape[1] // 2]
    if ac[0, 0] <= 0:
        return 0.0  # a flat image has no scale
    yy, xx = np.indices(ac.shape)
    radius = np.hypot(yy, xx).astype(int).ravel()
    profile = np.bincount(radius, ac.ravel()) / np.maximum(np.bincount(radius), 1)
    if profile[1] < MIN_NEIGHBOUR_CORRELATION * profile[0]:
        return 0.0  # no texture wider than a pixel: nothing to zoom by
    # pixel noise adds a spike at lag 0 only: extrapolate lag 0 from lags 1 and 2 instead
    profile /= max(2 * profile[1] - profile[2], profile[1])
    below = np.flatnonzero(profile[1:] < 0.5) + 1
    if below.size == 0:
        return float(len(profile))
    r = int(below[0])  # linear interpolation between r - 1 (>= 1/2) and r (< 1/2)
    return float(r - 1 + (profile[r - 1] - 0.5) / (profile[r - 1] - profile[r]))


def resample_factor(train_scale: float, image_scale: float) -> float:
    """How much to zoom an image so its fibres look as wide as in training: 1.0 when the
    scales agree within TOLERANCE or either is unknown."""
    if train_scale <= 0 or image_scale <= 0:
        return 1.0
    factor = train_scale / image_scale
    if 1 / TOLERANCE <= factor <= TOLERANCE:
        return 1.0
    return float(np.clip(factor, *LIMITS))


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float32 (H, W) map or image brought to shape (rows, cols), bilinear. Writable: a
    view of PIL's buffer would be read-only, which torch.from_numpy warns about."""
    from PIL import Image

    out = Image.fromarray(np.ascontiguousarray(image, np.float32), mode="F")
    return np.array(out.resize((shape[1], shape[0]), Image.BILINEAR), np.float32)


def to_scale(
    image: np.ndarray, target: float, rounds: int = 2, measured: float | None = None
) -> tuple[np.ndarray, float]:
    """The image zoomed so its fibre scale is `target` (unchanged within TOLERANCE), and the
    zoom factor. The estimate is monotone in the true scale but not proportional to it, so
    a second round measures the zoomed image and corrects the factor. `measured`: the
    image's fibre_scale, when the caller has it already (it is not measured twice)."""
    if target <= 0:
        return image, 1.0
    factor, out = 1.0, image
    for k in range(rounds):
        step = resample_factor(
            target, measured if k == 0 and measured is not None else fibre_scale(out)
        )
        if step == 1.0:
            break
        factor = float(np.clip(factor * step, *LIMITS))
        shape = (max(8, round(image.shape[0] * factor)), max(8, round(image.shape[1] * factor)))
        out = resample(image, shape)
    return out, factor
