"""A model trained on micrographs with an SEM info banner: `crop_bottom` in rows or
as a fraction of the height trains and exports, the artifact records it, and every surface
(REST, its batch endpoint, `nanoinspect score`, evaluate, calibrate) crops the same rows, so
they all give the Detector's numbers on the image without its banner."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from models.config import ModelConfig
from models.detector import Detector
from models.images import load_image
from training.calibrate import calibrate_in_place
from training.config import TrainConfig
from training.export import calibration_set, export
from training.synth import write_dataset
from training.train import train

HEIGHT = 104
BANNER = 7  # rows training.synth draws the banner on: max(3, round(0.07 * HEIGHT))


@pytest.fixture(scope="module", params=[float(BANNER), BANNER / HEIGHT], ids=["rows", "fraction"])
def trained(request, tmp_path_factory) -> tuple[Path, Path, float]:
    """(model, data, crop_bottom): trained and exported by the project's own code."""
    root = tmp_path_factory.mktemp("banner")
    data = root / "data"
    write_dataset(
        data, n_train=8, n_test_good=2, n_test_per_defect=1, size=(96, HEIGHT), seed=5,
        banner=True, progress=False,
    )  # fmt: skip
    cfg = TrainConfig(
        patch_size=48, batch_size=4, max_steps=2, checkpoint_every=2, holdout_fraction=0.3,
        crop_bottom=request.param,
    )  # fmt: skip
    model_cfg = ModelConfig(channels=8, latent_channels=8, disc_channels=8)
    train(data, root / "run", model_cfg, cfg, seed=0, device="cpu", progress=False)
    model = root / "banner.onnx"
    export(root / "run", model)
    return model, data, request.param


def test_the_artifact_records_the_crop(trained):
    model, _, crop = trained
    recorded = Detector(model, providers=("cpu",)).meta.crop_bottom
    want = BANNER if crop >= 1 else crop
    assert recorded == want and type(recorded) is type(want)


def test_rest_batch_endpoint_and_score_command_agree(trained, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    model, data, _ = trained
    paths = sorted((data / "test").rglob("*.png"))[:3]
    det = Detector(model, providers=("cpu",), threads=1)
    expected = [det.score([load_image(p).pixels[:-BANNER]])[0].score for p in paths]

    settings = Settings(
        model=model, providers=["cpu"], threads=1, log_format="text", fail_on_bad_model=True
    )  # the lifespan waits for the model
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        rest = []
        for p in paths:
            body = client.post("/v1/score", files={"file": (p.name, p.read_bytes())}).json()
            assert body["height"] == HEIGHT - BANNER
            rest.append(body["score"])
        files = [("files", (p.name, p.read_bytes())) for p in paths]
        batch = client.post("/v1/score/batch", files=files).json()
        endpoint = [item["result"]["score"] for item in batch["items"]]

    out = tmp_path / "scored"
    args = ["score", str(model), *map(str, paths), "--out", str(out), "--providers", "cpu"]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    command = [rows[str(p.resolve())]["score"] for p in paths]
    assert {rows[str(p.resolve())]["height"] for p in paths} == {HEIGHT - BANNER}

    for got in (rest, endpoint, command):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_evaluate_and_calibrate_crop_as_trained(trained, tmp_path):
    model, data, _ = trained
    maps = tmp_path / "maps"
    args = ["evaluate", str(model), str(data), "--out", str(tmp_path / "eval")]
    result = CliRunner().invoke(app, [*args, "--save-maps", str(maps)])
    assert result.exit_code == 0, result.output
    assert {np.load(m).shape for m in maps.rglob("*.npy")} == {(HEIGHT - BANNER, 96)}

    by_command, by_hand = tmp_path / "command.onnx", tmp_path / "hand.onnx"
    shutil.copyfile(model, by_command)
    shutil.copyfile(model, by_hand)
    result = CliRunner().invoke(app, ["calibrate", str(by_command), str(data)])
    assert result.exit_code == 0, result.output
    normals, labelled = calibration_set(data, BANNER, None)
    expected = calibrate_in_place(by_hand, normals, labelled)
    got = Detector(by_command, providers=("cpu",)).meta
    assert (got.pixel_threshold, got.image_threshold) == (
        expected.pixel_threshold,
        expected.image_threshold,
    )


def test_config_file_takes_rows_or_a_fraction(tmp_path):
    from models.errors import NanoinspectError
    from training.config import load_config

    path = tmp_path / "c.toml"
    for text, crop in (("40", 40.0), ("0.07", 0.07)):
        path.write_text(f"[train]\ncrop_bottom = {text}\n")
        assert load_config(path)[1].crop_bottom == crop
    path.write_text("[train]\ncrop_bottom = 1.5\n")
    with pytest.raises(NanoinspectError, match="whole number"):
        load_config(path)
