"""The quality benchmarks run end to end and read the PAN set correctly. No quality threshold
is asserted: `make quality` measures, it does not test. No test needs the real PAN set."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from models.errors import DataError
from training.ablation import read_meta
from training.data import find_dataset
from training.quality import app
from training.quality_real import build_layout, pan_root, source_of, split, spread

ROOT = Path(__file__).resolve().parents[1]
# (set, class) -> {source: copies}; odd names as in the real set
FAKE = {
    ("TrainingDataset", "NonDefective"): {f"pan{i}_0{i}": 3 for i in range(6)},
    ("TrainingDataset", "SlightlyDefective"): {"ppc3_3": 2, "pp32_02": 3},
    ("TrainingDataset", "Defective"): {"PPC9-": 2, "ppc9_011 (1)": 2},
    ("TestDataset", "NonDefective"): {"PP28_01": 2, "pan4_06": 3},
    ("TestDataset", "SlightlyDefective"): {"PPC6-03": 2},
    ("TestDataset", "Defective"): {"ppc10_1": 2, "PPC9_03": 1},
}


def test_matrix_smoke(tmp_path):
    """One domain at a tiny budget through the real CLI: every column, every number in [0, 1]."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "training.quality", "matrix", "--domains", "classic"]
    cmd += ["--size", "128x96", "--n-train", "6", "--n-test-good", "2"]
    cmd += ["--n-test-per-defect", "1", "--max-steps", "3", "--train-seed", "7", "--views", "2"]
    cmd += ["--work", str(tmp_path / "work"), "--out", str(out)]
    # a guard against a hang, under pytest's 600 s: it takes 3.5 min alone on 2 busy cores
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=560)
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads((out / "matrix.json").read_text())["domains"]["classic"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_f1"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["per_type"] and {"bead", "film"} <= set(row["per_type"])
    for per in row["per_type"].values():
        assert 0.0 <= per["pixel_auroc"] <= 1.0 and 0.0 <= per["aupro"] <= 1.0
    filled = (row["train_seconds"], row["images_per_s"])  # measured, not a timing bound
    assert all(v > 0 for v in filled)
    assert row["budget"] == "3 steps" and row["settings"]["size"] == "128x96"
    assert "| classic |" in (out / "matrix.md").read_text()
    # the training seed reaches train and the record
    run_config = json.loads((tmp_path / "work" / "classic" / "run" / "config.json").read_text())
    assert run_config["seed"] == 7 and row["settings"]["train_seed"] == 7
    assert "training seed 7, 2 views" in (out / "matrix.md").read_text()
    # and the views reach export: the model and its ablation's variants average 2 flips
    work = tmp_path / "work" / "classic"
    assert read_meta(work / "model.onnx").views == row["settings"]["views"] == 2
    assert {read_meta(p).views for p in (work / "ablation").glob("*.onnx")} == {2}
    # the same model scored by each family of terms alone, as its calibration chose them
    assert set(row["ablation"]) == {"formula", "d", "r", "handmade"}
    for figures in row["ablation"].values():
        assert all(0.0 <= figures[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "aupro"))
    assert "| formula | d | r | hand-made | shipped mix |" in (out / "matrix.md").read_text()
    # normals re-scored at every calibrated (alpha, sigma) override, and counted if they flip
    o = row["overrides"]
    assert o["normals"] == 2 and o["settings"] > 1 and 0 <= o["flipped"] <= 2
    assert f"{o['flipped']} of 2 flip ({o['settings']} settings)" in (out / "matrix.md").read_text()
    # no labelled image reaches training or export: the training set holds normals only
    assert not find_dataset(tmp_path / "work" / "classic" / "train").test


def test_unknown_domain_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["matrix", "--domains", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown domain 'nope'" in result.output


def _fake_pan(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for (part, cls), sources in FAKE.items():
        folder = root / part / cls
        folder.mkdir(parents=True)
        (folder / "read.me").write_text("not an image\n")
        for source, copies in sources.items():
            for k in range(copies):
                ext = ".TIF" if source == "PPC6-03" else ".tif"
                pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"translated_{source}_{k + 1}{ext}", "TIFF")
    return root


def _bare_git(folder: Path, dest: Path) -> Path:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(folder)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "fake PAN"]):
        subprocess.run([*git, *args], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(folder), str(dest)], check=True)
    return dest


@pytest.fixture(params=["folder", "bare-git"])
def pan(request, tmp_path) -> Path:
    folder = _fake_pan(tmp_path / "pan")
    if request.param == "folder":
        return folder
    return _bare_git(folder, tmp_path / "pan.git")


def _count(part: str, cls: str) -> int:
    return sum(FAKE[(part, cls)].values())


def test_source_of_real_names():
    assert source_of(Path("translated_pancnt2_01_40.tif")) == "pancnt2_01"
    assert source_of(Path("translated_PPC9-_13.tif")) == "PPC9-"
    assert source_of(Path("translated_ppc9_011 (1)_12.tif")) == "ppc9_011 (1)"
    assert source_of(Path("translated_PPC6-03_1.TIF")) == "PPC6-03"
    assert source_of(Path("other.tif")) == "other"


def test_test_dataset_layout(pan, tmp_path):
    work = tmp_path / "work"
    root = pan_root(pan, work)
    assert pan_root(pan, work) == root  # a bare mirror is extracted once
    layout = find_dataset(build_layout(split(root, False, None, None), work / "layout"))
    assert len(layout.train) == _count("TrainingDataset", "NonDefective")
    assert Counter(s.kind for s in layout.test) == {
        "good": _count("TestDataset", "NonDefective"),
        "slightly_defective": _count("TestDataset", "SlightlyDefective"),
        "defective": _count("TestDataset", "Defective"),
    }
    assert not layout.has_masks  # image labels only
    assert all(s.path.is_symlink() for s in layout.train + layout.test)  # nothing copied
    assert not find_dataset(work / "layout" / "train" / "good").test  # trained on: normals only


def test_dev_split_never_shares_a_source(pan, tmp_path):
    root = pan_root(pan, tmp_path / "work")
    s = split(root, True, None, None)
    trained = {source_of(p) for p in s.train}
    tested = {source_of(p) for paths in s.test.values() for p in paths}
    assert trained and s.test["good"] and not trained & tested
    assert {source_of(p) for p in s.test["good"]} == set(s.held_out)
    assert len(s.held_out) == 2  # a third of 6 sources
    normals = _count("TrainingDataset", "NonDefective")
    assert len(s.train) + len(s.test["good"]) == normals
    assert len(s.test["defective"]) == _count("TrainingDataset", "Defective")
    assert all("TrainingDataset" in str(p) for paths in s.test.values() for p in paths)


def test_n_train_spreads_over_sources(tmp_path):
    root = _fake_pan(tmp_path / "pan")
    picked = split(root, False, 7, 2).train
    per_source = [source_of(p) for p in picked]
    assert len(picked) == 7 and len(set(per_source)) == 6  # every source at least once
    assert spread(picked, 7) == picked == split(root, False, 7, 2).train  # deterministic
    assert len(split(root, False, None, 2).test["good"]) == 2


def test_not_a_pan_set(tmp_path):
    with pytest.raises(DataError, match="neither the PAN set's folder"):
        pan_root(tmp_path, tmp_path / "work")
