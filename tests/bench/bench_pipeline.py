"""The serving pipeline without the model: a real `nanoinspect serve` on a no-op
graph (same inputs, outputs and metadata as the default model; every map is the image), fed
1024x704 PNG micrographs by concurrent clients. What is left is decode, queue, post
(Omega, regions), encode (mask PNG, JSON) and HTTP: its images/s, and per CPU-second of the
server process (its rate per core), against the real model's Detector in this process.
From the per-core rate and the H100 estimate (quality/performance.md): the CPU cores one GPU
needs. Beside it, `nanoinspect score` on the same graph and images (decode, post, rows; no masks).

    python -m tests.bench.bench_pipeline [--requests 96] [--clients 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from models.detector import Detector
from tests.bench.bench_http import concurrent, png
from tests.bench.common import (
    SIZE,
    THREADS,
    Row,
    bench_model,
    cpu_seconds,
    grey,
    median,
    noop_model,
    show,
)
from tests.test_service_support import serve

SECTION = "pipeline"
GPU_IMAGES_S = (1250, 4100)  # one H100, fp32 on CUDA .. fp16 on TensorRT (quality/performance.md)


def stages(url: str, data: list[bytes]) -> dict[str, float]:
    """Median ms per stage of one client's requests: the server's own timings, and HTTP
    (the client's latency minus them)."""
    seen: dict[str, list[float]] = {"decode": [], "queue": [], "graph+post": [], "encode": []}
    seen["http"] = []
    with httpx.Client(base_url=url, timeout=300) as c:
        for body in data:
            t0 = time.perf_counter()
            r = c.post("/v1/score", files={"file": ("x.png", body, "image/png")})
            ms = (time.perf_counter() - t0) * 1000
            t = r.raise_for_status().json()["timings"]
            parts = (t["decode"], t["queue"], t["inference"], t["post"])
            for k, v in zip(seen, (*parts, ms - sum(parts)), strict=False):
                seen[k].append(v)
    return {k: median(v) for k, v in seen.items()}


def job_rate(model: Path, data: list[bytes], n: int, tmp: Path) -> tuple[float, float]:
    """Images/s of `nanoinspect score` over n PNG files, and per CPU-second of this process."""
    from service.batch.driver import run
    from service.batch.job import Job

    root = tmp / "job"
    root.mkdir()
    for i in range(n):
        (root / f"{i:04d}.png").write_bytes(data[i % len(data)])
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    summary = run(Job(model, [str(root)], tmp / "job-out", progress=False))
    assert summary.ok == n
    return n / (time.perf_counter() - t0), n / (cpu_seconds() - cpu0)


def rows(requests: int = 96, clients: int = 4) -> list[Row]:
    w, h = SIZE
    pixels = [grey(w, h, seed=i, defect="bead" if i % 2 else None) for i in range(8)]
    data = [png(p) for p in pixels]
    model = noop_model(float(np.quantile(pixels[1], 0.99)))
    regions = len(Detector(model, providers=("cpu",)).score([pixels[1]])[0].regions)
    real = Detector(bench_model(), providers=("cpu",), threads=THREADS)
    t0 = time.perf_counter()
    real.score(pixels[:2])
    real_ips = 2 / (time.perf_counter() - t0)
    env = {"NANOINSPECT_THREADS": str(THREADS), "NANOINSPECT_LOG_LEVEL": "warning"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve([str(model)], Path(tmp) / "server.log", env) as server,
    ):
        concurrent(server.url, data, clients)  # warm-up
        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        concurrent(server.url, (data * requests)[:requests], clients)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - cpu0
        ms = stages(server.url, data * 2)
        job_ips, job_per_core = job_rate(model, data, requests, Path(tmp))
    ips, per_core = requests / wall, requests / cpu
    cores = [g / per_core for g in GPU_IMAGES_S]
    per_stage = ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
    return [
        Row(SECTION, f"no-op graph, {w}x{h} PNG, {clients} clients", f"{ips:.1f} img/s",
            f"real model's Detector {real_ips:.2f} img/s", ips / real_ips,
            note=f"{THREADS} cores shared with the clients; one client's median ms per stage: "
            f"{per_stage}; post finds {regions} regions (the real map: about a dozen)"),
        Row(SECTION, "no-op graph, per server CPU-second", f"{per_core:.1f} img/s per core",
            f"real model's Detector {real_ips / THREADS:.2f} img/s per core",
            per_core / (real_ips / THREADS),
            note=f"{cpu:.1f} CPU-s of the server process for {requests} requests"),
        Row(SECTION, "CPU cores one GPU needs", f"{cores[0]:.0f}-{cores[1]:.0f} cores",
            f"GPU {GPU_IMAGES_S[0]}-{GPU_IMAGES_S[1]} img/s (README's H100 estimate)",
            note="the GPU's images/s over the pipeline's images per CPU-second"),
        Row(SECTION, "batch job, no-op graph, per CPU-second", f"{job_per_core:.1f} img/s per core",
            f"server {per_core:.1f} img/s per core", job_per_core / per_core,
            note=f"{job_ips:.1f} img/s on {THREADS} cores; {requests} PNG files, no masks"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--clients", type=int, default=4)
    a = p.parse_args()
    show(rows(a.requests, a.clients))


if __name__ == "__main__":
    main()
