"""Decode image bytes into grey float32 pixels in [0, 1].

Shared by training (trusted files) and the HTTP service (hostile uploads), so every failure
is an `ImageError` with a one-line message and a specific code, and nothing is decoded
before the declared size has been checked. Torch-free: numpy and Pillow only.

Codes: empty, unsupported_type, corrupt, too_large, bad_size, bad_image (NaN/inf values),
unreadable (load_image only). Pillow's global limits are read, never changed:
Image.MAX_IMAGE_PIXELS (89 Mpx by default) caps max_pixels, so an image Pillow would warn
about is rejected; PngImagePlugin caps each zTXt/iTXt/iCCP chunk at 1 MB decompressed and
all text at 64 MB, less than the pixels themselves may take.

Values: 8-bit / 255; 16-bit (and 32-bit integers within 0..65535) / (2^bits - 1), where bits
is what the TIFF declares (BitsPerSample below 16, or MaxSampleValue / SMaxSampleValue rounded
up to whole bits: SEM detectors often write 12-bit values into 16-bit files), else the
caller's `sample_bits` (the model's training depth, 16 by default), said in the notes; at
16, data whose values all lie below 4096 is read as 12-bit (DETECTOR_BITS), noted; float
kept when already in [0, 1]; other float or integer data is min-max scaled, with a note.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import ImageError, NanoinspectError

SUPPORTED_FORMATS = ("PNG", "TIFF", "JPEG", "BMP", "GIF", "WEBP")
# the file names training, evaluation and the batch job take for images: SUPPORTED_FORMATS
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_PIXELS = 50_000_000  # the largest image, for the server (NANOINSPECT_MAX_PIXELS) and the rest
MIN_IMAGE_SIDE = 8  # px: smaller sides are refused everywhere
MAX_ASPECT = 64
MAX_COUNTED_PAGES = 1000

_MAGIC = (  # (prefix, offset, format, supported)
    (b"\x89PNG\r\n\x1a\n", 0, "PNG", True),
    (b"\xff\xd8\xff", 0, "JPEG", True),
    (b"II*\x00", 0, "TIFF", True),
    (b"MM\x00*", 0, "TIFF", True),
    (b"II+\x00", 0, "BigTIFF", False),
    (b"MM\x00+", 0, "BigTIFF", False),
    (b"BM", 0, "BMP", True),
    (b"GIF87a", 0, "GIF", True),
    (b"GIF89a", 0, "GIF", True),
    (b"WEBP", 8, "WEBP", True),
    (b"%PDF", 0, "PDF", False),
    (b"%!PS", 0, "PostScript", False),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS", False),
    (b"8BPS", 0, "PSD", False),
    (b"PK\x03\x04", 0, "ZIP", False),
    (b"\x1f\x8b", 0, "gzip", False),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000", False),
    (b"\xffO\xffQ", 0, "JPEG 2000", False),
    (b"ftyp", 4, "HEIF/AVIF/MP4", False),
)
_EIGHT_BIT_MODES = {"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX"}
_VIA_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV"}
_UINT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# untagged 16-bit data all below 2^12 is a 12-bit detector's: read as 16-bit it would look
# nearly black (and a dark frame out of distribution), so it is read as 12-bit, with a note
DETECTOR_BITS = 12
BITS_PER_SAMPLE, MAX_SAMPLE_VALUE, S_MAX_SAMPLE_VALUE = 258, 281, 341  # TIFF tags


@dataclass(frozen=True, eq=False)
class Decoded:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], C-contiguous
    format: str  # one of SUPPORTED_FORMATS
    bit_depth: int  # 8, 9-16 for 16-bit containers (as scaled), 32 for float or 32-bit data
    frames: int  # pages/frames in the file; the first is used
    notes: tuple[str, ...]  # human-readable remarks on what was done


def decode_image(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    crop_bottom: float | int = 0,
    name: str = "image",
    sample_bits: int = 16,
) -> Decoded:
    """Decode the first frame of `data`; crop_bottom removes the SEM info banner (rows or a
    fraction of the height: `crop_setting`); 16-bit data without a bit-depth tag is read as
    `sample_bits` significant bits."""
    if not data:
        raise ImageError(f"{name}: the file is empty", code="empty")
    fmt = _sniff(data, name)
    limit = (
        max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    )
    notes: list[str] = []
    try:
        im = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        _check_shape(im.size, name, limit)  # before any pixel data is decoded
        frames, more = _count_frames(im)
        if frames > 1:
            im.seek(0)
            pages = "pages" if fmt == "TIFF" else "frames"
            count = f"at least {frames}" if more else str(frames)
            notes.append(f"multi-{pages[:-1]} {fmt}: first of {count} {pages} used")
        im.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own limit, hit before ours is checked
        declared = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{int(declared[1]):,} pixels" if declared else "its declared size"
        raise ImageError(
            f"{name}: {count} exceeds the limit of {limit:,}", code="too_large"
        ) from None
    except Exception as e:  # hostile bytes reach Pillow's parsers: any failure is corruption
        if isinstance(e, ValueError) and "MAX_TEXT" in str(e):
            raise ImageError(
                f"{name}: PNG metadata (text or ICC profile) too large ({e})", code="too_large"
            ) from None
        detail = f"{type(e).__name__}: {e}"
        if isinstance(e, UnidentifiedImageError):
            detail = "header not understood: corrupt, or a variant Pillow cannot read"
        raise ImageError(f"{name}: corrupt or truncated {fmt} ({detail})", code="corrupt") from None
    _upright(im, notes)
    grey, depth = _to_grey(im, name, notes, sample_bits)
    grey = _crop(grey, crop_bottom, name)
    _check_shape((grey.shape[1], grey.shape[0]), name, limit)
    pixels = np.ascontiguousarray(grey, dtype=np.float32)
    return Decoded(pixels, fmt, depth, int(frames), tuple(notes))


def load_image(
    path: str | Path,
    *,
    max_pixels: int = MAX_PIXELS,
    crop_bottom: float | int = 0,
    sample_bits: int = 16,
) -> Decoded:
    """Read a file and decode it; the file name is in every error message."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})", code="unreadable") from None
    return decode_image(
        data,
        max_pixels=max_pixels,
        crop_bottom=crop_bottom,
        name=str(path),
        sample_bits=sample_bits,
    )


