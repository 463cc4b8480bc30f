"""The HTTP batcher isolates faults as the batch job does: an image the runtime fails on
fails only its own request, the others in its batch are scored."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from models.detector import Detector
from service.batcher import Batcher


def test_one_bad_image_fails_only_its_own_request(tiny_model):
    detector = Detector(tiny_model, providers=["cpu"], threads=1)
    rng = np.random.default_rng(0)
    good = [rng.random((64, 64), dtype=np.float32) for _ in range(2)]
    bad = np.full((64, 64), "x", dtype=object)  # same shape, content the runtime cannot take
    batches: list[int] = []

    async def main() -> list:
        batcher = Batcher(
            batch_wait_s=1.0,
            queue_size=8,
            idle_release_s=60,
            observe=lambda n, s: batches.append(n),
        )
        batcher.start()
        try:
            deadline = asyncio.get_running_loop().time() + 60
            jobs = [batcher.submit(detector, x, {}, deadline) for x in (good[0], bad, good[1])]
            return await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        finally:
            await batcher.stop()

    first, failed, second = asyncio.run(main())
    assert batches == [3]  # one batch held all three
    assert isinstance(failed, ValueError)
    alone = detector.score(good)
    assert first.score == pytest.approx(alone[0].score, rel=1e-5)
    assert second.score == pytest.approx(alone[1].score, rel=1e-5)
