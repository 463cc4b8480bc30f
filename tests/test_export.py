"""The exported artifact: checker, metadata, parity, calibration, the torch-free Detector
and its refusals, tiling, and the evaluation report."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.artifact import FORMAT_VERSION, INPUTS, OUTPUTS
from models.detector import Detector, tile_spans
from models.errors import ArtifactError
from models.scale import to_scale
from models.scoring import skipped_terms
from training.synth import draw_sample


def test_artifact_is_one_checked_file_with_full_metadata(tiny_model):
    model = onnx.load(tiny_model)
    onnx.checker.check_model(model, full_check=True)
    assert not list(tiny_model.parent.glob("*.data")), "weights live inside the one file"
    props = {p.key: p.value for p in model.metadata_props}
    for key in (
        "format_version",
        "alpha",
        "sigma",
        "pixel_threshold",
        "image_threshold",
        "min_area",
        "stride",
        "halo",
        "r_scale",
        "d_scale",
        "f_scale",
        "t_scale",
        "b_scale",
        "term_weights",
        "model_config",
        "train_config",
        "data_digest",
        "code_version",
        "created",
        "calibration",
    ):
        assert props.get(key), key
    assert int(props["format_version"]) == FORMAT_VERSION
    assert [i.name for i in model.graph.input] == list(INPUTS)
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3])), "N, H, W are dynamic"


def test_calibration_makes_normal_terms_average_one(tiny_model, synth_data):
    from training.data import find_dataset, load_images

    det = Detector(tiny_model, providers=("cpu",))
    assert det.meta.calibration["method"] == "best_f1"  # synth_data has labelled defects
    normals = load_images(find_dataset(synth_data).train)
    means = {k: [] for k in "drftb"}
    for img in normals:
        out = det.run(img[None, None], 1.0, det.meta.sigma)
        means["d"].append(out["d_map"].mean())
        means["r"].append(np.abs(out["reconstruction"][0, 0] - img).mean() / det.meta.r_scale)
        means["f"].append(out["f_map"].mean())
        means["t"].append(out["t_map"].mean())
        means["b"].append(out["b_map"].mean())
    # scales come from the held-out part; over all normal images the means stay near 1, and
    # a term calibration gave no weight is not in the graph (zeros)
    left_out = skipped_terms(det.meta.term_weights)
    for k, v in means.items():
        assert np.mean(v) == 0 if k in left_out else 0.3 < np.mean(v) < 3.0, k


def _calibration_images(model, run, data=None):
    """The normal and labelled images calibrate saw, at the model's working scale."""
    from training.calibrate import zoomed
    from training.export import calibration_set
    from training.refit import load_checkpoint

    meta, info = Detector(model, providers=("cpu",)).meta, load_checkpoint(run)["meta"]
    holdout = info["holdout"] if data is None or data.resolve() == Path(info["data"]) else None
    args = (info["train"]["crop_bottom"], holdout, info.get("sample_bits", 16))
    normals, labelled = calibration_set(Path(info["data"]) if data is None else data, *args)
    normals = [to_scale(im, meta.fibre_scale)[0] for im in normals]
    return normals, [zoomed(s, meta.fibre_scale) for s in labelled]


def _graph(det, images, alpha, sigma):
    """The served graph's pixels (one array) and image scores on images at alpha, sigma."""
    outs = [det.run(im[None, None], alpha, sigma, ("score_map", "score")) for im in images]
    pixels = np.concatenate([o["score_map"].ravel() for o in outs])
    return pixels, np.array([o["score"][0] for o in outs])


