"""The answer an operator reads: one score that decides, the same on every surface; regions
that say whether they count; a reason for every verdict; overrides of alpha and sigma that
draw the map at them, masked by a calibrated gamma, and leave the verdict the model's."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.decision import EDGE, image_decision
from models.detector import Detector, _reason
from models.images import load_image
from models.regions import interior, segment
from models.scale import resample, to_scale
from tests.conftest import ready_client


@pytest.fixture(scope="module")
def detector(tiny_model) -> Detector:
    return Detector(tiny_model, providers=("cpu",), threads=1)


def test_score_is_the_decision_of_the_map_at_the_working_scale(detector, synth_data):
    """An image at twice the training magnification is zoomed to the working scale: the
    score is the decision of the graph's map there, not of the map resampled back."""
    image = load_image(synth_data / "test" / "bead" / "000.png").pixels
    big = resample(image, (2 * image.shape[0], 2 * image.shape[1]))
    (r,) = detector.score([big])
    work, zoom = to_scale(big, detector.meta.fibre_scale)
    assert zoom == r.zoom != 1.0
    m = detector.meta
    graph_map = detector.run(work[None, None], m.alpha, m.sigma, ("score_map",))["score_map"]
    assert r.score == image_decision(graph_map[0, 0])
    assert r.score_map.shape == big.shape  # the map the user sees is at the image's size
    assert any(n.startswith("scored zoomed") for n in r.notes)


def test_every_surface_gives_the_same_score_and_verdict(tiny_model, synth_data, tmp_path):
    """For every test image: REST JSON, the overlay's headers, the batch row and evaluate's
    scores.csv carry the same score and verdict (the web page shows the JSON's: test_web)."""
    from service.batch.driver import run
    from service.batch.job import Job
    from training.evaluate import evaluate

    paths = sorted((synth_data / "test").glob("*/*.png"))
    run(
        Job(model=tiny_model, inputs=[str(synth_data / "test")], out=tmp_path / "b", progress=False)
    )
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "b" / "results.parquet").to_pylist()}
    evaluate(tiny_model, synth_data, tmp_path / "e")
    with (tmp_path / "e" / "scores.csv").open() as f:
        evaluated = {str(synth_data / r["image"]): r for r in csv.DictReader(f)}
    assert len(evaluated) == len(paths)
    with ready_client(tiny_model) as client:
        for path in paths:
            files = {"file": (path.name, path.read_bytes())}
            body = client.post("/v1/score?mask_format=none", files=files).json()
            overlay = client.post("/v1/score/overlay", files=files)
            row, ev = rows[str(path.resolve())], evaluated[str(path)]
            score = pytest.approx(body["score"], rel=1e-5)  # one onnxruntime, other batches
            assert float(overlay.headers["x-score"]) == score and row["score"] == score
            assert float(ev["score"]) == score
            verdict = body["is_anomalous"]
            assert overlay.headers["x-is-anomalous"] == str(verdict).lower()
            assert row["is_anomalous"] == verdict and ev["is_anomalous"] == str(verdict)
            assert float(overlay.headers["x-image-threshold"]) == body["image_threshold"]
            assert overlay.headers["x-reason"] == body["reason"] == row["reason"]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "image_auroc_formula" not in metrics and "decision_score" not in rows[str(path)]


def test_regions_say_whether_they_count():
    m = np.zeros((200, 300), np.float32)
    m[2:10, 100:110] = 5.0  # wholly in the edge band
    m[EDGE - 4 : EDGE + 4, 200:210] = 4.0  # reaches inside
    m[100:110, 150:160] = 3.0  # inside
    _, regions = segment(m, 1.0, 1, interior(m.shape, (EDGE, EDGE)))
    assert [(g.peak_score, g.counts) for g in regions] == [(5.0, False), (4.0, True), (3.0, True)]
    assert image_decision(m) == 4.0  # what counts decides


def test_the_reason_says_why():
    _, edge_only = segment(np.pad(np.ones((4, 4), np.float32), ((0, 60), (0, 60))), 0.5, 1,
                           interior((64, 64), (16, 16)))  # fmt: skip
    assert _reason(1.0, 2.0, None, edge_only) == (
        "normal: score 1 not above the image threshold 2; 1 region only in the edge band, "
        "which does not count"
    )
    assert _reason(3.0, 2.0, None, []) == "score 3 above the image threshold 2"
    assert _reason(0.5, 2.0, "blank frame", []) == "out of distribution: blank frame"


def test_every_verdict_has_its_reason(detector, synth_data):
    for path in sorted((synth_data / "test").glob("*/*.png")):
        (r,) = detector.score([load_image(path).pixels])
        assert r.reason.startswith("normal: ") != r.is_anomalous, r.reason
        assert f"{r.score:.4g}" in r.reason or r.out_of_distribution
        if r.regions and not any(g.counts for g in r.regions) and not r.is_anomalous:
            assert "only in the edge band" in r.reason


