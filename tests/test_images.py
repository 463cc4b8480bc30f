"""Decoding: exact values for every supported depth and mode, and a clear ImageError with a
specific code for every hostile input."""

import contextlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from models import images
from models.errors import ImageError, NanoinspectError
from models.images import SUPPORTED_FORMATS, decode_image, load_image

RAMP = (np.arange(24 * 40).reshape(24, 40) % 256).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def code_of(data: bytes, **kw) -> str:
    with pytest.raises(ImageError) as err:
        decode_image(data, **kw)
    assert "\n" not in str(err.value)
    return err.value.code


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_8bit_grey_exact(fmt):
    d = decode_image(encode(Image.fromarray(RAMP), fmt))
    assert (d.format, d.bit_depth, d.frames, d.notes) == (fmt, 8, 1, ())
    assert d.pixels.dtype == np.float32 and d.pixels.flags.c_contiguous
    np.testing.assert_array_equal(d.pixels, RAMP.astype(np.float32) / 255)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16bit_grey_keeps_precision(fmt, dtype):
    a = np.full((16, 16), 32768, dtype=np.uint16)
    a[0, 0], a[0, 1], a[0, 2] = 65535, 0, 1
    d = decode_image(encode(Image.fromarray(a.astype(dtype)), fmt))
    assert d.bit_depth == 16
    assert d.pixels[0, 0] == 1.0 and d.pixels[0, 1] == 0.0
    assert d.pixels[0, 2] == pytest.approx(1 / 65535)  # lost in any 8-bit path
    assert d.pixels[5, 5] == pytest.approx(0.5, abs=1e-4)


def test_32bit_integer_tiff_in_16bit_range():
    a = np.full((16, 16), 65535, dtype=np.int32)
    a[0, 0] = 0
    d = decode_image(encode(Image.fromarray(a, "I"), "TIFF"))
    assert d.bit_depth == 16 and d.pixels.max() == 1.0 and d.pixels.min() == 0.0


def test_float_tiff_in_unit_range_kept():
    a = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    d = decode_image(encode(Image.fromarray(a, "F"), "TIFF"))
    assert d.bit_depth == 32 and d.notes == ()
    np.testing.assert_array_equal(d.pixels, a)


def test_float_tiff_out_of_range_min_max_scaled():
    a = np.linspace(-2, 6, 256, dtype=np.float32).reshape(16, 16)
    d = decode_image(encode(Image.fromarray(a, "F"), "TIFF"))
    np.testing.assert_allclose(d.pixels, (a + 2) / 8, atol=1e-6)
    assert any("min-max" in n for n in d.notes)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_nan_inf_rejected(bad):
    a = np.zeros((16, 16), dtype=np.float32)
    a[3, 3] = bad
    assert code_of(encode(Image.fromarray(a, "F"), "TIFF")) == "bad_image"