@pytest.fixture(scope="module")
def fpr_model(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported on its own held-out normals alone: thresholds at target FPRs."""
    from training.export import export

    out = tmp_path_factory.mktemp("fpr") / "fpr.onnx"
    export(tiny_run, out)
    return out


def _prediction_bound(scores: np.ndarray, fpr: float) -> float:
    """The upper (1 - fpr) prediction bound of a normal fit, written out from its textbook
    form: mean + t quantile * sample std * sqrt(1 + 1/n)."""
    from scipy.stats import t

    n = len(scores)
    return scores.mean() + t(df=n - 1).isf(fpr) * scores.std(ddof=1) * np.sqrt((n + 1) / n)


def test_thresholds_are_the_fpr_bounds_of_the_graphs_own_outputs(fpr_model, tiny_run):
    """gamma is the target-FPR quantile of the served graph's score_map on the held-out
    normals and tau the prediction bound of its score; every override row keeps the own
    pair's share of normal pixels above gamma, on the graph's outputs at that row (and no
    tau: the verdict stays the model's)."""
    from models.decision import IMAGE_FPR, PIXEL_FPR

    det = Detector(fpr_model, providers=("cpu",))
    meta = det.meta
    assert meta.calibration["method"] == "target_fpr"
    normals, _ = _calibration_images(fpr_model, tiny_run)
    assert len(normals) >= 2
    pixels, scores = _graph(det, normals, meta.alpha, meta.sigma)
    gamma = np.quantile(pixels, 1 - PIXEL_FPR)
    assert meta.pixel_threshold == pytest.approx(gamma, rel=1e-5)
    assert meta.image_threshold == pytest.approx(_prediction_bound(scores, IMAGE_FPR), rel=1e-5)
    share = max(np.mean(pixels > gamma), 1 / pixels.size)
    assert len(meta.thresholds) == 25
    for alpha, sigma, gamma_at in meta.thresholds:
        pixels, _ = _graph(det, normals, alpha, sigma)
        assert gamma_at == pytest.approx(np.quantile(pixels, 1 - share), rel=1e-4, abs=1e-6)


def test_labelled_thresholds_are_the_best_f1_of_the_graphs_own_outputs(
    tiny_model, tiny_run, synth_data
):
    from training.metrics import best_f1_threshold

    det = Detector(tiny_model, providers=("cpu",))
    assert det.meta.calibration["method"] == "best_f1"
    _, labelled = _calibration_images(tiny_model, tiny_run, synth_data)
    pixels, scores = _graph(det, [s.image for s in labelled], det.meta.alpha, det.meta.sigma)
    masks = np.concatenate([s.mask.ravel() for s in labelled])
    gamma, _ = best_f1_threshold(masks, pixels)
    tau, _ = best_f1_threshold(np.array([s.kind != "good" for s in labelled]), scores)
    assert det.meta.pixel_threshold == pytest.approx(gamma, rel=1e-5)
    assert det.meta.image_threshold == pytest.approx(tau, rel=1e-5)


def test_detector_scores_odd_sizes_and_batches_consistently(tiny_model):
    det = Detector(tiny_model, providers=("cpu",))
    rng = np.random.default_rng(0)
    sizes = ((97, 61), (97, 61), (40, 130))
    images = [draw_sample(rng, w, h, None)[0] for w, h in sizes] + [
        rng.random((12, 40), np.float32)
    ]
    together = det.score(images)
    alone = [det.score([img])[0] for img in images]
    for a, b, img in zip(together, alone, images, strict=True):
        assert a.score_map.shape == img.shape and a.mask.shape == img.shape
        assert abs(a.score - b.score) < 1e-5
        np.testing.assert_allclose(a.score_map, b.score_map, atol=1e-5)


def test_score_threshold_and_regions_follow_the_settings(tiny_model):
    det = Detector(tiny_model, providers=("cpu",))
    image, _ = draw_sample(np.random.default_rng(1), 96, 96, "clump")
    low = det.score([image], pixel_threshold=-1.0, image_threshold=-1.0, min_area=1)[0]
    assert low.mask.all() and low.is_anomalous and len(low.regions) == 1
    assert low.regions[0].bbox == (0, 0, 96, 96) and low.regions[0].area == 96 * 96
    high = det.score([image], pixel_threshold=1e9, image_threshold=1e9)[0]
    assert not high.mask.any() and not high.is_anomalous and high.regions == []
    with pytest.raises(Exception, match="alpha"):
        det.score([image], alpha=1.5)


def test_tile_spans_cover_each_pixel_once():
    for length in (100, 1536, 1537, 4096, 5000):
        spans = tile_spans(length, 1536, 64)
        cores = np.zeros(length, int)
        for start, stop, c0, c1 in spans:
            assert stop - start == min(length, 1536) and start <= c0 < c1 <= stop
            assert c0 == 0 or c0 - start >= 64
            assert c1 == length or stop - c1 >= 64
            cores[c0:c1] += 1
        assert (cores == 1).all(), length


def test_tiled_scoring_matches_one_pass(tiny_model):
    """The model's halo covers what a pixel's score looks at (the bodies' line opening, the
    widest statistics, the networks, the blur): the stitched map is the one-pass map."""
    whole = Detector(tiny_model, providers=("cpu",))
    halo = whole.meta.halo
    tiled = Detector(tiny_model, providers=("cpu",), tile=4 * halo)
    image, _ = draw_sample(np.random.default_rng(2), 6 * halo, 5 * halo, "particle")
    a, b = whole.score([image], alpha=0.5)[0], tiled.score([image], alpha=0.5)[0]
    assert a.tiles == 1 and b.tiles >= 4  # two or more tiles each way
    assert abs(a.score - b.score) / a.score < 1e-3
    np.testing.assert_allclose(b.score_map, a.score_map, rtol=1e-3, atol=1e-3 * a.score_map.std())
    with pytest.raises(ArtifactError, match="tiles must be at least"):
        Detector(tiny_model, providers=("cpu",), tile=4 * halo - 8)


def test_bad_artifacts_are_refused_by_name(tiny_model, tmp_path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    bare = tmp_path / "bare.onnx"
    model = onnx.load(tiny_model)
    del model.metadata_props[:]
    onnx.save(model, bare)
    cases = {
        not_onnx: "not a loadable",
        truncated: "not a loadable",
        bare: "not a nanoinspect",
        tmp_path / "missing.onnx": "not found",
    }
    for path, needle in cases.items():
        with pytest.raises(ArtifactError, match=needle) as info:
            Detector(path, providers=("cpu",))
        assert str(path) in str(info.value)
    with pytest.raises(ArtifactError, match="GPU is required"):
        Detector(tiny_model, require_gpu=True)


def test_runtime_imports_without_torch(tiny_model):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from models.detector import Detector\n"
        f"d = Detector({str(tiny_model)!r}, providers=('cpu',))\n"
        "print(d.score([np.full((64, 64), 0.3, np.float32)])[0].score)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout) > 0


def test_evaluate_writes_metrics_report_and_maps(tiny_model, synth_data, tmp_path):
    from training.evaluate import evaluate

    maps = tmp_path / "maps"
    result = evaluate(tiny_model, synth_data, tmp_path / "report", save_maps=maps)
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    from training.card import KEYS

    for key in KEYS:
        assert 0.0 <= saved[key] <= 1.0, key
        for kind in ("bead", "film", "clump", "particle"):
            assert 0.0 <= saved["per_type"][kind][key] <= 1.0, (kind, key)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "curves.png" in html and (tmp_path / "report" / "curves.png").stat().st_size > 1000
    arr = np.load(maps / "bead" / "000.npy")
    assert arr.dtype == np.float32 and arr.shape == (96, 96)


def test_evaluate_without_masks_gives_image_metrics_and_a_warning(
    tiny_model, synth_data, tmp_path, capsys
):
    import shutil

    from training.evaluate import evaluate

    data = tmp_path / "nomask"
    shutil.copytree(synth_data, data)
    shutil.rmtree(data / "ground_truth")
    result = evaluate(tiny_model, data, tmp_path / "report")
    assert "warning: " in (err := capsys.readouterr().err) and "no ground-truth masks" in err
    assert 0.0 <= result["image_auroc"] <= 1.0
    assert "pixel_auroc" not in result and "aupro" not in result


def test_a_run_older_than_the_statistics_is_refitted_as_training_fitted(tiny_run):
    """A checkpoint whose normal fit has fewer statistics than the graph now computes (saved
    by an older version) still exports: the Gaussians are refitted on the images training
    fitted them on, which gives back what a current checkpoint stores."""
    import torch

    from models.config import ModelConfig
    from models.networks import BiGAN
    from models.scoring import AnomalyScorer
    from training.refit import load_checkpoint, load_normal_fit

    ckpt = load_checkpoint(tiny_run)
    info, stored = ckpt["meta"], ckpt["normal_fit"]
    bigan = BiGAN(ModelConfig.from_dict(ckpt["model_config"]))
    bigan.load_state_dict(ckpt["model"])
    scorer = AnomalyScorer(bigan, fibre_scale=info.get("fibre_scale", 0.0)).eval()
    old = {**stored, "stats.weight": torch.zeros(15, 15, 1, 1), "stats.bias": torch.zeros(15)}
    load_normal_fit(scorer, {**ckpt, "normal_fit": old})
    # training ran the networks channels-last, the refit contiguous: the last-bit noise of
    # their convolutions reaches the Cholesky factor of a precision a little amplified
    for name, value in stored.items():
        torch.testing.assert_close(scorer.state_dict()[name], value, rtol=1e-2, atol=2e-2)
