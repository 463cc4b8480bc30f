"""Find training and test images on disk and sample training patches from them.

Two layouts: MVTec AD (root/train/good, root/test/<type>/, root/ground_truth/<type>/
<name>_mask.png) and a plain folder (searched recursively) of normal images. Patches come
from `PatchSampler.batch(step, batch_size, rank)`, a pure function of (seed, step, rank), so
a resumed or distributed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.errors import DataError, ImageError
from models.images import IMAGE_EXTENSIONS, Decoded, load_image

NAMED_ERRORS = 5  # unreadable files named in the one-line error; the rest are counted
# subfolder names that say a folder of "normal" images holds test or defective ones: the
# MVTec AD parts, words for defects, and the synthetic defect types (training/synth.py)
NOT_NORMAL = ("test", "ground_truth", "defect", "anomal", "bad", "reject", "fault", "crack",
              "scratch", "bead", "film", "clump", "particle")  # fmt: skip


@dataclass(frozen=True)
class Sample:
    path: Path
    kind: str  # "good" or a defect type
    mask_path: Path | None  # None for good images


@dataclass(frozen=True)
class Layout:
    root: Path
    train: list[Sample]  # normal images (MVTec: train/good; plain folder: every image)
    test: list[Sample]  # MVTec test images, good and defective; empty for a plain folder

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.test)


def find_dataset(root: str | Path, *, need_train: bool = True) -> Layout:
    """Detect the layout under `root` and list its images in a deterministic order; a test
    set (need_train False: evaluation) may come without train/good. For training, normal
    images that cannot be decoded are left out with one warning (readable)."""
    layout = _find(Path(root), need_train)
    if not need_train:
        return layout
    return Layout(layout.root, readable(layout.train), layout.test)


def readable(samples: Sequence[Sample]) -> list[Sample]:
    """The samples that decode; the others are named (NAMED_ERRORS, then counted) in one
    warning on stderr, or in one DataError when none decodes. Training, export and
    calibration all list the normals through here, so they agree on the same set (and on
    its held-out split)."""
    ok, bad = [], []
    for s in samples:
        try:
            load_image(s.path)
            ok.append(s)
        except ImageError as e:  # its message starts with the path
            bad.append(str(e))
    if bad:
        more = len(bad) - NAMED_ERRORS
        rest = f"; and {more} more" if more > 0 else ""
        if not ok:
            raise DataError(f"no readable normal image: {'; '.join(bad[:NAMED_ERRORS])}{rest}")
        print(
            f"warning: skipped {len(bad)} unreadable normal image(s) of {len(samples)}: "
            f"{'; '.join(bad[:NAMED_ERRORS])}{rest}",
            file=sys.stderr,
        )
    return ok


def _find(root: Path, need_train: bool) -> Layout:
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder")
    if (root / "train" / "good").is_dir() or (not need_train and (root / "test").is_dir()):
        return _mvtec(root, need_train)
    for part in ("test", "ground_truth"):
        if (root / part).is_dir():
            raise DataError(
                f"{root} has {part}/ but no train/good/: not a complete MVTec AD layout"
            )
    categories = sorted(p.parent.parent.name for p in root.glob("*/train/good") if p.is_dir())
    if categories:
        raise DataError(
            f"{root} holds several MVTec AD categories ({', '.join(categories)}): pass one of them"
        )
    train = [Sample(p, "good", None) for p in _images(root, recursive=True)]
    if not train:
        exts = " ".join(IMAGE_EXTENSIONS)
        raise DataError(
            f"no images found in {root}: looked for the MVTec AD layout (train/good, "
            f"test/<type>, ground_truth/<type>) and for {exts} files in any subfolder"
        )
    return Layout(root, train, [])


def not_normal_folders(layout: Layout) -> list[str]:
    """Subfolders of a plain training folder whose names say they hold test or defective
    images (NOT_NORMAL), or that sit beside a good/ folder (a labelled test set): training
    would take them as normal, so the caller warns."""
    if layout.test or not layout.train:
        return []  # MVTec AD: train/good is the normal set by definition
    folders = sorted({str(s.path.parent.relative_to(layout.root)) for s in layout.train} - {"."})
    labelled = any(Path(f).name.lower() == "good" for f in folders)
    return [
        f
        for f in folders
        if (labelled and Path(f).name.lower() != "good")
        or any(word in part.lower() for part in Path(f).parts for word in NOT_NORMAL)
    ]


def split_holdout(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split into (fit, held_out). Membership depends on the seed and each file's parent
    folder and name only, so it survives moving the dataset; input order is kept."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"held-out fraction must be in [0, 1), not {fraction}")
    n = len(samples)
    n_held = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))

    def key(s: Sample) -> tuple[str, str]:
        tail = "/".join(s.path.parts[-2:])
        return hashlib.sha256(f"{seed}:{tail}".encode()).hexdigest(), str(s.path)

    held = set(sorted(range(n), key=lambda i: key(samples[i]))[:n_held])
    fit = [s for i, s in enumerate(samples) if i not in held]
    return fit, [s for i, s in enumerate(samples) if i in held]


def load_images(
    samples: Sequence[Sample], crop_bottom: float | int = 0, sample_bits: int = 16
) -> list[np.ndarray]:
    """Decode every sample to float32 (H, W) in [0, 1]; untagged 16-bit data is read as
    sample_bits deep (models.images). Unreadable files are one DataError naming them all."""
    return [d.pixels for d in _decode_all(samples, crop_bottom, sample_bits)]


def load_training_images(
    samples: Sequence[Sample], crop_bottom: float | int = 0
) -> tuple[list[np.ndarray], int]:
    """The training images and the sample depth a model records: the smallest depth the
    files declare for 16-bit data (12 for a 12-bit SEM detector), else 16. Files without a
    tag are read at that depth too, as scoring will read them."""
    decoded = _decode_all(samples, crop_bottom, 16)
    bits = min((d.bit_depth for d in decoded if 8 < d.bit_depth < 16), default=16)
    if bits != 16:
        decoded = _decode_all(samples, crop_bottom, bits)
    return [d.pixels for d in decoded], bits


def load_mask(
    path: Path | None, shape: tuple[int, int], crop_bottom: float | int = 0
) -> np.ndarray:
    """Ground-truth mask as bool (H, W); all False for a good image (path None)."""
    if path is None:
        return np.zeros(shape, dtype=bool)
    mask = _load(path, crop_bottom)
    if mask.shape != tuple(shape):
        raise DataError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}"
        )
    return mask > 0  # any non-zero value marks a defect: masks stored as 0/1 or 0/255


class PatchSampler:
    """Random training patches with the 8 flips/rotations of the square (fibre mats are
    isotropic). Patch positions are uniform over all positions of all images."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        patch_size: int,
        seed: int,
        names: Sequence[str] | None = None,
    ):
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, not {patch_size}")
        if not images:
            raise DataError("no training images to sample patches from")
        names = names if names is not None else [f"image {i}" for i in range(len(images))]
        self.images = [np.ascontiguousarray(im, dtype=np.float32) for im in images]
        self.patch_size = patch_size
        self.seed = seed
        for im, name in zip(self.images, names, strict=True):
            if im.ndim != 2:
                raise ValueError(f"{name}: expected a (H, W) array, got shape {im.shape}")
            h, w = im.shape
            if h < patch_size or w < patch_size:
                raise DataError(
                    f"{name} is {w}x{h}, smaller than the {patch_size}x{patch_size} training patch"
                )
        self._spans = np.array([[im.shape[0], im.shape[1]] for im in self.images]) - patch_size + 1
        positions = self._spans.prod(axis=1).astype(np.float64)
        self._weights = positions / positions.sum()

    def batch(self, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
        """The batch (B, 1, P, P) float32 for this step and rank; same inputs, same batch."""
        if step < 0 or rank < 0 or batch_size < 1:
            raise ValueError(
                f"need step, rank >= 0 and batch_size >= 1: {step}, {rank}, {batch_size}"
            )
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step, rank])))
        which = rng.choice(len(self.images), size=batch_size, p=self._weights)
        spans = self._spans[which]
        ys = (rng.random(batch_size) * spans[:, 0]).astype(np.int64)
        xs = (rng.random(batch_size) * spans[:, 1]).astype(np.int64)
        transforms = rng.integers(0, 8, size=batch_size)
        p = self.patch_size
        out = np.empty((batch_size, 1, p, p), dtype=np.float32)
        for i, (k, y, x, t) in enumerate(zip(which, ys, xs, transforms, strict=True)):
            patch = self.images[k][y : y + p, x : x + p]
            if t >= 4:
                patch = patch[:, ::-1]
            out[i, 0] = np.rot90(patch, t % 4)
        return torch.from_numpy(out)


