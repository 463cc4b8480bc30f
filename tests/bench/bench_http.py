"""HTTP end to end (a real `nanoinspect serve` process, uvicorn on loopback) versus the
Detector alone in this process, on the same model and image: one client's p50/p99 latency,
8 concurrent clients' throughput versus the Detector's batched throughput, and the server's
RSS after warm-up and its growth over 1,000 requests.

    python -m tests.bench.bench_http [--repeats 12] [--requests 1000]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from models.detector import Detector
from tests.bench.common import (
    SIZE,
    THREADS,
    Row,
    alternate,
    bench_model,
    grey,
    median,
    percentile,
    rss_mb,
    show,
)
from tests.test_service_support import serve

SECTION = "http"
CLIENTS = 8


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def post(client: httpx.Client, data: bytes) -> None:
    r = client.post("/v1/score", files={"file": ("x.png", data, "image/png")})
    r.raise_for_status()


def concurrent(url: str, images: list[bytes], clients: int) -> float:
    """Seconds for `clients` threads, one connection each, to score all `images` between them."""

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            for data in images[k::clients]:
                post(c, data)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return time.perf_counter() - t0


def rows(repeats: int = 8, requests: int = 1000) -> list[Row]:
    model = bench_model()
    w, h = SIZE
    pixels = [grey(w, h, seed=i, defect="bead" if i % 2 else None) for i in range(CLIENTS)]
    data = [png(p) for p in pixels]
    detector = Detector(model, providers=("cpu",), threads=THREADS)
    env = {"NANOINSPECT_THREADS": str(THREADS), "NANOINSPECT_LOG_LEVEL": "warning"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve([str(model)], Path(tmp) / "server.log", env) as server,
        httpx.Client(base_url=server.url, timeout=300) as client,
    ):
        pid = server.proc.pid
        one = alternate(
            {
                "http": lambda: post(client, data[0]),
                "detector": lambda: detector.score([pixels[0]]),
            },
            repeats,
        )
        warm_rss = rss_mb(pid)
        many = alternate(
            {
                "http": lambda: concurrent(server.url, data * 2, CLIENTS),
                "detector": lambda: [detector.score(pixels) for _ in range(2)],
            },
            2,
            warmup=0,
        )
        # growth: small images of three sizes, as a line's thumbnails would come
        small = [png(grey(96 + 32 * (i % 3), 128, seed=i)) for i in range(requests)]
        concurrent(server.url, small[:48], CLIENTS)
        before = rss_mb(pid)
        t0 = time.perf_counter()
        concurrent(server.url, small, CLIENTS)
        seconds = time.perf_counter() - t0
        after = rss_mb(pid)
    p50, p50_d = median(one["http"]), median(one["detector"])
    p99, p99_d = percentile(one["http"], 99), percentile(one["detector"], 99)
    ips = 2 * CLIENTS / median(many["http"])
    ips_d = 2 * CLIENTS / median(many["detector"])
    size = f"{w}x{h}"
    return [
        Row(SECTION, f"1 client p50, {size} PNG", f"{p50:.3f} s", f"Detector.score {p50_d:.3f} s",
            p50 / p50_d, 1.15, "<="),
        Row(SECTION, "1 client p99", f"{p99:.3f} s", f"Detector.score {p99_d:.3f} s",
            p99 / p99_d, None, "<=", f"p99 of {repeats} requests, alternating with the Detector"),
        Row(SECTION, f"{CLIENTS} clients throughput", f"{ips:.2f} img/s",
            f"Detector batch {CLIENTS}: {ips_d:.2f} img/s", ips / ips_d, 0.85),
        Row("memory", "server RSS after warm-up", f"{warm_rss:.0f} MB", "", None, None),
        Row("memory", f"server RSS growth, {requests} requests", f"{after - before:+.1f} MB",
            f"budget 50 MB ({before:.0f} -> {after:.0f} MB)", (after - before) / 50, 1.0, "<=",
            f"{requests / seconds:.1f} requests/s, 96-160x128 PNGs, {CLIENTS} clients"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--requests", type=int, default=1000)
    a = p.parse_args()
    show(rows(a.repeats, a.requests))


if __name__ == "__main__":
    main()
