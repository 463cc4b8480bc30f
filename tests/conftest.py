"""Shared fixtures: a small synthetic data set, a briefly trained run and its exported,
calibrated artifact: real files made by the project's own code, once per session. And how a
test says a tool it needs is missing (Ray, Chromium, a tmpfs mount): skipped on a
workstation, a failure under CI=true, so a green CI run has tested everything."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_tool(reason: str) -> NoReturn:
    """Skip (the whole module when called at import) or, under CI=true, fail."""
    if IN_CI:
        pytest.fail(f"CI=true and a tool this test needs is missing: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_tool(name: str, install: str) -> ModuleType:
    """pytest.importorskip, but failing under CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_tool(f"{name} is not installed ({install})")


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


@contextmanager
def ready_client(model: Path) -> Iterator:
    """An in-process app serving `model` (CPU, one thread), yielded once /readyz says the
    model is loaded and warm, so a test's first request is not the one that waits."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(model=model, providers=["cpu"], threads=1, log_format="text")
    with TestClient(create_app(settings)) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        yield client
