"""Soak: N concurrent clients post images to a real `nanoinspect serve` on loopback for a fixed
time (and at most a fixed number of requests), honouring Retry-After like a polite client,
while a sampler reads the queue depth from /metrics and the server's RSS from /proc. Prints
requests/s, latency percentiles, the status histogram, the largest queue depth seen and the
RSS before and after (after a warm-up run: onnxruntime's memory arena grows to the largest
batch first), and images scored per second against the Detector alone on the same images.
`make soak` runs it (also part of `make bench`); tests/test_soak.py runs a short one.

    python -m tests.bench.bench_soak [--model M] [--clients 64] [--seconds 60] [--size 256x256]
        [--queue-size 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@dataclass
class Report:
    clients: int
    seconds: float  # from the first request to the last answer
    statuses: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)  # transport
    latency: dict[int, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    bad_503: int = 0  # 503 answers without Retry-After
    max_depth: float = 0.0
    batches: list[float] = field(default_factory=list)  # inference calls, images in them
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0  # VmHWM after the run: the process's peak so far
    rss_trace: list[int] = field(default_factory=list)  # sampled during the run

    @property
    def rss_growth(self) -> int:
        return self.rss_after - self.rss_before

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, q: float, status: int = 200) -> float:
        values = sorted(self.latency.get(status, []))
        return float(np.percentile(values, q)) if values else float("nan")

    def table(self) -> str:
        rps = self.answered / self.seconds
        ok = self.statuses.get(200, 0)
        lines = [
            f"requests answered   {self.answered} in {self.seconds:.1f} s: {rps:.1f}/s "
            f"({ok / self.seconds:.1f}/s scored)",
            f"latency of 200s     p50 {self.percentile(50) * 1000:.0f} ms, "
            f"p99 {self.percentile(99) * 1000:.0f} ms, max {self.percentile(100) * 1000:.0f} ms",
        ]
        for status, n in sorted(self.statuses.items()):
            p50 = statistics.median(self.latency[status]) * 1000
            lines.append(
                f"status {status}          {n} ({n / self.answered:.1%}), p50 {p50:.0f} ms"
            )
        errors = ", ".join(f"{k} {v}" for k, v in self.errors.items()) or "none"
        trace = self.rss_trace or [self.rss_after]
        quarters = ", ".join(
            f"{trace[min(len(trace) - 1, len(trace) * q // 4)] / MiB:.0f}" for q in (1, 2, 3, 4)
        )
        lines += [
            f"transport errors    {errors}; 503 without Retry-After: {self.bad_503}",
            f"queue depth         max {self.max_depth:.0f} seen on /metrics; "
            f"{self.batches[1] / max(self.batches[0], 1):.1f} images per inference call",
            f"server RSS          {self.rss_before / MiB:.0f} MiB before, "
            f"{self.rss_after / MiB:.0f} MiB after ({self.rss_growth / MiB:+.0f}), "
            f"peak {self.rss_peak / MiB:.0f} MiB",
            f"RSS during the run  {quarters} MiB (at each quarter)",
        ]
        return "\n".join(lines)


def rss(pid: int, field_name: str = "VmRSS") -> int:
    """Bytes, from /proc/<pid>/status (VmHWM: the peak so far)."""
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith(field_name + ":"))
    return int(line.split()[1]) * 1024


def sample(metrics_text: str, name: str) -> float:
    """A sample of the Prometheus exposition, summed over its label sets (0 if absent)."""
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == name
    )


async def soak(
    url: str,
    pid: int,
    images: list[bytes],
    *,
    clients: int,
    seconds: float,
    max_requests: int,
    sample_every: float = 0.1,
) -> Report:
    """`clients` loops each post one image after another until `seconds` have passed or
    `max_requests` have been sent in all; a 503 makes its client wait Retry-After."""
    report = Report(clients, seconds)
    report.rss_before = rss(pid)
    sent = 0
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        end = start + seconds

        async def client(i: int) -> None:
            nonlocal sent
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                image = images[(i + sent) % len(images)]
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/score", files={"file": (f"{i}.png", image)})
                except httpx.HTTPError as e:
                    report.errors[type(e).__name__] += 1
                    continue
                report.statuses[r.status_code] += 1
                report.latency[r.status_code].append(time.perf_counter() - t0)
                if r.status_code == 503:
                    retry = r.headers.get("retry-after")
                    report.bad_503 += retry is None
                    await asyncio.sleep(float(retry or 1))

        async def sampler() -> None:
            while True:
                r = await http.get("/metrics")
                report.max_depth = max(report.max_depth, sample(r.text, "nanoinspect_queue_depth"))
                report.rss_trace.append(rss(pid))
                await asyncio.sleep(sample_every)

        before = (await http.get("/metrics")).text
        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(client(i) for i in range(clients)))
        report.seconds = time.perf_counter() - start
        sampling.cancel()
        after = (await http.get("/metrics")).text
        report.max_depth = max(report.max_depth, sample(after, "nanoinspect_queue_depth"))
        for name in ("nanoinspect_batch_size_count", "nanoinspect_batch_size_sum"):
            report.batches.append(sample(after, name) - sample(before, name))
    report.rss_after, report.rss_peak = rss(pid), rss(pid, "VmHWM")
    return report


def make_images(n: int, width: int, height: int) -> list[bytes]:
    """n synthetic SEM micrographs, half with a defect, as 8-bit PNG."""
    from tests.test_service_support import encode
    from training.synth import draw_sample

    defects = [None, "bead", None, "film", None, "clump", None, "particle"]
    out = []
    for i in range(n):
        pixels = draw_sample(np.random.default_rng(i), width, height, defects[i % 8])[0]
        out.append(encode(Image.fromarray((pixels * 255 + 0.5).astype(np.uint8))))
    return out


def detector_alone(model: Path, images: list[bytes], batch_size: int, seconds: float) -> float:
    """Images/s of Detector.score on the same images in batches of batch_size, in this
    process with the server's thread count: what the soak's scored/s is compared with
    (measured before and after the soak: other jobs on a shared machine come and go)."""
    from models.detector import Detector
    from models.images import decode_image

    threads = os.cpu_count() or 1
    detector = Detector(model, providers=("cpu",), threads=threads, batch_size=batch_size)
    pixels = [decode_image(data).pixels for data in images]
    batches = [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
    detector.score(batches[0])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = batches[done // batch_size % len(batches)]
        detector.score(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def main() -> None:
    from tests.test_service_support import serve

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default.onnx")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the images posted")
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    images = make_images(16, width, height)
    alone = [detector_alone(args.model, images, args.batch_size, seconds=10)]
    env = {
        "NANOINSPECT_QUEUE_SIZE": str(args.queue_size),
        "NANOINSPECT_BATCH_SIZE": str(args.batch_size),
        "NANOINSPECT_THREADS": str(os.cpu_count() or 1),
        "NANOINSPECT_LOG_LEVEL": "warning",
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve([str(args.model)], Path(tmp) / "log", env) as s,
    ):
        print(
            f"soak: {args.clients} clients for {args.seconds:g} s, {args.model.name}, "
            f"{width}x{height} PNG, queue_size {args.queue_size}, batch_size {args.batch_size}"
        )
        run = functools.partial(
            soak, s.url, s.proc.pid, images, clients=args.clients, max_requests=args.max_requests
        )
        warm = asyncio.run(run(seconds=args.seconds / 6))  # onnxruntime's arena grows first
        print(f"warm-up: {warm.answered} answers in {warm.seconds:.1f} s, "
              f"RSS {warm.rss_before / MiB:.0f} -> {warm.rss_after / MiB:.0f} MiB")  # fmt: skip
        report = asyncio.run(run(seconds=args.seconds))
        print(report.table())
    alone.append(detector_alone(args.model, images, args.batch_size, seconds=10))
    scored = report.statuses.get(200, 0) / report.seconds
    print(f"Detector alone      {alone[0]:.1f} images/s before the server ran, {alone[1]:.1f} "
          f"after (same images, batches of {args.batch_size}): served/alone "
          f"{scored / statistics.mean(alone):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
