"""Model swap under load with the default model: a real server, 8 clients posting 256x256
micrographs without pause, 4 swaps between the default model and a recalibrated copy (other
alpha and threshold, so other answers). Prints how long loading and checking took, how many
requests were answered meanwhile, failures (expected: none) and p99 latency during swaps
against outside them, measured in the same run.

    python -m tests.bench.bench_swap
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.bench.common import DEFAULT_MODEL, grey, median, percentile
from tests.test_service_support import encode, serve

CLIENTS, SWAPS, SETTLE_S = 8, 4, 4.0
ADMIN = {"X-API-Key": "bench-admin"}


def recalibrated(src: Path, out: Path) -> None:
    import onnx

    model = onnx.load(src)
    props = {p.key: p for p in model.metadata_props}
    props["name"].value += "-b"
    props["alpha"].value = str(float(props["alpha"].value) / 2)
    onnx.save(model, out)


async def run(url: str) -> None:
    png = encode(Image.fromarray((grey(256, 256, 5) * 255).astype(np.uint8)))
    answers: list[tuple[float, float, int, str]] = []  # (start, end, status, sha)
    swaps: list[tuple[float, float, float]] = []  # (start, end, load_seconds)
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:

        async def client() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                r = await c.post("/v1/score", files={"file": ("x.png", png)},
                                 params={"mask_format": "none"})  # fmt: skip
                sha = r.json()["model"]["sha256"] if r.status_code == 200 else ""
                answers.append((t0, time.monotonic(), r.status_code, sha))

        load = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        await asyncio.sleep(SETTLE_S)
        for i in range(SWAPS):
            t0 = time.monotonic()
            r = await c.post("/v1/admin/model", json={"path": "ab"[(i + 1) % 2] + ".onnx"},
                             headers=ADMIN)  # fmt: skip
            r.raise_for_status()
            swaps.append((t0, time.monotonic(), r.json()["load_seconds"]))
            await asyncio.sleep(SETTLE_S)
        stop.set()
        await asyncio.gather(*load)

    def overlaps(a: tuple) -> bool:
        return any(a[0] <= s[1] and a[1] >= s[0] for s in swaps)

    during = [a for a in answers if overlaps(a)]
    outside = [a for a in answers if not overlaps(a)]
    failed = [a for a in answers if a[2] != 200]
    p99 = lambda xs: percentile([a[1] - a[0] for a in xs], 99)  # noqa: E731
    print(f"swap under load: {CLIENTS} clients, {SWAPS} swaps, default model, 256x256 images")
    print(f"  load + check + swap: median {median([s[2] for s in swaps]):.2f} s "
          f"(each: {', '.join(f'{s[2]:.2f}' for s in swaps)})")  # fmt: skip
    print(f"  requests: {len(answers)} answered, {len(failed)} failed, {len(during)} overlapped "
          f"a swap; models seen: {len({a[3] for a in answers})}")  # fmt: skip
    print(f"  p99 latency: {p99(during):.2f} s overlapping a swap, {p99(outside):.2f} s outside "
          f"(ratio {p99(during) / p99(outside):.2f})")  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        folder = Path(tmp)
        shutil.copy(DEFAULT_MODEL, folder / "a.onnx")
        recalibrated(DEFAULT_MODEL, folder / "b.onnx")
        env = {"NANOINSPECT_ADMIN_KEYS": "bench-admin", "NANOINSPECT_THREADS": "2"}
        with serve([str(folder / "a.onnx")], folder / "log.txt", env) as s:
            asyncio.run(run(s.url))


if __name__ == "__main__":
    main()
