"""The shipped model: its recorded metrics hold on a freshly drawn test set (the card's
recipe: seed 2, 16 good and 6 per defect type, beaded included, 1024x704)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default.onnx"
RECORDED = ROOT / "models" / "default.metrics.json"
CARD = ROOT / "models" / "MODEL_CARD.md"
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


def _card(pattern: str) -> list[float]:
    found = re.search(pattern, CARD.read_text(), re.S)
    assert found, f"MODEL_CARD.md no longer says {pattern!r}"
    return [float(v) for v in re.findall(r"\d+(?:\.\d+)?", " ".join(found.groups()))]


def test_the_card_states_what_ships():
    """MODEL_CARD.md itself (not the JSON made beside it) names the shipped model's choices,
    thresholds and test figures, as rounded in its text."""
    from models.detector import Detector

    meta = Detector(MODEL, providers=("cpu",)).meta
    test = json.loads(RECORDED.read_text())["test"]
    alpha, sigma, *weights = _card(
        r"chosen \*\*alpha ([\d.]+), sigma ([\d.]+), weights \(BiGAN term, features, "
        r"statistics, bodies\) \(([\d., ]+)\)\*\*"
    )
    assert (alpha, sigma) == (meta.alpha, meta.sigma)
    assert weights == pytest.approx(meta.term_weights, abs=0.005)
    gamma, tau = _card(r"gamma flags [^(]*\(([\d.]+)\) and tau [^(]*\(([\d.]+)\)")
    assert (gamma, tau) == (round(meta.pixel_threshold, 3), round(meta.image_threshold, 3))
    table = _card(r"\n\| all \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|")
    keys = ("image_auroc", "pixel_auroc", "aupro")
    assert table == [round(test[k], 3) for k in keys]
    ablation = json.loads(RECORDED.read_text())["test_ablation"]
    for family, label in (("formula", "formula alone"), ("handmade", "hand-made terms alone")):
        row = _card(rf"\n\| {label} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|")
        assert row == [round(ablation[family][k], 3) for k in keys], family
    f1, iou = _card(r"Pixel F1 (\d\.\d+), IoU (\d\.\d+)")
    assert (f1, iou) == (round(test["pixel_f1"], 3), round(test["pixel_iou"], 3))