def _images(folder: Path, recursive: bool) -> list[Path]:
    """Image files by extension (any case), hidden files and folders skipped, sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _mvtec(root: Path, need_train: bool = True) -> Layout:
    good = root / "train" / "good"
    train = [Sample(p, "good", None) for p in _images(good, False)] if good.is_dir() else []
    if not train and need_train:
        raise DataError(f"no images in {root / 'train' / 'good'}")
    test: list[Sample] = []
    test_dir = root / "test"
    kinds = sorted(d for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []
    labelled = (root / "ground_truth").is_dir()  # without it: image labels only, no masks
    for kind_dir in kinds:
        kind = kind_dir.name
        masks = {}
        if (root / "ground_truth" / kind).is_dir():
            masks = {p.name.lower(): p for p in _images(root / "ground_truth" / kind, False)}
        for path in _images(kind_dir, recursive=False):
            mask = None
            if kind != "good" and labelled:
                mask = masks.get(f"{path.stem}_mask.png".lower())
                if mask is None:
                    expected = Path("ground_truth", kind, f"{path.stem}_mask.png")
                    raise DataError(f"mask missing for {path}: expected {root / expected}")
            test.append(Sample(path, kind, mask))
    return Layout(root, train, test)


def _decode_all(samples: Sequence[Sample], crop_bottom: float | int, bits: int) -> list[Decoded]:
    """Every sample decoded; a data set with bad files fails once, naming all of them."""
    decoded, bad = [], []
    for s in samples:
        try:
            decoded.append(load_image(s.path, crop_bottom=crop_bottom, sample_bits=bits))
        except ImageError as e:  # its message starts with the path
            bad.append(str(e))
    if len(bad) == 1:
        raise DataError(f"unreadable image {bad[0]}")
    if bad:
        more = len(bad) - NAMED_ERRORS
        rest = f"; and {more} more" if more > 0 else ""
        raise DataError(f"{len(bad)} unreadable images: {'; '.join(bad[:NAMED_ERRORS])}{rest}")
    return decoded


def _load(path: Path, crop_bottom: float | int) -> np.ndarray:
    try:
        return load_image(path, crop_bottom=crop_bottom).pixels
    except ImageError as e:  # its message starts with the path
        raise DataError(f"unreadable image {e}") from None
