"""`--engine ray` on a local Ray instance (2 CPUs, no dashboard) gives the local engine's
rows and files. Skipped when Ray is not installed (a failure under CI=true)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from service.batch.driver import run
from service.batch.job import Job
from tests.conftest import ROOT, import_tool
from tests.test_batch_support import make_bad, make_inputs, same_results, table

import_tool("ray", "pip install 'nanoinspect[ray]'")


@pytest.mark.slow
def test_ray_engine_equals_local_engine(tiny_model, tmp_path):
    inputs = make_inputs(tmp_path / "in")
    make_bad(inputs / "bad", inputs / "a" / "001.png")
    kinds = ("masks", "maps")
    local = run(
        Job(
            tiny_model, [str(inputs)], tmp_path / "local", batch_size=3, kinds=kinds, progress=False
        )
    )
    on_ray = run(
        Job(
            tiny_model,
            [str(inputs)],
            tmp_path / "ray",
            batch_size=3,
            kinds=kinds,
            engine="ray",
            workers=1,
            progress=False,
        )
    )
    assert (on_ray.total, on_ray.ok, on_ray.failed) == (local.total, local.ok, local.failed)
    assert (local.total, local.failed) == (14, 3)
    a, b = table(tmp_path / "local"), table(tmp_path / "ray")
    assert same_results(a, b), (a.to_pylist(), b.to_pylist())
    for kind in kinds:
        files = sorted(
            p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / kind).rglob("*.*")
        )
        assert len(files) == 11
        for f in files:
            mine, theirs = tmp_path / "ray" / f, tmp_path / "local" / f
            if f.suffix == ".npy":
                np.testing.assert_allclose(np.load(mine), np.load(theirs), rtol=1e-5, atol=1e-6)
            else:  # masks: equal but for pixels whose score sits on the threshold
                x, y = (np.asarray(Image.open(p)) for p in (mine, theirs))
                assert x.shape == y.shape and (x != y).mean() < 1e-3, f


@pytest.mark.slow
def test_ray_run_prints_no_notices(tiny_model, synth_data, tmp_path):
    """A successful run: our summary line, not Ray's notices that token auth is on or that
    progress bars are off (the pipeline turns them off on purpose)."""
    cmd = [sys.executable, "-m", "cli", "score", str(tiny_model),
           str(synth_data / "test" / "good"), "--engine", "ray", "--no-progress",
           "--out", str(tmp_path / "out")]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "4 ok" in out.stdout
    for notice in ("Token authentication", "Progress bars disabled"):
        assert notice not in out.stderr, out.stderr
