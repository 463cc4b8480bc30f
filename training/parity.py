"""Parity of an exported graph: onnxruntime against the torch module it was exported from,
and an fp16 graph against its fp32 original, within the tolerances export promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.artifact import OUTPUTS
from models.detector import Detector
from models.errors import NanoinspectError
from models.scoring import AnomalyScorer

PARITY_SIZES = ((256, 256), (1024, 704))  # (width, height)
PARITY_ALPHA, PARITY_SIGMA = 0.5, 2.0  # mid-range settings: both d and r count, the blur acts


class ParityError(NanoinspectError):
    code = "parity"


def fit_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A real image brought to (height, width) by reflection and cropping."""
    reps = (-(-height // image.shape[0]), -(-width // image.shape[1]))
    tiled = np.concatenate([np.concatenate([image, image[::-1]])] * reps[0])
    tiled = np.concatenate([np.concatenate([tiled, tiled[:, ::-1]], 1)] * reps[1], 1)
    return np.ascontiguousarray(tiled[:height, :width])


def _compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, failure: str) -> float:
    """max |got - want|; raises ParityError, its message starting with failure, when they
    differ beyond rtol and atol."""
    gap = float(np.abs(got - want).max())
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        raise ParityError(f"{failure} = {gap:.3g} (tolerance rtol {rtol}, atol {atol})")
    return gap


def check_parity(
    scorer: AnomalyScorer, path: Path, images: list[np.ndarray], *, rtol: float, atol: float
) -> float:
    """Largest |onnxruntime - torch| over all outputs, on two of images brought to each of
    PARITY_SIZES; raises above the tolerances."""
    det = Detector(path, providers=("cpu",))
    worst = 0.0
    for width, height in PARITY_SIZES:
        batch = np.stack([fit_to(img, width, height) for img in images[:2]])[:, None]
        got = det.run(batch, PARITY_ALPHA, PARITY_SIGMA)
        with torch.no_grad():
            settings = torch.tensor(PARITY_ALPHA), torch.tensor(PARITY_SIGMA)
            want = scorer(torch.from_numpy(batch), *settings)
        for name, t in zip(OUTPUTS, want, strict=True):
            failure = f"export parity failed on {name} at {width}x{height}: max |ort - torch|"
            worst = max(worst, _compare(got[name], t.numpy(), rtol, atol, failure))
    return worst


def check_fp16(fp32: Path, fp16: Path, *, rtol: float, atol: float) -> float:
    """Largest |fp16 - fp32| over all outputs of the two artifacts on onnxruntime's CPU, at
    the fp32 one's settings on a random batch; raises above the tolerances."""
    ref, half = Detector(fp32, providers=("cpu",)), Detector(fp16, providers=("cpu",))
    batch = np.random.default_rng(0).random((2, 1, 96, 128), dtype=np.float32)
    want = ref.run(batch, ref.meta.alpha, ref.meta.sigma)
    got = half.run(batch, ref.meta.alpha, ref.meta.sigma)
    failures = {k: f"fp16 parity failed on {k}: max |fp16 - fp32|" for k in OUTPUTS}
    return max(_compare(got[k], want[k], rtol, atol, failures[k]) for k in OUTPUTS)
