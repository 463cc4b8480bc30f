"""The hostile-input corpus, generated in code (nothing binary is checked in):
files sent as the `file` part of a well-formed upload, and malformed HTTP requests sent as
raw bytes. Each case states the answer a correct server gives: a status and an error code,
or 200 for files that really are valid images. Holds no tests itself (tests/test_hostile.py).

Bombs are built from compressed zeros, so a 100-megapixel image costs ~100 kB and a fraction
of a second to make; every builder is cached for the session."""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.test_service_support import defect_png, encode, png_claiming

BOUNDARY = "hostile-boundary-7d3f"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class Expect:
    status: int
    code: str | None = None  # the JSON error code; None for 200


OK = Expect(200)


@dataclass(frozen=True)
class FileCase:
    data: bytes
    expect: Expect
    filename: str = "upload.png"
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class RequestCase:
    """A whole HTTP/1.1 request but its first line and Host (added by the sender)."""

    headers: dict[str, str]
    body: bytes
    expect: Expect
    path: str = "/v1/score"
    method: str = "POST"


# ---- low-level builders ----------------------------------------------------------------


def zeros_deflated(n: int) -> bytes:
    """zlib stream of n zero bytes, compressed in 1 MiB steps (n may be hundreds of MB)."""
    z, block, out = zlib.compressobj(9), bytes(1 << 20), []
    for start in range(0, n, len(block)):
        out.append(z.compress(block[: min(len(block), n - start)]))
    return b"".join([*out, z.flush()])


