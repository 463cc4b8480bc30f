"""A short soak against a real `nanoinspect serve` with a queue far smaller
than the number of clients: every answer is 200 or 503 with Retry-After, no connection
fails, the queue never holds more than its setting, and RSS does not grow once warm.
The long one with the default model is `make soak` (tests/bench/bench_soak.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.bench.bench_soak import make_images, soak
from tests.test_service_support import serve

QUEUE_SIZE = 4
CLIENTS = 32
RSS_GROWTH = 32 << 20  # after warm-up; a leak of 50 kB per request would pass it


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    env = {
        "NANOINSPECT_QUEUE_SIZE": str(QUEUE_SIZE),
        "NANOINSPECT_BATCH_SIZE": "4",
        "NANOINSPECT_BATCH_WAIT_MS": "20",
        "NANOINSPECT_LOG_LEVEL": "warning",
    }
    with serve([str(tiny_model)], tmp_path_factory.mktemp("soak") / "log.txt", env) as s:
        yield s


def test_short_soak(server):
    images = make_images(4, 96, 96)

    def run(seconds: float):
        return asyncio.run(
            soak(server.url, server.proc.pid, images, clients=CLIENTS, seconds=seconds,
                 max_requests=5000)
        )  # fmt: skip

    warm = run(2)
    report = run(4)
    print(report.table())
    for r in (warm, report):
        assert set(r.statuses) <= {200, 503}, r.statuses
        assert not r.errors and r.bad_503 == 0
        assert r.max_depth <= QUEUE_SIZE
    assert report.statuses[200] > 0 and report.statuses[503] > 0  # overload really happened
    assert report.rss_growth < RSS_GROWTH, f"RSS grew {report.rss_growth / 2**20:.1f} MiB"
    assert server.proc.poll() is None and "Traceback" not in server.text()
