"""Magnification: the fibre-scale estimate, zooming to a training scale, and the Detector
scoring an image taken at another magnification on the model's own scale."""

import numpy as np
import onnx
from scipy import ndimage as ndi

from models.detector import Detector
from models.scale import (
    SHADING_SIGMA,
    TOLERANCE,
    WORKING,
    _shading,
    fibre_scale,
    resample,
    resample_factor,
    to_scale,
    working_scale,
)
from training.calibrate import write_artifact
from training.synth import draw_normal


def test_the_shading_is_ndimages_gaussian_at_every_size():
    """The FFT shading removal equals the reflect-mode Gaussian it replaced, on images larger
    and smaller than its kernel's radius (128 px), so no measured scale moved."""
    rng = np.random.default_rng(0)
    for shape in [(384, 384), (352, 384), (40, 300), (8, 8)]:
        img = rng.random(shape)
        want = ndi.gaussian_filter(img, SHADING_SIGMA, mode="reflect")
        assert np.abs(_shading(img) - want).max() < 1e-12


def _mat(domain: str = "classic", seed: int = 0, size=(512, 384)) -> np.ndarray:
    return draw_normal(np.random.default_rng(seed), *size, domain=domain)


def test_scale_grows_with_fibre_width_and_magnification():
    fine, coarse = fibre_scale(_mat("fine")), fibre_scale(_mat("coarse"))
    assert coarse > 2 * fine
    img = _mat()
    assert fibre_scale(ndi.zoom(img, 2.0, order=1)) > 1.4 * fibre_scale(img)
    # another mat of the same look measures about the same
    assert abs(fibre_scale(_mat(seed=1)) / fibre_scale(img) - 1) < 0.15
    assert fibre_scale(np.full((64, 64), 0.5, np.float32)) == 0.0
    # white noise is no mat: no scale, so the Detector never zooms it (4x would be 16x pixels)
    assert fibre_scale(np.random.default_rng(0).random((352, 512), dtype=np.float32)) == 0.0


def test_to_scale_undoes_a_change_of_magnification():
    img = _mat(size=(768, 512))
    target = fibre_scale(img)
    half = ndi.zoom(img, 0.5, order=1)
    back, zoom = to_scale(half, target)
    assert 1.6 < zoom < 2.5
    assert back.shape == (round(half.shape[0] * zoom), round(half.shape[1] * zoom))
    assert 1 / TOLERANCE < fibre_scale(back) / target < TOLERANCE
    same, one = to_scale(img, target)
    assert one == 1.0 and same is img


def test_resample_factor_leaves_close_or_unknown_scales_alone():
    assert resample_factor(4.0, 4.2) == 1.0
    assert resample_factor(0.0, 4.0) == resample_factor(4.0, 0.0) == 1.0
    assert resample_factor(8.0, 4.0) == 2.0
    assert resample_factor(100.0, 1.0) == 4.0  # clipped


def test_detector_scores_other_magnifications_at_the_training_scale(tiny_model, tmp_path):
    """An artifact that records a fibre scale zooms an input taken at half that scale,
    and returns the map, mask and regions at the input's own size."""
    img = _mat(size=(256, 192))
    half = ndi.zoom(img, 0.5, order=1).astype(np.float32)
    model = onnx.load(tiny_model)
    meta = Detector(tiny_model, providers=("cpu",)).meta.with_(fibre_scale=fibre_scale(img))
    path = tmp_path / "scaled.onnx"
    write_artifact(model, meta, path)
    det = Detector(path, providers=("cpu",))
    plain = Detector(tiny_model, providers=("cpu",))
    (r,) = det.score([half])
    assert 1.6 < r.zoom < 2.5
    assert r.score_map.shape == r.mask.shape == half.shape
    (same,) = det.score([img])
    assert same.zoom == 1.0
    np.testing.assert_allclose(same.score_map, plain.score([img])[0].score_map, atol=1e-5)


def test_working_scale_is_the_median_within_its_bounds():
    """A mat of 2 px fibres is zoomed in and one of 15 px zoomed out; between, the median."""
    assert working_scale([1.8, 2.0, 2.2]) == WORKING[0]
    assert working_scale([14.0, 15.0, 30.0]) == WORKING[1]
    assert working_scale([3.5, 4.0, 9.0]) == 4.0


def test_a_zoomed_image_is_writable():
    """Training hands zoomed images to torch.from_numpy, which warns on a read-only array."""
    image = np.random.default_rng(0).random((40, 60), dtype=np.float32)
    out = resample(image, (50, 75))
    assert out.shape == (50, 75) and out.dtype == np.float32 and out.flags.writeable
