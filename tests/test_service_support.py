"""Shared by the service tests (in-process, real process, browser): test images, the bad and
the accepted uploads, and a `nanoinspect serve` subprocess that is always killed.
Holds no tests itself."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def defect_image(seed: int = 1, width: int = 96, height: int = 96) -> np.ndarray:
    from training.synth import draw_sample

    return draw_sample(np.random.default_rng(seed), width, height, "bead")[0]


@functools.cache
def defect_png(seed: int = 1, width: int = 96, height: int = 96) -> bytes:
    pixels = defect_image(seed, width, height)
    return encode(Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)))


def png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR declares another size (CRC fixed up): a bomb by header."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _grey(w: int = 96, h: int = 64) -> Image.Image:
    return Image.fromarray((defect_image(2, w, h) * 255).astype(np.uint8))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@functools.cache
def accepted_uploads() -> dict[str, tuple[bytes, int, int, str]]:
    """name -> (bytes, width, height, a substring of one note or "")."""
    grey = _grey()
    sixteen = Image.fromarray((np.asarray(grey, np.uint16) * 257).astype("<u2"))
    pages = [grey, _grey().transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey]
    frames = [grey.convert("P"), Image.new("P", grey.size, 3)]
    return {
        "grey8.png": (encode(grey), 96, 64, ""),
        "grey16.png": (encode(sixteen), 96, 64, ""),
        "grey16.tif": (encode(sixteen, "TIFF"), 96, 64, ""),
        "rgba.png": (encode(grey.convert("RGBA")), 96, 64, "converted to grey"),
        "palette.png": (encode(grey.convert("P")), 96, 64, "palette"),
        "cmyk.jpg": (encode(grey.convert("CMYK"), "JPEG", quality=95), 96, 64, "converted"),
        "rgb.bmp": (encode(grey.convert("RGB"), "BMP"), 96, 64, "converted"),
        "exif6.jpg": (encode(grey, "JPEG", exif=_exif(6)), 64, 96, "EXIF orientation 6"),
        "pages.tif": (
            encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
            96, 64, "first of 3 pages",
        ),
        "anim.gif": (
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
            96, 64, "first of 2 frames",
        ),
        "grey.webp": (encode(grey, "WEBP", lossless=True), 96, 64, ""),
    }  # fmt: skip


@functools.cache
def bad_uploads() -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx request kwargs for POST /v1/score, status, error code)."""
    good = defect_png()
    noise = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)))
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'
    bomb = encode(Image.new("1", (12_000, 12_000)))  # 144 Mpx in about 20 kB
    f = lambda data, name="x.png": {"files": {"file": (name, data)}}  # noqa: E731
    return {
        "no file": ({"files": {"other": ("x.png", good)}}, 400, "missing_file"),
        "form field, no file": ({"data": {"note": "hi"}, "files": {"x": ("", b"")}}, 400,
                                "missing_file"),
        "two files": ({"files": [("file", ("a.png", good)), ("file", ("b.png", good))]}, 400,
                      "too_many_files"),
        "empty body": ({"headers": {"content-type": "multipart/form-data; boundary=xyz"}}, 400,
                       "empty_body"),
        "not multipart": ({"content": good, "headers": {"content-type": "image/png"}}, 415,
                          "not_multipart"),
        "cut multipart": ({"content": b"--xyz\r\nContent-Disposition: form-data; name=\"file\"",
                           "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
                          400, "bad_multipart"),
        "empty file": (f(b""), 400, "empty"),
        "text": (f(b"hello, this is not an image\n" * 10, "x.txt"), 415, "unsupported_type"),
        "svg": (f(svg, "x.svg"), 415, "unsupported_type"),
        "pdf": (f(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "x.pdf"), 415, "unsupported_type"),
        "truncated png": (f(noise[: len(noise) // 2]), 422, "corrupt"),
        "corrupt png": (f(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), 422, "corrupt"),
        "bomb by header": (f(png_claiming(100_000, 100_000)), 413, "too_large"),
        "bomb compressed": (f(bomb), 413, "too_large"),
        "zero size": (f(png_claiming(0, 0)), 422, "corrupt"),
        "too small": (f(encode(Image.new("L", (4, 4)))), 422, "bad_size"),
        "absurd aspect": (f(encode(Image.new("L", (8, 4000)))), 422, "bad_size"),
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    args: list[str], log: Path, env: dict[str, str] | None = None, ready: bool = True
) -> Iterator[Server]:
    """`nanoinspect serve ARGS` on a free loopback port; waits for /readyz (or only for the
    socket when ready=False) and always kills the process afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", *args, "--port", str(port)]
    full_env = os.environ | {"NANOINSPECT_PROVIDERS": "cpu", "NANOINSPECT_THREADS": "1"}
    full_env |= env or {}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_until_up(server, ready)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_until_up(server: Server, ready: bool, timeout: float = 90) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited {server.proc.returncode}:\n{server.text()}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(server.url + "/readyz", timeout=2)
            if r.status_code == 200 or (not ready and r.status_code == 503):
                return
        time.sleep(0.2)
    raise RuntimeError(f"server not up after {timeout} s:\n{server.text()}")


def metric(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus exposition, e.g. 'x_bucket{le="1.0"}'."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)
