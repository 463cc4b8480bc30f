"""`nanoinspect train` under torchrun: 2 CPU processes with gloo and DistributedDataParallel
finish, and rank 0 alone writes the run (one final checkpoint, one config, one log)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

CONFIG = """
[model]
channels = 8
latent_channels = 8
disc_channels = 8
[train]
patch_size = 32
batch_size = 2
checkpoint_every = 1000
holdout_fraction = 0.3
"""


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["--max-steps=3", "--max-minutes=0.005"])
def test_torchrun_two_gloo_processes(synth_data, tmp_path, stop):
    """--max-minutes is the case that hung before: each rank read its own clock, one left
    the loop and the other waited in all-reduce forever."""
    (tmp_path / "cfg.toml").write_text(CONFIG)
    out = tmp_path / "run"
    steps = [] if "steps" in stop else ["--max-steps=100000"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cli",
        "train",
        str(synth_data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--config",
        str(tmp_path / "cfg.toml"),
        stop,
        *steps,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    (ckpt,) = sorted((out / "checkpoints").iterdir())  # exactly one, the final one
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "checkpoints",
        "config.json",
        "tensorboard",
    ]
    assert len(list((out / "tensorboard").iterdir())) == 1  # rank 1 opened no writer
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["meta"]["world_size"] == 2
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert ckpt.name == f"step_{state['step']:07d}.pt"
    assert state["step"] == 3 if "steps" in stop else state["step"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not list(Path(out).rglob(".tmp-*"))