def _sniff(data: bytes, name: str) -> str:
    """Name the format from its magic bytes, so unsupported files get a precise message."""
    for magic, offset, fmt, supported in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if supported:
                return fmt
            raise ImageError(f"{name}: {fmt} is not supported", code="unsupported_type")
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    for tag, fmt in ((b"<svg", "SVG"), (b"<!doctype html", "HTML"), (b"<html", "HTML")):
        if tag in head:
            raise ImageError(f"{name}: {fmt} is not supported", code="unsupported_type")
    if head.startswith(b"<?xml"):
        raise ImageError(f"{name}: XML is not supported", code="unsupported_type")
    allowed = ", ".join(SUPPORTED_FORMATS)
    raise ImageError(f"{name}: not a supported image (expected {allowed})", code="unsupported_type")


def _count_frames(im: Image.Image) -> tuple[int, bool]:
    """(frames, more may follow). PNG and WebP declare their count and Pillow counts GIF
    frames without decoding them, but TIFF pages are walked IFD by IFD (~0.2 ms each), so a
    hostile file of a million tiny pages is only counted up to MAX_COUNTED_PAGES."""
    if im.format != "TIFF":
        return getattr(im, "n_frames", 1), False
    for n in range(1, MAX_COUNTED_PAGES):
        try:
            im.seek(n)
        except EOFError:
            return n, False
    return MAX_COUNTED_PAGES, True


def _upright(im: Image.Image, notes: list[str]) -> None:
    """Pillow's EXIF transpose, in place; unreadable EXIF is ignored rather than failing the
    image."""
    try:
        orientation = im.getexif().get(0x0112)
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as e:
        notes.append(f"EXIF unreadable, orientation ignored ({type(e).__name__})")
        return
    if orientation in range(2, 9):
        notes.append(f"EXIF orientation {orientation} applied")


def _check_shape(size: tuple[int, int], name: str, limit: int) -> None:
    """Reject tiny, huge and absurdly elongated images from the declared size alone."""
    w, h = size
    if w < MIN_IMAGE_SIDE or h < MIN_IMAGE_SIDE:
        raise ImageError(
            f"{name}: {w}x{h} pixels is too small (minimum {MIN_IMAGE_SIDE} per side)",
            code="bad_size",
        )
    if w * h > limit:
        raise ImageError(
            f"{name}: {w}x{h} = {w * h:,} pixels exceeds the limit of {limit:,}", code="too_large"
        )
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(
            f"{name}: {w}x{h} pixels has an aspect ratio above {MAX_ASPECT}", code="bad_size"
        )


