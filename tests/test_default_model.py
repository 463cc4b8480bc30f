"""The shipped model: its recorded metrics hold on a freshly drawn test set (the card's
recipe: seed 2, 16 good and 6 per defect type, beaded included, 1024x704)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default.onnx"
RECORDED = ROOT / "models" / "default.metrics.json"
MARGIN = 0.01  # same seed, same file: only floating-point noise may differ


@pytest.fixture(scope="module")
def fresh_test_set(tmp_path_factory) -> Path:
    from training.synth import DEFECTS, write_dataset

    out = tmp_path_factory.mktemp("default") / "test"
    write_dataset(
        out,
        n_train=4,
        n_test_good=16,
        n_test_per_defect=6,
        size=(1024, 704),
        seed=2,
        progress=False,
        defects=DEFECTS,
    )
    return out


def test_recorded_metrics_hold(fresh_test_set, tmp_path):
    from training.evaluate import evaluate

    recorded = json.loads(RECORDED.read_text())
    result = evaluate(MODEL, fresh_test_set, tmp_path / "report")
    from training.card import KEYS

    for key in KEYS:
        assert result[key] == pytest.approx(recorded["test"][key], abs=MARGIN), key
    assert result["model"]["sha256"] == recorded["test"]["model"]["sha256"]


def test_default_model_metadata_matches_its_card():
    from models.detector import Detector

    det = Detector(MODEL, providers=("cpu",))
    recorded = json.loads(RECORDED.read_text())
    assert det.meta.name == "nanoinspect-default"
    assert det.meta.alpha == recorded["chosen"]["alpha"]
    assert det.meta.sigma == recorded["chosen"]["sigma"]
    assert det.meta.term_weights == recorded["chosen"]["term_weights"]
    # the label-free path: chosen on the self-check, thresholds at a target false-positive rate
    assert det.meta.calibration["method"] == "target_fpr"
    assert det.meta.calibration["labelled_images"] == 0
    assert det.meta.calibration["check"]["passed"]
