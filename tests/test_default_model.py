"""The shipped model: its recorded metrics hold on a freshly drawn test set (the card's
recipe: seed 2, 24 good and 12 per defect type, 256x256), and it serves without torch."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default.onnx"
RECORDED = ROOT / "models" / "default.metrics.json"
MARGIN = 0.01  # same seed, same file: only floating-point noise may differ


@pytest.fixture(scope="module")
def fresh_test_set(tmp_path_factory) -> Path:
    from training.synth import write_dataset

    out = tmp_path_factory.mktemp("default") / "test"
    write_dataset(
        out,
        n_train=4,
        n_test_good=24,
        n_test_per_defect=12,
        size=(256, 256),
        seed=2,
        progress=False,
    )
    return out


def test_recorded_metrics_hold(fresh_test_set, tmp_path):
    from training.evaluate import evaluate

    recorded = json.loads(RECORDED.read_text())
    result = evaluate(MODEL, fresh_test_set, tmp_path / "report")
    for key in ("image_auroc", "image_auroc_max", "pixel_auroc", "aupro", "pixel_f1", "pixel_iou"):
        assert result[key] == pytest.approx(recorded["test"][key], abs=MARGIN), key
    assert result["model"]["sha256"] == recorded["test"]["model"]["sha256"]


def test_default_model_metadata_matches_its_card():
    from models.detector import Detector

    det = Detector(MODEL, providers=("cpu",))
    recorded = json.loads(RECORDED.read_text())
    assert det.meta.name == "nanoinspect-default"
    assert det.meta.alpha == recorded["chosen"]["alpha"]
    assert det.meta.sigma == recorded["chosen"]["sigma"]
    assert det.meta.calibration["method"] == "best_f1"
