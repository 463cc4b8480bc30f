"""Shared fixtures: a small synthetic data set, a briefly trained run and its exported,
calibrated artifact: real files made by the project's own code, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from training.synth import write_dataset

    out = tmp_path_factory.mktemp("data") / "synth"
    write_dataset(
        out, n_train=10, n_test_good=4, n_test_per_defect=2, size=(96, 96), seed=3, progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(synth_data, tmp_path_factory) -> Path:
    from models.config import ModelConfig
    from training.config import TrainConfig
    from training.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(
        patch_size=48, batch_size=4, max_steps=6, checkpoint_every=3, holdout_fraction=0.3
    )
    train(
        synth_data,
        out,
        ModelConfig(channels=8, latent_channels=8, disc_channels=8),
        cfg,
        seed=0,
        device="cpu",
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_run, synth_data, tmp_path_factory) -> Path:
    from training.export import export

    out = tmp_path_factory.mktemp("models") / "tiny.onnx"
    export(tiny_run, out, data=synth_data)
    return out
