"""Faults: SIGTERM while requests are in flight (they finish with 200), the
decode thread pool exhausted (requests wait, or 503/504 at once: never a hang or a 5xx), and
the disk filling up under the batch job (one-line error, exit 3, nothing half-written taken
as done, a rerun resumes). Model files deleted, truncated or replaced while serving are in
tests/test_swap.py; a batch job killed and resumed in tests/test_batch_resume.py."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import missing_tool
from tests.test_service import assert_error, running, settings_for
from tests.test_service_support import ROOT, defect_png, metric, serve

FILE = {"file": ("defect.png", defect_png())}


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def test_sigterm_drains_requests_in_flight(tiny_model, tmp_path):
    """Eight requests in flight, some being scored and some queued, when SIGTERM arrives:
    all answer 200 and the process exits cleanly."""
    env = {"NANOINSPECT_BATCH_SIZE": "2", "NANOINSPECT_BATCH_WAIT_MS": "400"}
    with serve([str(tiny_model)], tmp_path / "log.txt", env) as s:

        async def scenario():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                files = [{"file": (f"{i}.png", defect_png(i))} for i in range(8)]
                posts = [asyncio.create_task(c.post("/v1/score", files=f)) for f in files]
                async with asyncio.timeout(30):
                    while metric((await c.get("/metrics")).text, "nanoinspect_queue_depth") < 4:
                        await asyncio.sleep(0.01)
                s.proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*posts)

        answers = asyncio.run(scenario())
        assert [r.status_code for r in answers] == [200] * 8
        # uvicorn re-raises SIGTERM once it has shut down cleanly: the status says "killed"
        assert s.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in s.text() and "Traceback" not in s.text()


@pytest.mark.anyio
async def test_decode_pool_exhausted_queues_then_503(tiny_model, monkeypatch):
    """One decode thread, held: two uploads wait for it (queue_size 3 counts the running
    one), the next ones get 503 at once; released, the waiting ones are scored."""
    import service.inspector

    gate, decode = threading.Event(), service.inspector.decode_image
    monkeypatch.setattr(
        service.inspector, "decode_image", lambda *a, **k: gate.wait(30) and decode(*a, **k)
    )
    async with running(settings_for(tiny_model, decode_threads=1, queue_size=3)) as c:
        tasks = [asyncio.create_task(c.post("/v1/score", files=FILE)) for _ in range(6)]
        async with asyncio.timeout(30):
            while sum(t.done() for t in tasks) < 3:
                await asyncio.sleep(0.01)
        assert (await c.get("/healthz")).status_code == 200  # the loop is free meanwhile
        gate.set()
        answers = await asyncio.gather(*tasks)
    busy = [r for r in answers if r.status_code == 503]
    assert len(busy) == 3 and all(r.headers["retry-after"] == "1" for r in busy)
    assert all("wait for decoding" in r.json()["error"]["message"] for r in busy)
    assert sorted(r.status_code for r in answers) == [200] * 3 + [503] * 3


@pytest.mark.anyio
async def test_decode_wait_past_the_deadline_is_504(tiny_model, monkeypatch):
    import service.inspector

    gate, decode = threading.Event(), service.inspector.decode_image
    monkeypatch.setattr(
        service.inspector, "decode_image", lambda *a, **k: gate.wait(30) and decode(*a, **k)
    )
    async with running(settings_for(tiny_model, decode_threads=1, request_timeout_s=0.5)) as c:
        threading.Timer(2.0, gate.set).start()
        answers = await asyncio.gather(*(c.post("/v1/score", files=FILE) for _ in range(2)))
    for r in answers:
        assert_error(r, 504, "timeout")


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                         capture_output=True)  # fmt: skip
    return out.returncode == 0


def _score(model: Path, inputs: Path, out: Path, kinds: list[str], limit: int | None = None):
    def limited() -> None:  # writes past `limit` bytes fail with EFBIG instead of a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "cli", "score", str(model), str(inputs), "--out",
           str(out), *kinds, "--part-rows", "4", "--no-progress", "--workers", "1"]  # fmt: skip
    env = os.environ | {"NANOINSPECT_PROVIDERS": "cpu"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limited if limit else None)  # fmt: skip


def _assert_nothing_half_done(out: Path, kinds: list[str]) -> set[str]:
    """Every committed row has its masks (and overlays), whole; no temporary file is left."""
    assert not list(out.rglob(".tmp-*"))
    done = set()
    for part in sorted((out / "parts").glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            assert row["error"] is None, row["error"]
            for kind in (k.removeprefix("--save-") for k in kinds):
                png = (out / kind / row["relative_path"]).with_suffix(".png")
                with Image.open(png) as im:
                    im.load()  # raises on a truncated PNG
            done.add(row["path"])
    return done


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_disk_full_during_the_batch_job(tiny_model, tmp_path, how):
    """tmpfs: a 256 KiB file system fills up while masks, overlays and parts are written
    (ENOSPC), then grows. rlimit: RLIMIT_FSIZE (12.5 kB a file) lets masks and parts through
    but not the merged CSV (EFBIG), then is lifted. Both: exit 3 with one line, whole rows
    only, no results file beside a missing one, a rerun resumes."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    for i in range(40):
        (inputs / f"{i:03d}.png").write_bytes(defect_png(i))
    if how == "tmpfs" and not _can_mount_tmpfs(out):
        missing_tool("mounting a tmpfs needs root and CAP_SYS_ADMIN")
    try:
        kinds = ["--save-masks", "--save-overlays"] if how == "tmpfs" else ["--save-masks"]
        first = _score(tiny_model, inputs, out, kinds, limit=12_500 if how == "rlimit" else None)
        assert first.returncode == 3, first.stderr
        errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "cannot write results" in errors[0], first.stderr
        assert "Traceback" not in first.stderr
        assert "run the same command again to resume" in errors[0]
        done = _assert_nothing_half_done(out, kinds)
        assert (0 < len(done) < 40) if how == "tmpfs" else (len(done) == 40)
        assert not (out / "results.parquet").exists() and not (out / "results.csv").exists()
        if how == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        again = _score(tiny_model, inputs, out, kinds)
        assert again.returncode == 0, again.stderr
        assert f"({len(done)} done by an earlier run)" in again.stdout
        rows = pq.read_table(out / "results.parquet").to_pylist()
        assert sorted(r["path"] for r in rows) == sorted(str(p) for p in inputs.iterdir())
        assert all(r["error"] is None for r in rows)
        assert len(_assert_nothing_half_done(out, kinds)) == 40
    finally:
        if how == "tmpfs":
            for _ in range(20):  # the child may still hold the mount briefly
                if subprocess.run(["umount", str(out)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