def _declared_bits(im: Image.Image) -> int | None:
    """The significant bits a TIFF declares for its integer samples, if it does."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    for tag in (MAX_SAMPLE_VALUE, S_MAX_SAMPLE_VALUE):
        value = tags.get(tag)
        value = value[0] if isinstance(value, tuple) and value else value
        if isinstance(value, int | float) and 0 < value < 65535:
            return max(8, int(value).bit_length())
    bits = tags.get(BITS_PER_SAMPLE)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    return bits if isinstance(bits, int) and 8 < bits < 16 else None


def _sixteen_bit(a: np.ndarray, im: Image.Image, notes: list[str], sample_bits: int):
    """Values of a 16-bit container scaled by the declared depth, else by sample_bits (unless
    the data exceeds it), and the depth used."""
    bits = _declared_bits(im)
    if bits is None:
        top = int(a.max(initial=0))
        bits = sample_bits if top < 1 << sample_bits else 16
        if bits == 16 and top < 1 << DETECTOR_BITS:
            bits = DETECTOR_BITS
            notes.append(
                f"no bit-depth tag and every value below {1 << bits}: read as {bits}-bit "
                f"(/ {(1 << bits) - 1}), as SEM detectors write"
            )
        else:
            notes.append(f"no bit-depth tag: values scaled as {bits}-bit (/ {(1 << bits) - 1})")
    grey = a.astype(np.float32) / np.float32((1 << bits) - 1)
    return np.minimum(grey, 1.0, out=grey), bits


def _to_grey(
    im: Image.Image, name: str, notes: list[str], sample_bits: int
) -> tuple[np.ndarray, int]:
    """Grey float in [0, 1] and the source bit depth; 16-bit data keeps its precision."""
    mode = im.mode
    if mode in _EIGHT_BIT_MODES or mode in _VIA_RGB_MODES:
        if mode in _VIA_RGB_MODES:
            im = im.convert("RGB")
        if mode not in ("1", "L"):
            kind = "palette" if mode.startswith("P") else "colour"
            kind = "grey+alpha" if mode in ("LA", "La") else kind
            notes.append(f"{kind} ({mode}) converted to grey")
        grey = np.array(im.convert("L"), dtype=np.float32)
        grey /= 255.0
        return grey, 8
    if mode in _UINT16_MODES:
        return _sixteen_bit(np.asarray(im), im, notes, sample_bits)
    if mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F" and not np.isfinite(a).all():
            raise ImageError(f"{name}: float image contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if mode == "I" and lo >= 0 and hi <= 65535:
            return _sixteen_bit(a, im, notes, sample_bits)
        if mode == "F" and lo >= 0 and hi <= 1:
            return a.astype(np.float32), 32
        notes.append(f"values in [{lo:g}, {hi:g}] min-max scaled to [0, 1]")
        span = hi - lo
        scaled = (a.astype(np.float64) - lo) / span if span > 0 else np.zeros(a.shape)
        return scaled.astype(np.float32), 32
    raise ImageError(f"{name}: pixel mode {mode} is not supported", code="unsupported_type")


def crop_setting(value: object) -> int | float:
    """The one reading of crop_bottom, for training, export, calibration, evaluation, REST and
    the batch job alike: a whole number >= 1 is rows of SEM banner, a value in [0, 1) a
    fraction of the height. Returns rows as an int, a fraction as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise NanoinspectError(f"crop_bottom must be a number, not {value!r}")
    v = float(value)
    if 0.0 <= v < 1.0:
        return v
    if v >= 1.0 and v.is_integer():
        return int(v)
    raise NanoinspectError(
        "crop_bottom must be rows of banner (a whole number >= 1) or a fraction of the "
        f"height in [0, 1), not {value}"
    )


def _crop(grey: np.ndarray, crop_bottom: object, name: str) -> np.ndarray:
    """Remove the bottom banner; the rest must still be a usable image."""
    h = grey.shape[0]
    setting = crop_setting(crop_bottom)
    rows = setting if isinstance(setting, int) else round(h * setting)
    if h - rows < MIN_IMAGE_SIDE:
        raise ImageError(
            f"{name}: cropping {rows} of {h} rows leaves fewer than {MIN_IMAGE_SIDE}",
            code="bad_size",
        )
    return grey[: h - rows]
