"""Training: it learns, resumes exactly, stops on divergence, and refuses bad input cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.config import ModelConfig
from models.errors import NanoinspectError
from training.config import TrainConfig
from training.train import TrainingDiverged, latest_checkpoint, train

SMALL = ModelConfig(channels=8, latent_channels=8, disc_channels=8)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        patch_size=32,
        batch_size=4,
        max_steps=6,
        checkpoint_every=3,
        log_every=1,
        image_every=3,
        holdout_fraction=0.2,
    )
    return TrainConfig(**(base | kw))


def _losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/rec")}


def test_losses_finite_and_reconstruction_falls(synth_data, tmp_path):
    run = tmp_path / "run"
    train(
        synth_data,
        run,
        SMALL,
        _cfg(max_steps=60, lr=1e-3, checkpoint_every=60, image_every=30),
        device="cpu",
        progress=False,
    )
    rec = _losses(run)
    assert len(rec) == 60 and all(np.isfinite(v) for v in rec.values())
    first = np.mean([rec[s] for s in range(1, 6)])
    last = np.mean([rec[s] for s in range(56, 61)])
    assert last < 0.7 * first
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["max_steps"] == 60 and saved["model"] == SMALL.to_dict()
    assert saved["holdout"], "a held-out split is recorded for calibration"


def test_resume_reproduces_the_uninterrupted_run(synth_data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    cfg = _cfg(ema=0.9)  # with a weight average: both copies must resume
    train(synth_data, whole, SMALL, cfg, seed=5, device="cpu", progress=False)
    train(
        synth_data, parts, SMALL, _cfg(ema=0.9, max_steps=3), seed=5, device="cpu", progress=False
    )
    train(synth_data, parts, SMALL, cfg, device="cpu", resume=True, progress=False)
    a = torch.load(latest_checkpoint(whole), weights_only=False)
    b = torch.load(latest_checkpoint(parts), weights_only=False)
    assert a["step"] == b["step"] == 6
    for weights in ("model", "trained"):  # the weight average resumes as exactly as the weights
        for k, v in a[weights].items():
            assert torch.equal(v, b[weights][k]), (weights, k)
    assert _losses(whole)[6] == _losses(parts)[6]


def test_scored_weights_are_an_average_of_the_trained_ones(synth_data, tmp_path):
    """Checkpoints carry the weight average as "model" (what export scores) beside the
    trained weights; with ema 0 there is no average, only the weights."""

    def run(ema: float) -> tuple[dict, dict]:
        out = tmp_path / f"ema{ema}"
        train(synth_data, out, SMALL, _cfg(ema=ema, lr=1e-3), device="cpu", progress=False)
        mid, end = (torch.load(p, weights_only=False) for p in sorted(out.glob("checkpoints/*")))
        return mid, end

    def gap(a: dict, b: dict) -> float:
        return sum(float((a[k] - b[k]).abs().sum()) for k in a)

    mid, end = run(0.0)
    assert "trained" not in end and gap(end["model"], mid["model"]) > 0  # the weights, trained
    mid, end = run(0.9)
    assert gap(end["model"], end["trained"]) > 0
    # the average lags behind the weights: nearer to where they were three steps ago
    assert gap(end["model"], mid["trained"]) < gap(end["trained"], mid["trained"])
    with pytest.raises(NanoinspectError, match="ema"):
        TrainConfig(ema=1.0)


def test_existing_run_is_not_overwritten(synth_data, tmp_path):
    run = tmp_path / "run"
    train(synth_data, run, SMALL, _cfg(max_steps=3), device="cpu", progress=False)
    before = latest_checkpoint(run).read_bytes()
    with pytest.raises(NanoinspectError, match="--resume"):
        train(synth_data, run, SMALL, _cfg(max_steps=3), device="cpu", progress=False)
    assert latest_checkpoint(run).read_bytes() == before


def test_divergence_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
    from training.synth import write_dataset

    data = tmp_path / "data"
    write_dataset(
        data, n_train=6, n_test_good=0, n_test_per_defect=0, size=(64, 64), seed=3, progress=False
    )
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+") as info:
        train(
            data,
            run,
            SMALL,
            TrainConfig(
                patch_size=32, batch_size=4, max_steps=50, checkpoint_every=1, lr=30.0, lr_d=5.0
            ),
            device="cpu",
            progress=False,
        )
    step = int(str(info.value).split("step ")[1].split(":")[0])
    assert step >= 1, "this lr diverges after the first update"
    kept = latest_checkpoint(run)
    assert kept is not None and kept.name == f"step_{step:07d}.pt"
    assert str(kept) in str(info.value)
    state = torch.load(kept, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300
    )


def _bad_inputs(tmp_path: Path, synth_data: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(small / "tiny.png")
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\npatch_sise = 64\n")
    return {
        "missing": ([str(tmp_path / "nope")], "nope"),
        "empty": ([str(empty)], "no images"),
        "unreadable": ([str(unreadable)], "a.png"),
        "too small": ([str(small)], "smaller than"),
        "unknown config key": ([str(synth_data), "--config", str(cfg)], "patch_sise"),
    }


def test_bad_inputs_give_one_line_errors(tmp_path, synth_data):
    for case, (args, needle) in _bad_inputs(tmp_path, synth_data).items():
        out = tmp_path / f"out-{case.replace(' ', '-')}"
        p = _cli("train", *args, "--out", str(out), "--max-steps", "2", "--device", "cpu")
        assert p.returncode == 2, (case, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (case, p.stderr)
        assert needle in lines[0], (case, lines[0])
        assert not out.exists(), case
