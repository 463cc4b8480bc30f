"""A `nanoinspect score` process killed with SIGKILL mid-run, twice, then resumed: exactly
one row per input, none lost or duplicated, the same numbers and files as a run that was
never interrupted. The process runs with torch made unimportable."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from service.batch.driver import run
from service.batch.job import Job
from tests.test_batch_support import cli, make_noise, same_results, table

N = 60
OUTPUTS = ("--save-masks", "--save-overlays", "--save-maps")


def parts(out: Path) -> list[Path]:
    return sorted((out / "parts").glob("part-*.parquet")) if (out / "parts").is_dir() else []


def kill_when(proc: subprocess.Popen, done, timeout: float = 60.0) -> None:
    """SIGKILL `proc` as soon as done() holds; fail if it finished first."""
    t_end = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.communicate()}")
        assert time.monotonic() < t_end, "no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_then_resume_gives_one_row_per_input(tiny_model, tmp_path):
    inputs = make_noise(tmp_path / "in", N)
    reference = tmp_path / "reference"
    run(
        Job(
            tiny_model,
            [str(inputs)],
            reference,
            batch_size=2,
            workers=1,
            kinds=("masks", "overlays", "maps"),
            progress=False,
        )
    )

    out = tmp_path / "out"
    args = [
        str(tiny_model),
        str(inputs),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--part-rows",
        "2",
        "--workers",
        "1",
        *OUTPUTS,
    ]
    kill_when(cli(*args), lambda: len(parts(out)) >= 1)
    first = len(parts(out))
    kill_when(cli(*args), lambda: len(parts(out)) >= first + 2)
    assert not (out / "results.parquet").exists()
    rows_before = sum(pq.read_metadata(p).num_rows for p in parts(out))
    assert 0 < rows_before < N

    last = cli(*args)
    stdout, stderr = last.communicate(timeout=120)
    assert last.returncode == 0, stderr
    assert f"{N} images ({rows_before} done by an earlier run): {N} ok, 0 failed" in stdout

    got = table(out)
    assert got.num_rows == N and len(set(got["path"].to_pylist())) == N
    assert same_results(got, table(reference))
    for kind, suffix in (("masks", ".png"), ("overlays", ".png"), ("maps", ".npy")):
        files = sorted(p.name for p in (out / kind).iterdir())
        assert files == sorted(p.name for p in (reference / kind).iterdir())
        assert len(files) == N and all(f.endswith(suffix) for f in files)
        for name in files:
            assert (out / kind / name).read_bytes() == (reference / kind / name).read_bytes()
    assert not list(out.rglob(".tmp-*"))