def test_overrides_keep_every_decision(detector, synth_data):
    """At every calibrated (alpha, sigma), and off the grid, the map is drawn at the
    override and masked by the table's gamma, while no test image changes its score or
    decision: the verdict is the model's, and the override's regions say they do not count."""
    m = detector.meta
    paths = sorted((synth_data / "test").glob("*/*.png"))
    images = [load_image(p).pixels for p in paths]
    base = detector.score(images)
    settings = m.calibrated_settings()
    assert len(settings) == 1 + 25 - 1  # the model's own pair, then the 5 x 5 grid
    drawn = 0
    for alpha, sigma in [*settings[1:], (0.3, 3.0)]:
        results = detector.score(images, alpha=alpha, sigma=sigma)
        assert [(r.score, r.is_anomalous) for r in results] == [
            (r.score, r.is_anomalous) for r in base
        ], (alpha, sigma)
        gamma = m.pixel_threshold_for(alpha, sigma)
        assert results[0].pixel_threshold == (m.pixel_threshold if gamma is None else gamma)
        assert results[0].image_threshold == m.image_threshold
        assert all(not g.counts for r in results for g in r.regions)
        assert all("the score and verdict are the model's" in r.notes[-1] for r in results)
        for r in results:
            assert "at the model's alpha" in r.reason or r.out_of_distribution, r.reason
            assert "does not decide" in r.reason or r.is_anomalous or not r.regions, r.reason
        pairs = zip(results, base, strict=True)
        drawn += any(not np.array_equal(r.score_map, b.score_map) for r, b in pairs)
    assert drawn > 0  # the overrides draw other maps (alpha alone may not: w_0 may be 0)


def test_an_image_threshold_decides_on_the_overridden_map(detector, synth_data):
    image = load_image(synth_data / "test" / "good" / "000.png").pixels
    (r,) = detector.score([image], alpha=0.3)
    assert any(n.startswith("pixel threshold not calibrated for alpha 0.3, ") for n in r.notes)
    assert r.image_threshold == detector.meta.image_threshold
    (r,) = detector.score([image], alpha=0.3, image_threshold=1.0, pixel_threshold=1.0)
    assert not [n for n in r.notes if "calibrated" in n or "verdict" in n]  # the caller's
    (work, _) = to_scale(image, detector.meta.fibre_scale)
    own = detector._maps([work], 0.3, detector.meta.sigma)[0][0]
    assert r.score == image_decision(own) and r.is_anomalous == (r.score > 1.0)


def test_rest_override_uses_the_calibrated_gamma(tiny_model, synth_data):
    path = synth_data / "test" / "good" / "000.png"
    with ready_client(tiny_model) as client:
        model = client.get("/v1/model").json()
        plain, body = (
            client.post(
                f"/v1/score?{q}mask_format=none", files={"file": (path.name, path.read_bytes())}
            ).json()
            for q in ("", "alpha=0&sigma=4&")
        )
    meta = Detector(tiny_model, providers=("cpu",)).meta
    assert body["pixel_threshold"] == meta.pixel_threshold_for(0.0, 4.0)
    assert (body["image_threshold"], body["score"]) == (meta.image_threshold, plain["score"])
    assert body["is_anomalous"] == plain["is_anomalous"]
    assert [0.0, 4.0] in model["calibrated_settings"] and len(body["notes"]) == 1
    assert model["views"] == meta.views == 1


def test_an_artifact_without_the_new_tables_still_loads(tiny_model, tmp_path):
    """A model calibrated before the normals' model and the threshold table existed: it
    loads, has no image-level model, and an override says its pixel threshold is off."""
    import onnx

    proto = onnx.load(tiny_model)
    props = {p.key: p.value for p in proto.metadata_props}
    del props["normal_model"], props["thresholds"]
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, tmp_path / "old.onnx")
    det = Detector(tmp_path / "old.onnx", providers=("cpu",), threads=1)
    assert det.normals is None and det.meta.thresholds == []
    assert det.meta.calibrated_settings() == [(det.meta.alpha, det.meta.sigma)]
    image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    other = 0.0 if det.meta.alpha != 0.0 else 1.0  # an alpha the model was not calibrated at
    (r,) = det.score([image], alpha=other)
    note = f"pixel threshold not calibrated for alpha {other:g}, sigma "
    assert any(n.startswith(note) for n in r.notes), r.notes


def test_blank_frames_are_never_normal(detector):
    for value in (0.0, 0.5, 1.0):
        (r,) = detector.score([np.full((96, 96), value, np.float32)])
        assert r.is_anomalous and r.out_of_distribution.startswith("blank frame"), r


def test_out_of_distribution_answers_are_counted(tiny_model):
    import re

    from PIL import Image

    from tests.test_service_support import encode

    def counted(client) -> float:
        text = client.get("/metrics").text
        return float(re.search(r"^nanoinspect_out_of_distribution_total (\S+)$", text, re.M)[1])

    black = encode(Image.new("L", (96, 96), 0))
    with ready_client(tiny_model) as client:
        before = counted(client)
        body = client.post("/v1/score", files={"file": ("black.png", black)}).json()
        assert body["is_anomalous"] and body["out_of_distribution"].startswith("blank frame: black")
        assert counted(client) == before + 1


def test_batch_job_takes_and_records_the_thresholds(tiny_model, synth_data, tmp_path):
    from models.errors import NanoinspectError
    from service.batch.driver import run
    from service.batch.job import Job, validate

    goods = str(synth_data / "test" / "good")
    job = Job(model=tiny_model, inputs=[goods], out=tmp_path / "b", progress=False,
              image_threshold=0.0, pixel_threshold=1e6, alpha=0.3)  # fmt: skip
    run(job)
    rows = pq.read_table(tmp_path / "b" / "results.parquet").to_pylist()
    assert rows and all(r["is_anomalous"] and r["image_threshold"] == 0.0 for r in rows)
    assert all(r["n_regions"] == 0 and r["alpha"] == 0.3 for r in rows)
    assert all("not calibrated" not in r["notes"] for r in rows)  # both were given
    manifest = json.loads((tmp_path / "b" / "run.json").read_text())
    assert (manifest["image_threshold"], manifest["pixel_threshold"]) == (0.0, 1e6)
    assert manifest["model_name"] == Detector(tiny_model, providers=("cpu",)).name
    with pytest.raises(NanoinspectError, match="--image-threshold must be a finite number"):
        validate(Job(model=tiny_model, inputs=[goods], out=tmp_path / "c", image_threshold=-1))
