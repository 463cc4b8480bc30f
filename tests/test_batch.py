"""`nanoinspect score` on this machine: the numbers equal the Detector's and the REST
service's, outputs land where documented, bad files become error rows, settings are
guarded, inputs are expanded as documented."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from models.detector import Detector
from models.errors import NanoinspectError
from models.images import load_image
from service.batch.driver import run
from service.batch.inputs import check_output_names, expand
from service.batch.job import Job
from tests.conftest import ready_client
from tests.test_batch_support import make_bad, make_inputs, same_results, table


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("batch") / "inputs")


@pytest.fixture(scope="module")
def detector(tiny_model) -> Detector:
    return Detector(tiny_model, providers=("cpu",), threads=1)


@pytest.fixture(scope="module")
def scored(tiny_model, inputs, tmp_path_factory) -> Path:
    """One local run with every output, batch size 3: full and partial batches, two sizes."""
    out = tmp_path_factory.mktemp("batch") / "out"
    job = Job(
        tiny_model,
        [str(inputs)],
        out,
        batch_size=3,
        workers=2,
        kinds=("masks", "overlays", "maps"),
        progress=False,
    )
    summary = run(job)
    assert (summary.total, summary.ok, summary.failed, summary.scored) == (10, 10, 0, 10)
    return out


def test_rows_equal_detector_scores(scored, inputs, detector):
    t = table(scored).to_pylist()
    assert [r["relative_path"] for r in t] == [
        "a/000.png",
        "a/001.png",
        "a/002.png",
        "a/003.png",
        "a/004.png",
        "a/005.png",
        "b/sub/000.png",
        "b/sub/001.png",
        "b/sub/002.png",
        "c16.tif",
    ]
    for row in t:
        pixels = load_image(row["path"]).pixels
        want = detector.score([pixels])[0]
        assert row["error"] is None and row["model_sha256"] == detector.sha256
        assert (row["height"], row["width"]) == pixels.shape
        assert row["score"] == pytest.approx(want.score, rel=1e-6, abs=1e-9)
        assert row["is_anomalous"] == want.is_anomalous
        assert row["reason"] == want.reason
        assert row["out_of_distribution"] == want.out_of_distribution
        assert (row["image_threshold"], row["pixel_threshold"], row["alpha"], row["sigma"]) == (
            want.image_threshold, want.pixel_threshold, want.alpha, want.sigma,
        )  # fmt: skip
        decoded = load_image(row["path"])
        assert json.loads(row["notes"]) == [*decoded.notes, *want.notes]
        assert row["anomalous_area_fraction"] == want.anomalous_area_fraction
        regions = json.loads(row["regions"])
        assert row["n_regions"] == len(regions) == len(want.regions)
        assert [tuple(g["bbox"]) for g in regions] == [g.bbox for g in want.regions]
        stem = row["relative_path"].rsplit(".", 1)[0]
        mask = np.asarray(Image.open(scored / "masks" / f"{stem}.png"))
        assert mask.dtype == bool and (mask == want.mask).all()
        smap = np.load(scored / "maps" / f"{stem}.npy")
        assert smap.dtype == np.float32
        np.testing.assert_allclose(smap, want.score_map, rtol=1e-5, atol=1e-6)
        overlay = Image.open(scored / "overlays" / f"{stem}.png")
        assert overlay.mode == "RGB" and overlay.size == (row["width"], row["height"])
    csv = (scored / "results.csv").read_text().splitlines()
    assert len(csv) == 11 and csv[0].startswith('"path","relative_path","width"')


def test_rows_equal_rest_service(scored, tiny_model):
    """The same files posted to /v1/score give the same numbers and the same mask."""

    with ready_client(tiny_model) as client:
        for row in table(scored).to_pylist():
            data = Path(row["path"]).read_bytes()
            body = client.post("/v1/score", files={"file": ("x.png", data)}).json()
            assert body["score"] == pytest.approx(row["score"], rel=1e-6, abs=1e-9)
            assert body["is_anomalous"] == row["is_anomalous"]
            assert body["reason"] == row["reason"] and body["notes"] == json.loads(row["notes"])
            assert body["image_threshold"] == row["image_threshold"]
            assert body["anomalous_area_fraction"] == pytest.approx(row["anomalous_area_fraction"])
            regions = json.loads(row["regions"])
            assert body["regions_total"] == row["n_regions"]
            assert [g["bbox"] for g in body["regions"]] == [g["bbox"] for g in regions]
            assert [g["area"] for g in body["regions"]] == [g["area"] for g in regions]
            rest_mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
            stem = row["relative_path"].rsplit(".", 1)[0]
            ours = np.asarray(Image.open(scored / "masks" / f"{stem}.png"))
            assert (rest_mask == ours).all()


def test_rerun_is_idempotent(scored, tiny_model, inputs):
    before = table(scored)
    job = Job(
        tiny_model, [str(inputs)], scored, kinds=("masks", "overlays", "maps"), progress=False
    )
    summary = run(job)
    assert (summary.skipped, summary.scored, summary.total) == (10, 0, 10)
    assert table(scored).equals(before)


def test_bad_files_become_error_rows(tiny_model, inputs, tmp_path):
    expected = make_bad(tmp_path / "bad", inputs / "a" / "001.png")
    out = tmp_path / "out"
    args = ["score", str(tiny_model), str(tmp_path / "bad"), "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--save-masks"])
    assert result.exit_code == 1, result.output
    assert "4 images: 1 ok, 3 failed" in result.output
    rows = {Path(r["path"]).name: r for r in table(out).to_pylist()}
    assert set(rows) == {*expected, "good.png"}
    for name, code in expected.items():
        assert rows[name]["error_code"] == code and name in rows[name]["error"]
        assert rows[name]["score"] is None
    assert rows["good.png"]["error"] is None and rows["good.png"]["score"] is not None
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good.png"]
    # the broken file repaired, --retry-errors scores it; the rest stays as it was
    (tmp_path / "bad" / "text.png").write_bytes((inputs / "a" / "002.png").read_bytes())
    result = CliRunner().invoke(app, [*args, "--save-masks", "--retry-errors"])
    assert result.exit_code == 1, result.output
    assert "4 images (1 done by an earlier run): 2 ok, 2 failed" in result.output
    assert table(out).num_rows == 4


def test_clean_run_exits_0_and_other_settings_are_refused(tiny_model, inputs, tmp_path):
    out = str(tmp_path / "out")
    args = ["score", str(tiny_model), str(inputs / "b"), "--out", out, "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "3 images: 3 ok, 0 failed" in first.output and "images/s" in first.output
    again = CliRunner().invoke(app, [*args, "--alpha", "0.3"])
    assert again.exit_code == 2 and "other settings" in again.output and "alpha" in again.output
    bad_alpha = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "o2"), "--alpha", "2"])
    assert bad_alpha.exit_code == 2 and "alpha" in bad_alpha.output


def test_process_decoders_give_the_same_rows(tiny_model, inputs, tmp_path, scored):
    job = Job(
        tiny_model,
        [str(inputs)],
        tmp_path,
        batch_size=3,
        workers=2,
        decoder="processes",
        progress=False,
    )
    run(job)
    assert same_results(table(tmp_path), table(scored))


def test_inputs_files_folders_globs(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(inputs)
    items = expand(["a", "b/**/*.png", "a/000.png", "c16.tif"], out=inputs / "a" / "out")
    rel = [i.relative for i in items]
    assert rel == [
        "000.png",
        "001.png",
        "002.png",
        "003.png",
        "004.png",
        "005.png",
        "sub/000.png",
        "sub/001.png",
        "sub/002.png",
        "c16.tif",
    ]
    assert all(Path(i.path).is_absolute() for i in items)
    check_output_names(items)
    with pytest.raises(NanoinspectError, match="both write outputs"):
        check_output_names(expand(["a", "b/sub"]))
    with pytest.raises(NanoinspectError, match="no such file"):
        expand(["missing.png"])
    with pytest.raises(NanoinspectError, match="matches no image"):
        expand(["*.jpeg"])
    (tmp_path / "o" / "masks").mkdir(parents=True)
    (tmp_path / "o" / "masks" / "x.png").write_bytes(b"")
    (tmp_path / "y.png").write_bytes(b"")
    assert [i.relative for i in expand([str(tmp_path)], out=tmp_path / "o")] == ["y.png"]


def test_ray_missing_says_how_to_install(tiny_model, inputs, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    result = CliRunner().invoke(
        app,
        [
            "score",
            str(tiny_model),
            str(inputs / "b"),
            "--out",
            str(tmp_path),
            "--engine",
            "ray",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2
    assert "pip install 'nanoinspect[ray]'" in result.output


def test_leftovers_of_a_killed_run_are_never_taken_as_done(tiny_model, inputs, tmp_path):
    """Half-written files (tmp names) are deleted; a part that cannot be read is moved aside
    and its inputs scored again, so the merged results still hold one row per input."""
    job = Job(tiny_model, [str(inputs / "b")], tmp_path, kinds=("masks",), progress=False)
    run(job)
    good = table(tmp_path)
    (tmp_path / "parts" / ".tmp-99-part-000001.parquet").write_bytes(b"PAR1 half")
    (tmp_path / "masks" / "sub" / ".tmp-99-000.png").write_bytes(b"\x89PNG half")
    (part,) = (tmp_path / "parts").glob("part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])  # what a failing disk could leave
    summary = run(job)
    assert (summary.skipped, summary.scored, summary.ok) == (0, 3, 3)
    assert same_results(table(tmp_path), good)
    assert not list(tmp_path.rglob(".tmp-*"))
    assert part.with_suffix(".corrupt").exists()
