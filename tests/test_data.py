"""Dataset discovery, hold-out split, masks and the deterministic patch sampler."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import DataError
from training.data import (
    PatchSampler,
    Sample,
    find_dataset,
    load_images,
    load_mask,
    split_holdout,
)


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def grey(value: int, shape=(32, 32)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def make_mvtec(root: Path) -> Path:
    for i in range(3):
        write(root / "train" / "good" / f"{i:03d}.png", grey(100 + i))
    write(root / "test" / "good" / "000.png", grey(100))
    for kind in ("bead", "film"):
        write(root / "test" / kind / "000.PNG", grey(200))
        mask = np.zeros((32, 32), np.uint8)
        mask[4:10, 4:12] = 255
        write(root / "ground_truth" / kind / "000_mask.png", mask)
    return root


def test_mvtec_layout(tmp_path):
    layout = find_dataset(make_mvtec(tmp_path / "ds"))
    assert [s.path.name for s in layout.train] == ["000.png", "001.png", "002.png"]
    assert all(s.kind == "good" and s.mask_path is None for s in layout.train)
    assert [(s.kind, s.mask_path is not None) for s in layout.test] == [
        ("bead", True),
        ("film", True),
        ("good", False),
    ]
    assert layout.has_masks
    mask = load_mask(layout.test[0].mask_path, (32, 32))
    assert mask.dtype == bool and mask.sum() == 6 * 8 and mask[5, 5]
    assert not load_mask(None, (32, 32)).any()
    assert load_mask(layout.test[0].mask_path, (28, 32), crop_bottom=4).shape == (28, 32)


def test_mvtec_mask_errors(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    (root / "ground_truth" / "film" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"mask missing for .*film.*000_mask.png"):
        find_dataset(root)
    with pytest.raises(DataError, match=r"mask .* is 32x32 but its image is 40x32"):
        load_mask(root / "ground_truth" / "bead" / "000_mask.png", (32, 40))


def test_plain_folder_recursive_sorted_case_insensitive(tmp_path):
    write(tmp_path / "b" / "x.TIF", grey(1))
    write(tmp_path / "a.JPG", grey(2))
    write(tmp_path / "c.bmp", grey(3))
    write(tmp_path / ".hidden" / "d.png", grey(4))
    (tmp_path / "notes.txt").write_text("not an image")
    layout = find_dataset(tmp_path)
    assert [s.path.relative_to(tmp_path).as_posix() for s in layout.train] == [
        "a.JPG",
        "b/x.TIF",
        "c.bmp",
    ]
    assert layout.test == [] and not layout.has_masks


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        find_dataset(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"not a folder"):
        find_dataset(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found .*MVTec AD.*\.png"):
        find_dataset(tmp_path / "empty")
    make_mvtec(tmp_path / "several" / "mats")
    with pytest.raises(DataError, match=r"several MVTec AD categories \(mats\)"):
        find_dataset(tmp_path / "several")
    write(tmp_path / "half" / "test" / "good" / "0.png", grey(1))
    with pytest.raises(DataError, match=r"no train/good"):
        find_dataset(tmp_path / "half")


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"broken.png") as err:
        load_images([Sample(bad, "good", None)])
    assert "\n" not in str(err.value)


def test_split_holdout_deterministic():
    samples = [Sample(Path(f"/d/train/good/{i:03d}.png"), "good", None) for i in range(20)]
    fit, held = split_holdout(samples, 0.2, seed=7)
    assert len(held) == 4 and len(fit) == 16 and set(fit).isdisjoint(held)
    assert (fit, held) == split_holdout(samples, 0.2, seed=7)
    assert held != split_holdout(samples, 0.2, seed=8)[1]
    moved = [Sample(Path("/elsewhere") / s.path.relative_to("/d"), "good", None) for s in samples]
    assert [s.path.name for s in split_holdout(moved, 0.2, 7)[1]] == [s.path.name for s in held]
    assert fit == [s for s in samples if s in fit]  # order kept
    two = samples[:2]
    assert [len(p) for p in split_holdout(two, 0.01, 0)] == [1, 1]
    assert [len(p) for p in split_holdout(samples[:1], 0.5, 0)] == [1, 0]
    assert split_holdout(samples, 0.0, 0) == (samples, [])
    with pytest.raises(DataError):
        split_holdout(samples, 1.0, 0)


def asymmetric(h=12, w=20) -> np.ndarray:
    return np.arange(h * w, dtype=np.float32).reshape(h, w) / (h * w)


def test_patch_sampler_deterministic_per_step_and_rank():
    images = [asymmetric(), asymmetric(30, 25)]
    a = PatchSampler(images, 8, seed=3)
    batch = a.batch(5, 16)
    assert batch.shape == (16, 1, 8, 8) and batch.dtype == torch.float32
    assert torch.equal(batch, PatchSampler(images, 8, seed=3).batch(5, 16))
    assert not torch.equal(batch, a.batch(6, 16))
    assert not torch.equal(batch, a.batch(5, 16, rank=1))
    assert not torch.equal(batch, PatchSampler(images, 8, seed=4).batch(5, 16))


def test_patch_sampler_augments_with_all_eight_symmetries():
    image = asymmetric(8, 8)  # patch == image: only the transform varies
    seen = set()
    sampler = PatchSampler([image], 8, seed=0)
    for step in range(10):
        for patch in sampler.batch(step, 16)[:, 0].numpy():
            seen.add(patch.tobytes())
    flips = (image, image[:, ::-1])
    variants = {np.ascontiguousarray(np.rot90(f, k)).tobytes() for f in flips for k in range(4)}
    assert seen == variants and len(variants) == 8


def test_patch_sampler_covers_positions():
    image = np.zeros((9, 9), np.float32)
    image[0, 0] = 1.0  # the corner pixel shows up only for the patch at (0, 0)
    batches = PatchSampler([image], 8, seed=1).batch(0, 200)
    hits = batches.amax(dim=(1, 2, 3))
    assert 0 < hits.sum() < 200


def test_patch_sampler_rejects_small_images():
    with pytest.raises(DataError, match=r"tiny.png is 20x12, smaller than the 16x16"):
        PatchSampler([asymmetric(40, 40), asymmetric()], 16, 0, names=["ok.png", "tiny.png"])


def test_load_images_with_crop(tmp_path):
    path = write(tmp_path / "a.png", grey(255, (40, 32)))
    (image,) = load_images([Sample(path, "good", None)], crop_bottom=8)
    assert image.shape == (32, 32) and image.dtype == np.float32 and image.max() == 1.0
