"""Peak RSS of a fresh process that loads the default model and scores one 4096x4096 image
(tiled by the Detector, so memory is bounded by the tile, not the image), against the 2 GB
budget; and a real server under 32 clients posting 512x352 PNGs for 20 s with the default
settings: its peak RSS against 400 MB, and its RSS once the load has ended
against its level after warm-up.

    python -m tests.bench.bench_memory [--side 4096] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.bench_soak import make_images, soak
from tests.bench.common import ROOT, THREADS, Row, bench_model, rss_mb, show
from tests.test_service_support import serve

BUDGET_MB = 2048
LOAD_BUDGET_MB, SETTLED_MB, CLIENTS = 400, 50, 32
CHILD = """
import json, sys, time
import numpy as np
from models.detector import Detector
from tests.bench.common import grey, rss_mb
model, side, tile, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
image = np.tile(grey(512, 512), (side // 512, side // 512))
d = Detector(model, providers=("cpu",), threads=threads, tile=tile)
before = rss_mb()
t0 = time.perf_counter()
(r,) = d.score([image])
print(json.dumps({"peak": rss_mb(field="VmHWM"), "loaded": before, "tiles": r.tiles,
                  "seconds": time.perf_counter() - t0}))
"""


def peak(model: str, side: int, tile: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(side), str(tile), str(THREADS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def under_load(model: str, seconds: float) -> dict:
    """A server with the default settings: RSS warm (one request, then idle), its peak under
    CLIENTS clients, and once idle again after the load."""
    images = make_images(16, 512, 352)
    env = {"NANOINSPECT_THREADS": str(THREADS), "NANOINSPECT_LOG_LEVEL": "warning"}
    with tempfile.TemporaryDirectory() as tmp, serve([model], Path(tmp) / "log", env) as s:
        httpx.post(s.url + "/v1/score", files={"file": ("x.png", images[0])}, timeout=60)
        time.sleep(3)  # past idle_release_s
        warm = rss_mb(s.proc.pid)
        r = asyncio.run(
            soak(s.url, s.proc.pid, images, clients=CLIENTS, seconds=seconds, max_requests=10**6)
        )
        time.sleep(3)
        return {
            "warm": warm,
            "peak": rss_mb(s.proc.pid, "VmHWM"),
            "after": rss_mb(s.proc.pid),
            "statuses": dict(r.statuses),
            "per_call": r.batches[1] / max(r.batches[0], 1),
        }


def rows(side: int = 4096, seconds: float = 20) -> list[Row]:
    model = str(bench_model())
    default = peak(model, side, 1536)
    load = under_load(model, seconds)
    what = f"{CLIENTS} clients, {seconds:g} s, 512x352 PNG"
    return [
        Row("memory", f"server peak RSS, {what}", f"{load['peak']:.0f} MB",
            f"budget {LOAD_BUDGET_MB} MB", load["peak"] / LOAD_BUDGET_MB, 1.0, "<=",
            f"default settings (batch_pixels 1 Mpx: {load['per_call']:.1f} images a call); "
            f"statuses {load['statuses']}"),
        Row("memory", "server RSS after the load, idle", f"{load['after'] - load['warm']:+.0f} MB",
            f"budget {SETTLED_MB} MB over warm ({load['warm']:.0f} MB)",
            max(load["after"] - load["warm"], 0) / SETTLED_MB, 1.0, "<=",
            f"{load['warm']:.0f} -> {load['after']:.0f} MB, 3 s after the last answer"),
        Row("memory", f"peak RSS, one {side}x{side} image", f"{default['peak']:.0f} MB",
            f"budget {BUDGET_MB} MB", default["peak"] / BUDGET_MB, 1.0, "<=",
            f"tile 1536: {default['tiles']} tiles, {default['seconds']:.0f} s; "
            f"{default['loaded']:.0f} MB after loading the model"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=4096)
    p.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    show(rows(a.side, a.seconds))


if __name__ == "__main__":
    main()