def chunk(tag: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(tag + data) if crc is None else crc
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def png(width: int, height: int, idat: bytes | None = None, extra: bytes = b"") -> bytes:
    """8-bit grey PNG; idat defaults to all-zero rows (filter byte + pixels). `extra` chunks
    go before IDAT, where Pillow reads them at open()."""
    idat = zeros_deflated(height * (width + 1)) if idat is None else idat
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    return head + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiff(width: int, height: int, strip: bytes, *, deflate: bool = False, bits: int = 8) -> bytes:
    """Little-endian one-strip grey TIFF: 8-bit integers, or 32-bit floats when bits=32."""
    entries = [
        (256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 8 if deflate else 1),
        (262, 3, 1), (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(strip)),
    ]  # fmt: skip
    if bits == 32:
        entries.append((339, 3, 3))  # SampleFormat: IEEE float
    offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + strip


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose SOF0 header declares another size."""
    data = bytearray(encode(Image.new("L", (16, 16), 90), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def multipart(*parts: tuple[str, bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """Parts given as (their header block, their body)."""
    b = boundary.encode()
    out = b"".join(b"--" + b + b"\r\n" + h.encode("latin-1") + b"\r\n\r\n" + body + b"\r\n"
                   for h, body in parts)  # fmt: skip
    return out + (b"--" + b + b"--\r\n" if close else b"")


def file_part(data: bytes, name: str = "file", filename: str = "x.png", ctype: str = "") -> tuple:
    head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'
    return (head + (f"\r\nContent-Type: {ctype}" if ctype else ""), data)


def chunked(body: bytes, size: int = 4096) -> bytes:
    """Transfer-Encoding: chunked framing of body."""
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _float_tiff(value: float) -> bytes:
    a = np.full((16, 16), 0.5, np.float32)
    a[3, 5] = value
    return encode(Image.fromarray(a, "F"), "TIFF")


# ---- the corpus ------------------------------------------------------------------------


@functools.cache
def hostile_files() -> dict[str, FileCase]:
    good = defect_png()
    rng = np.random.default_rng(8)
    noise = rng.integers(0, 256, (96, 96), np.uint8)
    noise_png, noise_jpg = encode(Image.fromarray(noise)), encode(Image.fromarray(noise), "JPEG")
    small = png(64, 64)
    ihdr_end = 8 + 25
    bad_ihdr_crc = small[: ihdr_end - 4] + b"\0\0\0\0" + small[ihdr_end:]
    idat_crc_at = small.index(b"IEND") - 8
    bad_idat_crc = small[:idat_crc_at] + b"\0\0\0\0" + small[idat_crc_at + 4 :]
    text_bomb = zeros_deflated(50 << 20)  # 50 MB of text in ~50 kB
    svg = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><text>&x;</text>'
           b"<script>alert(1)</script></svg>")  # fmt: skip
    pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    zip_tail = b"PK\x03\x04" + bytes(26) + b"evil.jsp" + b"<% out.println(1); %>"
    html_jpeg = bytearray(noise_jpg)
    comment = b"<html><script>alert(document.cookie)</script></html>"
    html_jpeg[2:2] = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    F = FileCase
    return {
        "empty": F(b"", Expect(400, "empty")),
        "random bytes": F(rng.bytes(4096), Expect(415, "unsupported_type")),
        "png magic then random": F(good[:8] + rng.bytes(4096), Expect(422, "corrupt")),
        "png truncated in IDAT": F(noise_png[: len(noise_png) // 2], Expect(422, "corrupt")),
        "png truncated after IHDR": F(noise_png[:33], Expect(422, "corrupt")),
        "jpeg truncated": F(noise_jpg[: len(noise_jpg) // 2], Expect(422, "corrupt")),
        "jpeg SOI only": F(b"\xff\xd8\xff", Expect(422, "corrupt")),
        "png bad IHDR CRC": F(bad_ihdr_crc, Expect(422, "corrupt")),
        # Pillow checks CRCs of header chunks only; the pixel data itself is intact
        "png bad IDAT CRC": F(bad_idat_crc, OK),
        "png bomb by header": F(png_claiming(100_000, 100_000), Expect(413, "too_large")),
        "png bomb 100 Mpx": F(png(10_000, 10_000), Expect(413, "too_large")),
        "jpeg bomb by header": F(jpeg_claiming(60_000, 60_000), Expect(413, "too_large")),
        "jpeg bomb 64 Mpx": F(
            encode(Image.new("L", (8000, 8000), 128), "JPEG", quality=10), Expect(413, "too_large")
        ),
        "tiff bomb by header": F(tiff(100_000, 100_000, bytes(64)), Expect(413, "too_large")),
        "tiff bomb 100 Mpx": F(
            tiff(10_000, 10_000, zeros_deflated(10**8), deflate=True), Expect(413, "too_large")
        ),
        "png zTXt bomb": F(png(64, 64, extra=chunk(b"zTXt", b"k\0\0" + text_bomb)),
                           Expect(413, "too_large")),
        "png iTXt bomb": F(png(64, 64, extra=chunk(b"iTXt", b"k\0\1\0\0\0" + text_bomb)),
                           Expect(413, "too_large")),
        "png iCCP bomb": F(png(64, 64, extra=chunk(b"iCCP", b"p\0\0" + text_bomb)),
                           Expect(413, "too_large")),
        "png 0x0": F(png_claiming(0, 0), Expect(422, "corrupt")),
        "png 1x100000": F(png(1, 100_000), Expect(422, "bad_size")),
        "png 100000x1": F(png(100_000, 1), Expect(422, "bad_size")),
        "png 16x100000": F(png(16, 100_000), Expect(422, "bad_size")),
        "tiff float NaN": F(_float_tiff(float("nan")), Expect(422, "bad_image"), "nan.tif"),
        "tiff float inf": F(_float_tiff(float("inf")), Expect(422, "bad_image"), "inf.tif"),
        "tiff float -inf": F(_float_tiff(float("-inf")), Expect(422, "bad_image"), "inf.tif"),
        "tiff float valid": F(_float_tiff(0.25), OK, "ok.tif"),
        "svg with XXE": F(svg, Expect(415, "unsupported_type"), "x.svg", "image/svg+xml"),
        "svg after BOM": F(b"\xef\xbb\xbf\n  " + svg[21:], Expect(415, "unsupported_type")),
        "pdf": F(pdf, Expect(415, "unsupported_type"), "x.pdf", "application/pdf"),
        "polyglot png+zip": F(good + zip_tail, OK),
        "polyglot jpeg+html": F(bytes(html_jpeg), OK, "x.jpg"),
        "polyglot pdf+png": F(b"%PDF-1.4\n" + good, Expect(415, "unsupported_type")),
        "polyglot gif+js": F(b"GIF89a=1;alert(1)//" + bytes(64), Expect(422, "corrupt")),
        "html in png clothing": F(b"\x89PNG\r\n\x1a\n<html></html>", Expect(422, "corrupt")),
        "lie: png as text/plain": F(good, OK, "notes.txt", "text/plain"),
        "lie: text as image/png": F(b"just text\n" * 20, Expect(415, "unsupported_type"),
                                    "x.png", "image/png"),
        "lie: svg as image/png": F(svg, Expect(415, "unsupported_type"), "x.png", "image/png"),
        "lie: jpeg named .tif": F(noise_jpg, OK, "x.tif", "image/tiff"),
        "traversal name": F(good, OK, "../../../../etc/passwd"),
        "windows traversal name": F(good, OK, "..\\..\\..\\Windows\\win.ini"),
        "absolute name": F(good, OK, "/etc/shadow"),
        "2 kB name": F(good, OK, "a" * 2000 + ".png"),
    }  # fmt: skip


@functools.cache
def hostile_requests() -> dict[str, RequestCase]:
    good = defect_png()
    mp = {"Content-Type": MULTIPART}
    R = RequestCase
    one = multipart(file_part(good))
    return {
        "no file field": R(mp, multipart(file_part(good, name="image")),
                           Expect(400, "missing_file")),
        "no fields at all": R(mp, multipart(), Expect(400, "missing_file")),
        "file field without filename": R(mp, multipart(('Content-Disposition: form-data; '
                                                        'name="file"', good)),
                                         Expect(400, "missing_file")),
        "part without disposition": R(mp, multipart(("Content-Type: image/png", good)),
                                      Expect(400, "missing_file")),
        "duplicated file field": R(mp, multipart(file_part(good), file_part(good)),
                                   Expect(400, "too_many_files")),
        "10000 parts": R(mp, multipart(*[file_part(b"x", name="f")] * 10_000),
                         Expect(400, "too_many_files")),
        "empty body": R(mp, b"", Expect(400, "empty_body")),
        "no boundary parameter": R({"Content-Type": "multipart/form-data"}, one,
                                   Expect(415, "not_multipart")),
        "other boundary in body": R(mp, multipart(file_part(good), boundary="other"),
                                    Expect(400, "bad_multipart")),
        "no closing boundary": R(mp, multipart(file_part(good), close=False),
                                 Expect(400, "bad_multipart")),
        "boundary never ends": R(mp, b"--" + BOUNDARY.encode() + b"\r\n" + good,
                                 Expect(400, "bad_multipart")),
        "garbage after boundary": R(mp, b"--" + BOUNDARY.encode() + b"\x00\xff" * 500,
                                    Expect(400, "bad_multipart")),
        "1 MB part header": R(mp, multipart((f"X-Pad: {'a' * (1 << 20)}", good)),
                              Expect(400, "bad_multipart")),
        "100000 part headers": R(mp, multipart(("\r\n".join(["X: y"] * 100_000), good)),
                                 Expect(400, "bad_multipart")),
        "multipart/mixed": R({"Content-Type": f"multipart/mixed; boundary={BOUNDARY}"}, one,
                             Expect(415, "not_multipart")),
        "json body": R({"Content-Type": "application/json"}, b'{"file": "x"}',
                       Expect(415, "not_multipart")),
        "chunked": R(mp | {"Transfer-Encoding": "chunked"}, chunked(one), OK),
        # both framings (a smuggling attempt through a proxy): chunked wins, as RFC 9112 says
        "chunked and Content-Length": R(mp | {"Transfer-Encoding": "chunked",
                                              "Content-Length": "5"}, chunked(one), OK),
        "quoted boundary, charset": R({"Content-Type": f'multipart/form-data; charset=utf-8; '
                                                      f'boundary="{BOUNDARY}"'}, one, OK),
        "CRLF in filename": R(mp, multipart(file_part(good, filename="a.png\r\nX-Evil: 1")), OK),
        "NUL in filename": R(mp, multipart(file_part(good, filename="a\0b.png")), OK),
        "latin-1 filename": R(mp, multipart(file_part(good, filename="\xe9t\xe9.png")), OK),
        "60 MB body": R(mp, multipart(file_part(bytes(60 << 20))),
                        Expect(415, "unsupported_type")),
        "70 MB body": R(mp, multipart(file_part(bytes(70 << 20))), Expect(413, "too_large")),
        "batch without files": R(mp, multipart(file_part(good)), Expect(400, "missing_file"),
                                 "/v1/score/batch"),
        "batch of 40": R(mp, multipart(*[file_part(good, name="files")] * 40),
                         Expect(400, "too_many_files"), "/v1/score/batch"),
        "alpha NaN": R(mp, one, Expect(422, "invalid_parameter"), "/v1/score?alpha=nan"),
        "alpha 1e400": R(mp, one, Expect(422, "invalid_parameter"), "/v1/score?alpha=1e400"),
        "mask_format evil": R(mp, one, Expect(422, "invalid_parameter"),
                              "/v1/score?mask_format=../x"),
        "unknown parameter": R(mp, one, Expect(422, "invalid_parameter"), "/v1/score?evil=1"),
        "GET score": R({}, b"", Expect(405, "method_not_allowed"), "/v1/score", "GET"),
        "unknown path": R({}, b"", Expect(404, "not_found"), "/../../etc/passwd", "GET"),
    }  # fmt: skip


# ---- image-level cases: valid files whose content is unlike the training images ----------

# What a correct answer to an image-level case is:
#   out_of_distribution: anomalous, with out_of_distribution saying why;
#   as_normal: scored as the normal image it was made from (its 8-bit grey PNG);
#   zoomed: scored at the training scale (a note says so) and never anomalous without a
#     reason (the content is a normal mat at another magnification);
#   blurred: out_of_distribution when the model carries a model of its normals (the contrast
#     bound catches defocus); without one the map alone decides (no claim).
# zoomed_up: a wide field whose fibres fall below two pixels; zooming it to the training
# scale cannot restore their detail, so either verdict may be right, never one without a word
IMAGE_EXPECTATIONS = ("out_of_distribution", "as_normal", "zoomed", "zoomed_up", "blurred")


@dataclass(frozen=True)
class ImageCase:
    data: bytes
    expect: str  # one of IMAGE_EXPECTATIONS
    filename: str = "image.png"


def grey_png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)))


def _resized(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    im = Image.fromarray(pixels.astype(np.float32), mode="F")
    return np.asarray(im.resize((shape[1], shape[0]), Image.BILINEAR), np.float32)


def image_level_cases(normal: np.ndarray) -> dict[str, ImageCase]:
    """Cases made from `normal`, a grey float image (H, W) in [0, 1] of a normal mat."""
    from scipy import ndimage as ndi

    h, w = normal.shape
    eight = np.round(normal * 255) / 255  # what the 8-bit PNG of it holds
    rgb = np.repeat((eight * 255).astype(np.uint8)[..., None], 3, axis=2)
    twelve = np.round(eight * 4095).astype(np.uint16)  # a 12-bit detector, no bit-depth tag
    mirrored = np.block([[eight, eight[:, ::-1]], [eight[::-1], eight[::-1, ::-1]]])
    C = ImageCase
    return {
        "black frame": C(grey_png(np.zeros((h, w))), "out_of_distribution"),
        "white frame": C(grey_png(np.ones((h, w))), "out_of_distribution"),
        "constant grey": C(grey_png(np.full((h, w), 0.5)), "out_of_distribution"),
        "saturated": C(grey_png(np.minimum(eight * 4, 1)), "out_of_distribution"),
        "pixel noise": C(
            grey_png(np.random.default_rng(0).random((h, w))), "out_of_distribution"
        ),
        "6x magnification": C(
            grey_png(_resized(eight[: h // 6, : w // 6], (h, w))), "out_of_distribution"
        ),
        "heavy blur": C(grey_png(ndi.gaussian_filter(eight, 8)), "blurred"),
        "4x magnification": C(grey_png(_resized(eight[: h // 4, : w // 4], (h, w))), "zoomed"),
        "0.25x magnification": C(
            grey_png(_resized(np.tile(mirrored, (2, 2)), (h, w))), "zoomed_up"
        ),
        "12-bit in untagged 16-bit TIFF": C(encode(Image.fromarray(twelve), "TIFF"), "as_normal",
                                            "image.tif"),
        "RGB of a normal image": C(encode(Image.fromarray(rgb)), "as_normal"),
    }  # fmt: skip


def check_image_answer(case: ImageCase, answer: dict, normal: dict, has_normals: bool) -> None:
    """Assert that a /v1/score answer is what the case expects; `normal` is the answer to
    the 8-bit normal image itself."""
    ood, notes = answer["out_of_distribution"], answer["notes"]
    if case.expect == "out_of_distribution" or (case.expect == "blurred" and has_normals):
        assert answer["is_anomalous"] and ood, answer
        assert answer["reason"] == f"out of distribution: {ood}"
    elif case.expect == "as_normal":
        assert answer["score"] == pytest.approx(normal["score"], rel=1e-2)
        assert (
            answer["is_anomalous"] == normal["is_anomalous"]
            and ood == normal["out_of_distribution"]
        )
    elif case.expect in ("zoomed", "zoomed_up"):
        assert ood or any(n.startswith("scored zoomed") for n in notes), answer
        if case.expect == "zoomed":
            assert not answer["is_anomalous"] or ood, answer
        elif answer["is_anomalous"] and not ood:
            assert answer["reason"].startswith(f"score {answer['score']:.4g} above"), answer
    assert answer["reason"]
