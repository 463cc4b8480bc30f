"""Synthetic SEM data: determinism, exact masks, the MVTec layout on disk, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from models.errors import DataError
from training import synth

KINDS = [None, *synth.DEFECTS]


def draw(seed: int, kind: str | None, w: int = 96, h: int = 80) -> tuple[np.ndarray, np.ndarray]:
    return synth.draw_sample(np.random.default_rng(seed), w, h, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_image_other_seed_other_image(kind):
    a, ma = draw(3, kind)
    b, mb = draw(3, kind)
    c, _ = draw(4, kind)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert np.abs(a - c).mean() > 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_range_shape_on_odd_size(kind):
    img, mask = draw(5, kind, w=97, h=61)
    assert img.shape == mask.shape == (61, 97)
    assert img.dtype == np.float32 and mask.dtype == bool
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert mask.any() == (kind is not None)


def test_normal_is_a_mat_not_noise():
    img = synth.draw_normal(np.random.default_rng(0), 128, 128)
    bright = img > 0.3  # fibres; the background sits near 0.1
    assert 0.15 < bright.mean() < 0.7
    assert img[~bright].mean() < 0.2 < img[bright].mean()


@pytest.mark.parametrize("kind", synth.DEFECTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_is_exactly_where_the_defect_changed_the_image(kind, seed):
    # same rng state with and without the defect: same mat, same noise, so the difference
    # is the defect alone
    good, empty = draw(seed, None, 128, 128)
    bad, mask = draw(seed, kind, 128, 128)
    assert not empty.any()
    diff = np.abs(bad - good)
    changed = diff > 0.08
    near = ndi.binary_dilation(mask, iterations=2)  # anti-aliased rims, slight blur
    assert changed.sum() > 20
    assert changed[near].sum() >= 0.97 * changed.sum(), "defect pixels outside the mask"
    assert (diff[mask] > 0.03).mean() > 0.6, "mask pixels the defect did not change"
    assert 30 <= mask.sum() <= 0.15 * mask.size, "not a speck, not most of the image"


def test_bad_arguments_to_draw():
    with pytest.raises(DataError):
        draw(0, "scratch")
    with pytest.raises(DataError):
        draw(0, None, w=8, h=64)


def _write(out: Path, **kw) -> dict[str, int]:
    args = dict(n_train=3, n_test_good=2, n_test_per_defect=2, size=(48, 40), seed=1)
    return synth.write_dataset(out, **{**args, **kw, "progress": False})


def test_write_dataset_layout(tmp_path):
    counts = _write(tmp_path / "ds")
    root = tmp_path / "ds"
    assert counts == {"train/good": 3, "test/good": 2} | {f"test/{d}": 2 for d in synth.DEFECTS}
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *synth.DEFECTS])
    assert not (root / "ground_truth" / "good").exists()
    for d in synth.DEFECTS:
        for img_path in sorted((root / "test" / d).iterdir()):
            img = Image.open(img_path)
            mask = Image.open(root / "ground_truth" / d / f"{img_path.stem}_mask.png")
            assert img.mode == mask.mode == "L" and img.size == mask.size == (48, 40)
            values = np.unique(np.asarray(mask))
            assert set(values) <= {0, 255} and 255 in values
    meta = json.loads((root / "synth.json").read_text())
    assert meta["seed"] == 1 and meta["size"] == [48, 40] and meta["counts"] == counts
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"], "temporary files left behind"


def test_write_dataset_is_deterministic_and_indices_independent(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b")
    _write(tmp_path / "c", n_train=1, n_test_good=0)
    name = "test/bead/001.png"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    a, b = (np.asarray(Image.open(tmp_path / "a" / f"train/good/00{i}.png")) for i in (0, 1))
    assert not np.array_equal(a, b)


def test_rewrite_replaces_previous_output(tmp_path):
    _write(tmp_path / "ds")
    _write(tmp_path / "ds", n_train=1, n_test_per_defect=1)
    assert [p.name for p in (tmp_path / "ds" / "train" / "good").iterdir()] == ["000.png"]
    assert len(list((tmp_path / "ds" / "ground_truth" / "bead").iterdir())) == 1


def test_banner_strip_is_dark_with_marks_and_masked_out(tmp_path):
    _write(tmp_path / "ds", size=(160, 120), banner=True)
    img = np.asarray(Image.open(tmp_path / "ds/test/particle/000.png"))
    mask = np.asarray(Image.open(tmp_path / "ds/ground_truth/particle/000_mask.png"))
    strip = img[-8:]  # 7 % of 120 px
    assert (strip < 40).mean() > 0.7 and (strip > 200).any()
    assert not mask[-8:].any() and mask.any()


@pytest.mark.parametrize(
    "kw",
    [
        {"size": (31, 64)},
        {"n_train": -1},
        {"defects": ("bead", "scratch")},
    ],
)
def test_write_dataset_refuses_bad_arguments(tmp_path, kw):
    with pytest.raises(DataError):
        _write(tmp_path / "ds", **kw)
    assert not (tmp_path / "ds").exists()


def test_write_dataset_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.tif").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    for out in (tmp_path / "mine", tmp_path / "file"):
        with pytest.raises(DataError):
            _write(out)
    assert (tmp_path / "mine" / "precious.tif").read_bytes() == b"x"
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty")
    assert (tmp_path / "empty" / "synth.json").exists()


def test_contact_sheet(tmp_path):
    _write(tmp_path / "ds", n_test_per_defect=3)
    out = synth.contact_sheet(tmp_path / "ds", tmp_path / "sheet.png", per_row=4, tile=64)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (5 * 64, 4 * 64, 3)  # good + one row per defect
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 80) & (sheet[..., 2] < 80)
    assert not red[:64].any() and all(red[64 * r : 64 * (r + 1)].any() for r in range(1, 5))
    with pytest.raises(DataError):
        synth.contact_sheet(tmp_path / "nothing", tmp_path / "x.png")
