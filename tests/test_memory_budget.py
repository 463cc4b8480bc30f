"""Memory bounded by a setting: no inference call takes more pixels than `batch_pixels`
(one image always runs), the server's batches obey it, and an idle server has its Detector
give the arena back (`trim`), once, with no result of the batcher's pinning it; glibc, its
thresholds fixed, gives a thread's freed blocks back. Memory is measured in fresh processes;
nothing here is timed."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import weakref

import numpy as np
import pytest

from models.detector import Detector
from service.batcher import Batcher
from tests.test_service import running, settings_for
from tests.test_service_support import ROOT, defect_image, defect_png


def test_detector_calls_stay_within_the_pixel_budget(tiny_model):
    images = [defect_image(seed) for seed in range(5)]  # 96x96 each
    budget = 2 * images[0].size + 1
    d = Detector(tiny_model, providers=("cpu",), threads=1, batch_pixels=budget)
    calls, run = [], d.run
    d.run = lambda batch, *a, **k: calls.append(batch.shape) or run(batch, *a, **k)
    results = d.score(images)
    assert sum(c[0] for c in calls) == 5 and max(c[0] for c in calls) == 2
    assert all(c[0] == 1 or np.prod(c) <= budget for c in calls)  # (images may be zoomed)
    alone = Detector(tiny_model, providers=("cpu",), threads=1, batch_size=1)
    for r, image in zip(results, images, strict=True):
        (want,) = alone.score([image])
        assert r.score == pytest.approx(want.score, rel=1e-5)
    big = np.zeros((budget // 50 + 50, 50), np.float32)  # over the budget alone: still scored
    assert d.per_call(big.shape) == 1 and len(d.score([big])) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_server_batches_stay_within_the_pixel_budget(tiny_model, anyio_backend):
    settings = settings_for(
        tiny_model, batch_size=8, batch_wait_ms=300, batch_pixels=2 * 96 * 96, idle_release_s=0.1
    )
    async with running(settings) as c:
        detector, trims = c.app.state.inspector.detector, []
        trim = detector.trim
        detector.trim = lambda: trims.append(1) or trim()
        files = [{"file": (f"{i}.png", defect_png(i))} for i in range(8)]
        rs = await asyncio.gather(*(c.post("/v1/score", files=f) for f in files))
        await asyncio.sleep(1)  # idle: the arena is released once, not again and again
    sizes = [r.json()["timings"]["batch_size"] for r in rs]
    assert all(r.status_code == 200 for r in rs) and max(sizes) == 2
    assert trims == [1]


def test_an_idle_batcher_keeps_no_result(tiny_model):
    """A result's map is onnxruntime's output buffer, not a copy: one the batcher kept while
    waiting for work would keep its arena region through the idle release."""
    detector = Detector(tiny_model, providers=["cpu"], threads=1)

    async def main() -> weakref.ref:
        batcher = Batcher(batch_wait_s=0, queue_size=4, idle_release_s=60)
        batcher.start()
        try:
            deadline = asyncio.get_running_loop().time() + 60
            job = batcher.submit(detector, np.zeros((64, 64), np.float32), {}, deadline)
            result = weakref.ref(await job.future)
            del job
            await asyncio.sleep(0.2)  # the batcher is waiting for the next job
            gc.collect()
            return result() is None
        finally:
            await batcher.stop()

    assert asyncio.run(main())


HEAP = """
import json, sys, threading
import numpy as np
from service import heap
from tests.bench.common import rss_mb
if sys.argv[1] == "fixed":
    assert heap.fix_thresholds()
def burst():
    big = np.ones(4 << 20, np.float32)  # 16 MiB, mapped on its own; once freed, glibc's
    del big  # adjusting thresholds rise to it
    blocks = [np.ones(1 << 18, np.float32) for _ in range(24)]  # 24 x 1 MiB
    del blocks
before = rss_mb()
thread = threading.Thread(target=burst)
thread.start()
thread.join()
print(json.dumps({"kept": rss_mb() - before}))
"""


def kept_after_burst(thresholds: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", HEAP, thresholds],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])["kept"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_fixed_thresholds_give_a_threads_freed_blocks_back():
    """After a large block is freed, glibc carves the next ones from the thread's own heap and
    keeps them when freed; with its thresholds fixed (service.heap) they go back at once."""
    assert kept_after_burst("adjusting") > 16
    assert kept_after_burst("fixed") < 4


PEAK = """
import json, sys
import numpy as np
from models.detector import Detector
from tests.bench.common import rss_mb
budget = None if sys.argv[1] == "none" else int(sys.argv[1])
d = Detector(sys.argv[2], providers=("cpu",), threads=1, batch_pixels=budget)
d.warm_up()
warm = rss_mb()
images = [np.random.default_rng(i).random((352, 512), dtype=np.float32) for i in range(8)]
d.score(images)
peak = rss_mb(field="VmHWM")
d.trim()
print(json.dumps({"warm": warm, "peak": peak, "trimmed": rss_mb()}))
"""


def memory(model, budget: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PEAK, budget, str(model)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def test_small_budget_bounds_the_peak_and_trim_returns_memory():
    model = ROOT / "models" / "default.onnx"
    small, large = memory(model, str(352 * 512)), memory(model, "none")  # 1 image vs 8 a call
    assert small["peak"] - small["warm"] < 0.5 * (large["peak"] - large["warm"])
    for m in (small, large):
        assert m["trimmed"] - m["warm"] < 50, m