@pytest.mark.parametrize(
    "mode,fmt",
    [("RGB", "JPEG"), ("RGB", "BMP"), ("RGBA", "PNG"), ("P", "PNG"), ("P", "BMP"),
     ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("LA", "PNG"), ("1", "PNG"), ("RGB", "WEBP")],
)  # fmt: skip
def test_colour_and_palette_converted_to_grey(mode, fmt):
    rgb = Image.merge("RGB", [Image.fromarray(RAMP), Image.fromarray(255 - RAMP),
                              Image.fromarray(RAMP // 2)])  # fmt: skip
    src = rgb.convert(mode) if mode != "LA" else Image.fromarray(RAMP).convert("LA")
    d = decode_image(encode(src, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {})))
    assert d.pixels.shape == (24, 40) and d.bit_depth == 8 and d.format == fmt
    assert d.pixels.min() >= 0.0 and d.pixels.max() <= 1.0
    if mode == "RGB" and fmt == "BMP":  # lossless: exactly ITU-R 601 luma
        luma = np.asarray(rgb.convert("L"), dtype=np.float32) / 255
        np.testing.assert_array_equal(d.pixels, luma)
    if mode not in ("1",):
        assert any("converted to grey" in n for n in d.notes)


def test_rgba_alpha_dropped():
    rgba = Image.fromarray(RAMP).convert("RGBA")
    rgba.putalpha(0)
    d = decode_image(encode(rgba, "PNG"))
    np.testing.assert_array_equal(d.pixels, RAMP.astype(np.float32) / 255)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    im = Image.fromarray(RAMP)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(im, "PNG", exif=exif)
    d = decode_image(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), np.float32)
    np.testing.assert_array_equal(d.pixels, expected / 255)
    if orientation == 6:
        assert d.pixels.shape == (40, 24)
    assert any("orientation" in n for n in d.notes) == (orientation != 1)


def test_exif_rotated_jpeg_swaps_width_and_height():
    exif = Image.Exif()
    exif[0x0112] = 6
    d = decode_image(encode(Image.fromarray(RAMP), "JPEG", exif=exif))
    assert d.pixels.shape == (40, 24) and "EXIF orientation 6 applied" in d.notes


def test_multipage_tiff_uses_first_page():
    pages = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (10, 20, 30)]
    d = decode_image(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert d.frames == 3 and np.all(d.pixels == np.float32(10 / 255))
    assert "multi-page TIFF: first of 3 pages used" in d.notes


def test_tiff_pages_counted_up_to_a_cap(monkeypatch):
    monkeypatch.setattr(images, "MAX_COUNTED_PAGES", 3)
    pages = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in range(5)]
    d = decode_image(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert d.frames == 3 and "multi-page TIFF: first of at least 3 pages used" in d.notes


def test_animated_gif_uses_first_frame():
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (0, 255)]
    d = decode_image(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    assert d.format == "GIF" and d.frames == 2 and d.pixels.max() == 0.0
    assert any("first of 2 frames" in n for n in d.notes)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncated_rejected(fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    assert code_of(data[: len(data) // 2], name="up.bin") == "corrupt"


@pytest.mark.filterwarnings("ignore")  # Pillow warns about the damaged tags it skips
def test_mutated_files_give_image_errors_only():
    """Random byte flips in every format: a Decoded or an ImageError, never another exception."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8))
    for fmt in SUPPORTED_FORMATS:
        data = encode(noise, fmt)
        for _ in range(60):
            mutated = bytearray(data)
            for pos in rng.integers(0, len(data), size=3):
                mutated[pos] = rng.integers(0, 256)
            with contextlib.suppress(ImageError):
                decode_image(bytes(mutated))


def test_truncated_images_stay_strict():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "data,code,words",
    [
        (b"", "empty", "empty"),
        (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
         "unsupported_type", "not a supported image"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
         "unsupported_type", "SVG is not supported"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "unsupported_type", "PDF is not supported"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "unsupported_type", "HTML"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt", "PNG"),
    ],
)  # fmt: skip
def test_hostile_bytes(data, code, words):
    with pytest.raises(ImageError, match=words) as err:
        decode_image(data, name="upload.png")
    assert err.value.code == code and str(err.value).startswith("upload.png: ")


def png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR is patched to declare another size (CRC fixed up)."""
    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_declared_size_bomb_rejected_before_decoding():
    with pytest.raises(ImageError, match=r"81,000,000 pixels exceeds the limit of 50,000,000"):
        decode_image(png_claiming(9_000, 9_000))
    # Pillow's own hard limit holds even when the caller asks for more, in the same words
    with pytest.raises(ImageError, match=r": 10,000,000,000 pixels exceeds the limit of ") as err:
        decode_image(png_claiming(100_000, 100_000), max_pixels=10**12)
    assert err.value.code == "too_large"


def test_pillow_warning_size_is_an_error_too():
    with pytest.warns(Image.DecompressionBombWarning):
        assert code_of(png_claiming(20_000, 5_000), max_pixels=10**12) == "too_large"


def test_real_compressed_bomb_rejected():
    bomb = encode(Image.new("1", (4000, 4000)), "PNG")  # 16 Mpx in a few kB
    assert len(bomb) < 10_000
    assert code_of(bomb, max_pixels=1_000_000) == "too_large"


def test_ztxt_bomb_cannot_blow_memory():
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 8_000_000, zip=True)  # 8 MB of text in ~8 kB
    data = encode(Image.fromarray(RAMP), "PNG", pnginfo=info)
    assert len(data) < 100_000
    assert code_of(data) == "too_large"


@pytest.mark.parametrize("size", [(7, 100), (100, 4), (1000, 10), (8, 600)])
def test_tiny_or_elongated_rejected(size):
    assert code_of(encode(Image.new("L", size), "PNG")) == "bad_size"


def test_limits_accept_borderline():
    assert decode_image(encode(Image.new("L", (8, 512)), "PNG")).pixels.shape == (512, 8)


def test_crop_bottom_pixels_and_fraction():
    data = encode(Image.fromarray(RAMP), "PNG")
    full = decode_image(data).pixels
    np.testing.assert_array_equal(decode_image(data, crop_bottom=4).pixels, full[:20])
    np.testing.assert_array_equal(decode_image(data, crop_bottom=4.0).pixels, full[:20])
    np.testing.assert_array_equal(decode_image(data, crop_bottom=0.25).pixels, full[:18])
    assert code_of(data, crop_bottom=17) == "bad_size"
    for bad in (-1, -0.5, 1.5, float("nan"), float("inf"), True, "3"):
        with pytest.raises(NanoinspectError):
            decode_image(data, crop_bottom=bad)


def test_load_image(tmp_path):
    path = tmp_path / "a.tif"
    Image.fromarray(RAMP).save(path)
    d = load_image(path, crop_bottom=4)
    assert d.format == "TIFF" and d.pixels.shape == (20, 40)
    with pytest.raises(ImageError, match=r"missing.png") as err:
        load_image(tmp_path / "missing.png")
    assert err.value.code == "unreadable"


def test_supported_formats_listed():
    assert {"PNG", "TIFF", "JPEG", "BMP"} <= set(SUPPORTED_FORMATS)
