"""Out of distribution: an image unlike the training images is never called normal.

The pixel map only says how unusual each pixel is *given* a fibre mat; a frame with no mat
at all (the beam off, a failed detector, a saturated or blurred frame) can score below a
normal image (a black frame's map is flat and low). So each image is also summarised at
image level and checked two ways:

- rules that hold for any micrograph (`blank_reason`): a constant, black, white or
  saturated frame, or one with no texture wider than a pixel (pure noise);
- the model of the normal images (`NormalModel`), fitted at calibration on the held-out
  normals as the runtime sees them (zoomed to the working scale): per summary, the range
  the normals span, widened by SLACK; an image outside any range is out of distribution.

Magnification outside what the runtime can zoom to the training scale is checked by the
Detector (models.scale.LIMITS). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SUMMARY_PIXELS = 1 << 20  # intensity summaries use a strided subsample of at most this many
FLAT = 0.01  # std below this: a constant frame (normal micrographs: 0.11-0.27)
DARK, BRIGHT = 0.02, 0.98  # a frame whose 99th percentile is below DARK is black, etc.
SATURATED = 0.995  # pixels at or above this are at full scale
MAX_SATURATED = 0.25  # share of saturated pixels beyond which a frame is saturated (normal <= 2 %)
# the range the normals span is widened by max(its own width, SLACK x the median): a new
# image varies from the fitted ones, but not by more than a quarter of a typical value
SLACK = 0.25
FLOOR = 0.02  # the smallest widening, in the summary's units
# the summaries the normals' model holds (the tails, p01 and p99, vary too much from one
# normal image to the next to bound: 3 of 10 training images of one domain fell outside)
SUMMARIES = {  # name: what it measures (the reason printed when out of range)
    "mean": "mean intensity",
    "std": "contrast (intensity std; blur and defocus lower it)",
}


def summarise(image: np.ndarray) -> dict[str, float]:
    """The image-level summaries of a grey float image (H, W) in [0, 1]."""
    step = max(1, int(np.ceil(np.sqrt(image.size / SUMMARY_PIXELS))))
    sub = image[::step, ::step].astype(np.float64)
    p01, p99 = np.percentile(sub, [1, 99])
    return {
        "mean": float(sub.mean()),
        "p01": float(p01),
        "p99": float(p99),
        "std": float(sub.std()),
        "saturated": float((sub >= SATURATED).mean()),
    }


def blank_reason(s: dict[str, float], fibre_scale: float) -> str | None:
    """Why a frame cannot be a micrograph of a mat, whatever the model: None if it can be."""
    if s["std"] < FLAT:
        kind = "black" if s["mean"] < DARK else "white" if s["mean"] > BRIGHT else "constant"
        return f"blank frame: {kind}, constant intensity {s['mean']:.3f} (std {s['std']:.4f})"
    if s["p99"] < DARK:
        return f"black frame: 99 % of pixels below {s['p99']:.3f} of full scale"
    if s["p01"] > BRIGHT:
        return f"white frame: 99 % of pixels above {s['p01']:.3f} of full scale"
    if s["saturated"] > MAX_SATURATED:
        return f"saturated: {100 * s['saturated']:.0f} % of pixels at full scale"
    if fibre_scale <= 0:
        return "no fibre texture: neighbouring pixels do not correlate (pure noise?)"
    return None


@dataclass(frozen=True)
class NormalModel:
    """Per summary, the range an image must lie in: the normals' range, widened."""

    ranges: dict[str, tuple[float, float]]
    images: int

    @classmethod
    def fit(cls, normals: Sequence[np.ndarray]) -> NormalModel:
        values = [summarise(img) for img in normals]
        ranges = {}
        for name in SUMMARIES:
            v = np.array([s[name] for s in values])
            lo, hi = float(v.min()), float(v.max())
            pad = max(hi - lo, SLACK * abs(float(np.median(v))), FLOOR)
            ranges[name] = (lo - pad, hi + pad)
        return cls(ranges, len(values))

    def to_dict(self) -> dict:
        return {"images": self.images, "ranges": {k: list(v) for k, v in self.ranges.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> NormalModel | None:
        """None for an artifact fitted before image-level models existed (an empty dict)."""
        if not d:
            return None
        return cls({k: (float(a), float(b)) for k, (a, b) in d["ranges"].items()}, d["images"])

    def reason(self, s: dict[str, float]) -> str | None:
        """Why the summaries s lie outside the normals: None if they do not."""
        out = [
            f"{SUMMARIES[k]} {s[k]:.3f} outside the training images' {lo:.3f}-{hi:.3f}"
            for k, (lo, hi) in self.ranges.items()
            if k in s and not lo <= s[k] <= hi
        ]
        return "; ".join(out) or None
