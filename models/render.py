"""Pictures and compact encodings of a result: the mask as PNG or COCO RLE, the score map
as a colour heatmap, and the overlay people look at: the server's responses and the batch
job's files alike. numpy + Pillow only."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from models.regions import Region

# inferno-like ramp: dark (normal) through red to pale yellow (far above the threshold)
_STOPS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
     [250, 193, 39], [252, 255, 164]],
    dtype=np.float64,
)  # fmt: skip
LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_STOPS)), c) for c in _STOPS.T],
    axis=1,
).astype(np.uint8)  # (256, 3)
MASK_COLOUR = (255, 48, 48)
BOX_COLOUR = (0, 229, 255)


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mask_png(mask: np.ndarray) -> bytes:
    """A 1-bit PNG, white where Omega is set; np.array(Image.open(...)) gives it back as bool."""
    return png_bytes(Image.fromarray(np.ascontiguousarray(mask, dtype=bool)))


def mask_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: column-major (Fortran) order, counts alternate starting with a
    run of zeros (possibly of length 0), size = [height, width]."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """The inverse of mask_rle (for clients and tests)."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape((h, w), order="F")


def heatmap_rgb(score_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """(H, W, 3) uint8: the threshold sits mid-ramp, twice the threshold and above is the top."""
    top = 2 * pixel_threshold if pixel_threshold > 0 else float(score_map.max()) or 1.0
    idx = np.clip(score_map / top * 255, 0, 255).astype(np.uint8)
    return LUT[idx]


def heatmap_png(score_map: np.ndarray, pixel_threshold: float) -> bytes:
    return png_bytes(Image.fromarray(heatmap_rgb(score_map, pixel_threshold)))


def grey_u8(pixels: np.ndarray) -> np.ndarray:
    return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay_png(
    pixels: np.ndarray,
    score_map: np.ndarray,
    mask: np.ndarray,
    regions: list[Region],
    pixel_threshold: float,
    *,
    heatmap: bool = True,
    contours: bool = True,
    boxes: bool = True,
    opacity: float = 0.45,
) -> bytes:
    """The image in grey, the heatmap blended over it, Omega outlined and regions boxed."""
    out = np.repeat(grey_u8(pixels)[..., None], 3, axis=2).astype(np.float32)
    if heatmap and opacity > 0:
        out = (1 - opacity) * out + opacity * heatmap_rgb(score_map, pixel_threshold)
    out = out.astype(np.uint8)
    width = max(1, min(mask.shape) // 256)  # lines stay visible on large images
    if contours and mask.any():
        edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=1)
        out[edge] = MASK_COLOUR
    im = Image.fromarray(out)
    if boxes and regions:
        draw = ImageDraw.Draw(im)
        for r in regions:
            x, y, w, h = r.bbox
            draw.rectangle((x, y, x + w - 1, y + h - 1), outline=BOX_COLOUR, width=width)
    return png_bytes(im)
