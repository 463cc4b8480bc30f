"""Memory bounded by a setting: no inference call takes more pixels than `batch_pixels`
(one image always runs), the server's batches obey it, and an idle server has its Detector
give the arena back (`trim`), once. Memory is measured in fresh processes; nothing here is
timed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from models.detector import Detector
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
