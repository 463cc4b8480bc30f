"""The label-free self-check: pasted defects, the choice of settings it makes, and the
normalisation of the terms it ranks checkpoints with."""

import numpy as np
import torch
from scipy import ndimage as ndi

from training import selfcheck
from training.synth import draw_normal


def _normals(n: int = 3, size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    return [draw_normal(np.random.default_rng(i), *size) for i in range(n)]


def test_pasted_defects_are_deterministic_and_change_only_their_region():
    normals = _normals()
    a, b = selfcheck.selfcheck_set(normals, seed=4), selfcheck.selfcheck_set(normals, seed=4)
    other = selfcheck.selfcheck_set(normals, seed=5)
    assert [s.kind for s in a] == ["good", "pasted", "pasted"] * len(normals)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    assert any(not np.array_equal(x.mask, y.mask) for x, y in zip(a, other, strict=True))
    for i, s in enumerate(a):
        base = normals[i // 3]
        if s.kind == "good":
            assert np.array_equal(s.image, base) and not s.mask.any()
            continue
        assert s.mask.any()
        changed = np.abs(s.image - base) > 1e-4
        # soft edges reach a few pixels past the mask, nothing further
        assert ndi.distance_transform_edt(~s.mask)[changed].max() <= 5


def test_pasted_defects_on_a_noisy_mat_are_as_noisy_as_the_mat():
    """A smooth pasted region on a noisy mat is found by its smoothness, which no real
    defect has there; the check's fills carry the image's own grain (before: 10 of these 23
    regions kept under a tenth of it)."""
    normals = [draw_normal(np.random.default_rng(i), 320, 240, "noisy") for i in range(6)]
    check = selfcheck.selfcheck_set(normals, seed=0, per_image=4)

    def grain(a: np.ndarray, where: np.ndarray) -> float:
        return float(np.median(np.abs(a - ndi.uniform_filter(a, 3, mode="reflect"))[where]))

    kept = []
    for i, s in enumerate(check):
        core = ndi.binary_erosion(s.mask, iterations=3)  # off the soft rims
        if s.kind == "pasted" and core.sum() >= 30:
            kept.append(grain(s.image, core) / grain(normals[i // 5], core))
    assert len(kept) >= 15
    assert sum(k < 0.3 for k in kept) <= 2 and np.median(kept) > 0.8


def test_scatters_are_many_small_bright_bodies_sized_by_the_fibre_scale():
    """A third of the pasted images carry a scatter: many separate bodies, brighter than
    what they cover, whose half-widths follow the fibre scale passed in."""
    normals = _normals(6, (320, 240))
    for scale in (2.0, 4.0):
        check = selfcheck.selfcheck_set(normals, seed=0, scale=scale, per_image=4)
        widths, scatters = [], 0
        for i, s in enumerate(check):
            labels, n = ndi.label(s.mask)
            if n < selfcheck.SCATTER[0] // 2:
                continue  # pasted shapes (1-3), not a scatter
            scatters += 1
            base = normals[i // 5]
            assert (s.image - base)[s.mask].mean() > 0.1
            depth = ndi.distance_transform_edt(s.mask)
            widths += list(ndi.maximum(depth, labels, np.arange(1, n + 1)) / scale)
        assert 3 <= scatters <= 14, scatters
        assert 1.0 < np.median(widths) < selfcheck.BODY[1] + 1


def test_choose_weights_the_term_that_carries_the_defects():
    """Only t sees the pasted regions, d, r and f are noise: the choice leans on t and the
    figures say it separates them; with the signal in f instead, it leans on f."""
    rng = np.random.default_rng(0)
    check = selfcheck.selfcheck_set(_normals(), seed=1)
    masks = [s.mask for s in check]

    def terms(signal: str) -> list[selfcheck.Terms]:
        out = []
        for m in masks:
            t = {k: torch.from_numpy(rng.random(m.shape, np.float32)) for k in selfcheck.TERMS}
            t[signal] = t[signal] + 3 * torch.from_numpy(m)
            out.append(t)
        return out

    for signal, index in (("t", 2), ("f", 1), ("b", 3)):
        best, tried = selfcheck.choose(terms(signal), masks, sigmas=(1.0,))
        assert best.weights[index] >= 0.5, (signal, best)
        assert best.pixel_auroc > 0.95 and best.passed
        assert best.quality == max(c.quality for c in tried)


def test_normalised_terms_average_one_on_the_normals():
    """term_means is what the graph's scales divide out: after it, every term of the
    normal maps averages 1, and the others are divided by the same numbers."""
    rng = np.random.default_rng(0)
    normal = [
        {
            k: torch.from_numpy(rng.random((8, 6), np.float32)) * (i + 2)
            for i, k in enumerate(selfcheck.TERMS)
        }
        for _ in range(3)
    ]
    other = [{k: torch.ones(4, 4) for k in selfcheck.TERMS}]
    means = selfcheck.term_means(normal)
    for t in selfcheck.normalised(normal, means):
        assert set(t) == set(selfcheck.TERMS)
    for k in selfcheck.TERMS:
        mean = np.mean([t[k].double().mean() for t in selfcheck.normalised(normal, means)])
        assert abs(mean - 1) < 1e-6, k
        assert torch.allclose(selfcheck.normalised(other, means)[0][k], 1 / torch.tensor(means[k]))
