"""A new user's first hour: no command corrupts a model or overwrites a file it
was not asked to, mistakes end as one line and exit 2, and the output is the project's own."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from models.detector import Detector
from models.images import load_image
from tests.conftest import ready_client

TINY = """[model]
channels = 8
latent_channels = 8
disc_channels = 8

[train]
patch_size = 32
batch_size = 2
checkpoint_every = 1000
holdout_fraction = 0.3
"""


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _tiny_config(folder: Path) -> Path:
    path = folder / "tiny.toml"
    path.write_text(TINY)
    return path


def _one_line_error(result, needle: str, code: int = 2) -> None:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sigma", "20"], "--sigma must lie in [0, 8]"),
        (["--sigma", "-3"], "--sigma must lie in [0, 8]"),
        (["--min-area", "-5"], "--min-area must be >= 0"),
        (["--alpha", "2"], "--alpha must lie in [0, 1]"),
        (["--pixel-fpr", "0"], "--pixel-fpr must lie in (0, 1)"),
    ],
)
def test_calibrate_refuses_bad_values_without_touching_the_model(
    tiny_model, synth_data, tmp_path, args, needle
):
    model = tmp_path / "m.onnx"
    shutil.copyfile(tiny_model, model)
    before = model.read_bytes()
    _one_line_error(_run("calibrate", model, synth_data, *args), needle)
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_calibrate_in_place_keeps_the_old_file_when_it_fails_midway(
    tiny_model, synth_data, tmp_path, monkeypatch
):
    """A failure after the term scales are set (the first of calibrate's two writes) must
    not leave a half-calibrated model behind (fault injected into the self-check)."""
    from training import selfcheck
    from training.calibrate import calibrate_in_place
    from training.export import calibration_set

    model = tmp_path / "m.onnx"
    shutil.copyfile(tiny_model, model)
    before = model.read_bytes()
    normals, labelled = calibration_set(synth_data, 0.0, None)

    def broken(*_a, **_k):
        raise RuntimeError("injected")

    monkeypatch.setattr(selfcheck, "choose", broken)
    with pytest.raises(RuntimeError, match="injected"):
        calibrate_in_place(model, normals, labelled)
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_calibrate_prints_what_it_chose_and_wrote(tiny_model, synth_data, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copyfile(tiny_model, model)
    result = _run("calibrate", model, synth_data, "--sigma", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"wrote {model}"
    assert "sigma 4" in lines[1] and len(lines[1]) < 300
    assert Path(model).read_bytes() != tiny_model.read_bytes()


# 12-bit SEM data in 16-bit TIFFs


def _twelve_bit_tiff(png: Path, out: Path, tags: dict | None = None) -> Path:
    """The 8-bit image as a 12-bit detector writes it: values 0..4095 in a 16-bit TIFF."""
    grey = np.asarray(Image.open(png).convert("L"), np.float64)
    values = np.round(grey / 255 * 4095).astype(np.uint16)
    Image.fromarray(values).save(out, "TIFF", tiffinfo=tags or {})
    return out


@pytest.mark.parametrize("tag", [281, 341])  # MaxSampleValue, SMaxSampleValue
def test_twelve_bit_tiff_is_scaled_by_its_declared_depth(synth_data, tmp_path, tag):
    png = synth_data / "test" / "bead" / "000.png"
    tiff = _twelve_bit_tiff(png, tmp_path / "bead.tif", {tag: 4095})
    decoded = load_image(tiff)
    assert decoded.bit_depth == 12 and decoded.notes == ()
    np.testing.assert_allclose(decoded.pixels, load_image(png).pixels, atol=1 / 4095)


def test_untagged_sixteen_bit_says_which_scaling_and_follows_the_model(synth_data, tmp_path):
    png = synth_data / "test" / "bead" / "000.png"
    tiff = _twelve_bit_tiff(png, tmp_path / "bead.tif")
    default = load_image(tiff)  # a 16-bit model: all values below 4096 read as 12-bit
    assert default.bit_depth == 12
    assert default.notes == (
        "no bit-depth tag and every value below 4096: read as 12-bit (/ 4095), as SEM "
        "detectors write",
    )
    np.testing.assert_allclose(default.pixels, load_image(png).pixels, atol=1 / 4095)
    values = np.asarray(Image.open(tiff)).copy()
    values[0, 0] = 4096  # one value beyond 12 bits: the data is 16-bit
    Image.fromarray(values).save(tmp_path / "wide.tif")
    as16 = load_image(tmp_path / "wide.tif")
    assert as16.bit_depth == 16 and as16.pixels[1:].max() < 0.07
    assert as16.notes == ("no bit-depth tag: values scaled as 16-bit (/ 65535)",)
    as12 = load_image(tiff, sample_bits=12)
    assert as12.notes == ("no bit-depth tag: values scaled as 12-bit (/ 4095)",)
    np.testing.assert_allclose(as12.pixels, load_image(png).pixels, atol=1 / 4095)
    full = np.full((16, 16), 60000, np.uint16)  # data beyond 12 bits is not squeezed
    Image.fromarray(full).save(tmp_path / "full.tif")
    assert load_image(tmp_path / "full.tif", sample_bits=12).pixels.max() == pytest.approx(
        60000 / 65535
    )


def _with_sample_bits(model: Path, out: Path, bits: int | None) -> Path:
    """A copy of the model whose metadata records another training depth (None: an artifact
    from before the field existed)."""
    proto = onnx.load(model)
    props = {p.key: p.value for p in proto.metadata_props}
    props.pop("sample_bits")
    if bits is not None:
        props["sample_bits"] = str(bits)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, out)
    return out


def test_scoring_reads_untagged_data_as_the_model_was_trained(tiny_model, synth_data, tmp_path):
    """A model trained on 12-bit data scores an untagged 12-bit TIFF like the same image in
    8 bits: in the batch job and over REST. An artifact without the field still loads."""

    from models.artifact import ArtifactMeta

    old = _with_sample_bits(tiny_model, tmp_path / "old.onnx", None)
    assert Detector(old, providers=("cpu",)).meta.sample_bits == 16
    assert ArtifactMeta.__dataclass_fields__["sample_bits"].default == 16
    model = _with_sample_bits(tiny_model, tmp_path / "m12.onnx", 12)
    images = tmp_path / "in"
    images.mkdir()
    png = synth_data / "test" / "bead" / "000.png"
    shutil.copyfile(png, images / "a.png")
    _twelve_bit_tiff(png, images / "b.tif")
    result = _run("score", model, images, "--out", tmp_path / "scores", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "scores" / "results.parquet").to_pylist()
    assert rows[0]["score"] == pytest.approx(rows[1]["score"], rel=1e-2)

    with ready_client(model) as client:
        answers = [
            client.post(
                "/v1/score?mask_format=none", files={"file": (p.name, p.read_bytes())}
            ).json()
            for p in (images / "a.png", images / "b.tif")
        ]
    assert answers[1]["bit_depth"] == 12
    assert answers[1]["notes"] == ["no bit-depth tag: values scaled as 12-bit (/ 4095)"]
    assert answers[0]["score"] == pytest.approx(answers[1]["score"], rel=1e-2)


def test_training_records_the_depth_of_its_images(synth_data, tmp_path):
    data = tmp_path / "twelve"
    (data / "train" / "good").mkdir(parents=True)
    for png in sorted((synth_data / "train" / "good").glob("*.png"))[:4]:
        _twelve_bit_tiff(png, data / "train" / "good" / f"{png.stem}.tif", {281: 4095})
    run = tmp_path / "run"
    result = _run(
        "train", data, "--out", run, "--max-steps", "1", "--device", "cpu", "--config",
        _tiny_config(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["sample_bits"] == 12


# training: interrupted, resumed, refused


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_training_writes_a_checkpoint_first(synth_data, tmp_path, signum):
    run = tmp_path / "run"
    args = ("train", synth_data, "--out", run, "--device", "cpu", "--max-steps", "100000")
    proc = _cli(*args, "--config", _tiny_config(tmp_path), "--max-minutes", "5")
    for _ in range(1200):  # config.json is written just before the first step
        if (run / "config.json").exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"error: {name}: stopped with checkpoint") and "--resume" in last
    assert f"{name}: saving the weights after this step" in err  # said at once
    (ckpt,) = (run / "checkpoints").glob("step_*.pt")
    assert str(ckpt) in last
    step = int(ckpt.stem.split("_")[1])
    assert 0 < step < 1000
    import torch

    from models.config import ModelConfig
    from models.networks import BiGAN

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["self_check"] is None and saved["interrupted"]  # not ranked before saving
    BiGAN(ModelConfig.from_dict(saved["model_config"])).load_state_dict(saved["model"])
    assert not (run / "best.pt").exists()  # an unranked checkpoint is never the best
    if signum == signal.SIGTERM:  # export fits what the stop left out
        exported = _run("export", run, "--out", tmp_path / "m.onnx", "--calibrate", synth_data)
        assert exported.exit_code == 0, exported.output
    resumed = _run(*args[:-1], step + 1, "--resume")
    assert resumed.exit_code == 0, resumed.output


@pytest.fixture(scope="module")
def short_run(synth_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("short")
    run = folder / "run"
    result = _run(
        "train", synth_data, "--out", run, "--max-steps", "2", "--device", "cpu", "--config",
        _tiny_config(folder),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


def test_resume_refuses_other_data_and_settings(short_run, synth_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(synth_data, other)
    Image.new("L", (96, 96), 128).save(other / "train" / "good" / "extra.png")
    saved = (short_run / "config.json").read_text()
    base = ("train", "--out", short_run, "--max-steps", "3", "--device", "cpu", "--resume")
    cfg = tmp_path / "lr.toml"
    cfg.write_text(TINY.replace("[train]\n", "[train]\nlr = 0.001\n"))
    cases = {
        "data": ([other], "is not the data this run was trained on"),
        "seed": ([synth_data, "--seed", "5"], "seed 0 -> 5"),
        "config": ([synth_data, "--config", cfg], "train.lr 0.0002 -> 0.001"),
    }
    for args, needle in cases.values():
        _one_line_error(_run(base[0], *args, *base[1:]), needle)
        assert (short_run / "config.json").read_text() == saved
    assert len(list((short_run / "checkpoints").glob("*.pt"))) == 1


def test_resume_past_max_steps_says_there_is_nothing_to_do(short_run, synth_data):
    args = ("train", synth_data, "--out", short_run, "--max-steps", "1", "--device", "cpu")
    result = _run(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "is at step 2, --max-steps is 1: nothing to train" in result.stdout
    assert "1step" not in result.output and "2step" not in result.output


@pytest.mark.parametrize(
    "budget", [["--max-steps", "0"], ["--max-steps", "-5"], ["--max-minutes", "0"],
               ["--max-minutes", "-1"]],
)  # fmt: skip
def test_train_refuses_a_budget_that_trains_nothing(synth_data, tmp_path, budget):
    result = _run("train", synth_data, "--out", tmp_path / "run", "--device", "cpu", *budget)
    _one_line_error(result, "the budget must be positive")
    assert not (tmp_path / "run").exists()


def test_training_on_a_test_folder_names_its_defect_subfolders(synth_data, tmp_path):
    result = _run(
        "train", synth_data / "test", "--out", tmp_path / "run", "--max-steps", "1",
        "--device", "cpu", "--config", _tiny_config(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = next(x for x in result.stderr.splitlines() if x.startswith("warning:"))
    kinds = sorted(p.name for p in (synth_data / "test").iterdir() if p.name != "good")
    assert warning.endswith(f"trained on as normal: {', '.join(kinds)}"), warning
    plain = _run(
        "train", synth_data / "train" / "good", "--out", tmp_path / "run2", "--max-steps", "1",
        "--device", "cpu", "--config", _tiny_config(tmp_path),
    )  # fmt: skip
    assert plain.exit_code == 0 and "look like test" not in plain.stderr


def test_train_refuses_a_file_as_its_run_directory(synth_data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _one_line_error(_run("train", synth_data, "--out", afile), "is a file, not a run directory")
    assert afile.read_text() == "mine"


def test_training_skips_unreadable_images_naming_them(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data / "train" / "good", data)
    for name in ("x.png", "y.png", "z.png"):
        (data / name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = _run(
        "train", data, "--out", tmp_path / "run", "--max-steps", "1", "--device", "cpu",
        "--config", _tiny_config(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    n = len(list(data.iterdir()))
    warning = next(x for x in result.stderr.splitlines() if "unreadable" in x)
    assert warning.startswith(f"warning: skipped 3 unreadable normal image(s) of {n}: ")
    assert all(name in warning for name in ("x.png", "y.png", "z.png"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert not {"x.png", "y.png", "z.png"} & {Path(h).name for h in config["holdout"]}
    for png in data.glob("0*.png"):
        png.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _one_line_error(_run("train", data, "--out", tmp_path / "run2"), "no readable normal image")


# export, evaluate, score: outputs checked before the work


def test_export_never_overwrites_unless_forced_and_checks_before_working(
    tiny_run, tiny_model, tmp_path
):
    existing = tmp_path / "m.onnx"
    existing.write_text("someone's model")
    folder = tmp_path / "outdir"
    folder.mkdir()
    for args, needle in (
        (["--out", existing], "exists: pass --force"),
        (["--out", folder], "is a folder"),
        (["--out", tmp_path / "new.onnx", "--alpha", "2"], "--alpha must lie in [0, 1]"),
        (["--out", tmp_path / "new.onnx", "--views", "3"], "--views must be 1, 2 or 4"),
    ):
        began = time.monotonic()
        _one_line_error(_run("export", tiny_run, *args), needle)
        assert time.monotonic() - began < 10, "refused before the export work"
    assert existing.read_text() == "someone's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "outdir"]
    assert not any(folder.iterdir())


def test_export_with_force_overwrites_and_keeps_stdout_for_the_result(tiny_run, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("old")
    proc = _cli("export", tiny_run, "--out", out, "--force")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0].startswith(f"wrote {out}: parity passed") and lines[1].startswith("chosen on")
    assert "within 0.0001 + 0.001 |torch| of torch (largest |ort - torch| " in lines[0]
    assert len(lines) == 2, stdout
    assert "[torch.onnx]" not in stdout + stderr and "Warning" not in stderr, stderr
    meta = Detector(out, providers=("cpu",)).meta
    assert meta.sample_bits == 16
    # the run held out 3 normal images: too few for the self-check to mean anything
    check = meta.calibration["check"]
    assert check["meaningful"] is False and check["passed"] is None
    assert "note: the self-check ran on 3 held-out normal images, fewer than 5" in stderr


def test_evaluate_refuses_a_file_as_out(tiny_model, synth_data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _one_line_error(_run("evaluate", tiny_model, synth_data, "--out", afile), "is a file")
    assert afile.read_text() == "mine"


def test_evaluate_on_good_images_only_writes_valid_json_and_says_why(
    tiny_model, synth_data, tmp_path
):
    data = tmp_path / "goodonly"
    shutil.copytree(synth_data / "test" / "good", data / "test" / "good")  # no train/good
    result = _run("evaluate", tiny_model, data, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout.strip().splitlines()[0])
    assert shown["image_auroc"] is None
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["image_auroc"] is None and saved["images"] == 4
    assert "only good test images" in result.stderr


def test_score_refuses_a_file_as_out(tiny_model, synth_data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    result = _run("score", tiny_model, synth_data / "test" / "good", "--out", afile)
    _one_line_error(result, "is a file, not a results folder")
    assert afile.read_text() == "mine"


def test_score_counts_the_failures_it_does_not_print(tiny_model, synth_data, tmp_path, monkeypatch):
    sem = tmp_path / "sem"
    shutil.copytree(synth_data / "test" / "good", sem)
    for i in range(7):
        (sem / f"broken{i}.png").write_bytes(b"not an image")
    monkeypatch.chdir(tmp_path)
    result = _run("score", tiny_model, "sem", "--out", "scores", "--no-progress")
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 6 and failed[-1] == "failed: ... and 2 more (see the error column)"
    assert failed[0].startswith("failed: sem/broken0.png: not a supported image")
    assert "11 images: 4 ok, 7 failed" in result.stdout


def test_one_pixel_limit_for_the_batch_job_and_the_server(tiny_model, tmp_path):
    """A 64 Mpx image (a real one: 1-bit PNG, a few kB) and a header claiming 100000x100000
    are refused by the batch job in the words the server uses, at the server's limit."""
    from models.images import MAX_PIXELS
    from service.settings import Settings
    from tests.test_images import png_claiming

    assert Settings().max_pixels == MAX_PIXELS
    sem = tmp_path / "sem"
    sem.mkdir()
    Image.new("1", (8000, 8000)).save(sem / "huge.png")
    (sem / "claims.png").write_bytes(png_claiming(100_000, 100_000))
    result = _run("score", tiny_model, sem, "--out", tmp_path / "scores", "--no-progress")
    assert result.exit_code == 1
    rows = pq.read_table(tmp_path / "scores" / "results.parquet").to_pylist()
    assert [r["error_code"] for r in rows] == ["too_large", "too_large"]
    limit = f"exceeds the limit of {MAX_PIXELS:,}"
    assert rows[1]["error"].endswith(f"huge.png: 8000x8000 = 64,000,000 pixels {limit}")
    assert "10,000,000,000 pixels exceeds the limit of" in rows[0]["error"]
    assert "decompression bomb" not in rows[0]["error"]


# noise


def test_score_on_a_cpu_machine_prints_only_its_own_lines(tiny_model, synth_data, tmp_path):
    """Real processes: no onnxruntime [E:]/[W:] lines about CUDA libraries, one line of ours
    when CUDA was asked for, none when NANOINSPECT_PROVIDERS says cpu."""
    import os

    from models.providers import unusable

    if unusable("CUDAExecutionProvider") is None:
        pytest.skip("CUDA loads here: nothing to be quiet about")
    args = ("score", tiny_model, synth_data / "test" / "good", "--no-progress", "--out")
    proc = _cli(*args, tmp_path / "a")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert err.strip().splitlines() == ["no usable GPU: scoring runs on CPUExecutionProvider"]
    env = {**os.environ, "NANOINSPECT_PROVIDERS": "cpu"}
    proc = _cli(*args, tmp_path / "b", env=env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and err == "", err


def test_serve_fail_on_bad_model_is_one_line_and_exit_3(tmp_path):
    proc = _cli("serve", tmp_path / "missing.onnx", "--fail-on-bad-model", "--log-format", "text")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert err.strip().splitlines() == [f"error: {tmp_path / 'missing.onnx'}: model file not found"]
    assert "Traceback" not in out + err


def test_help_shows_whole_option_names_at_80_columns():
    import os

    result = CliRunner().invoke(app, ["serve", "--help"], env={**os.environ, "COLUMNS": "80"})
    assert result.exit_code == 0
    assert "--fail-on-bad-model" in result.stdout and "…" not in result.stdout


def test_serve_with_workers_leaves_no_metrics_folder(tiny_model, tmp_path):
    import os

    from tests.test_service_support import serve

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    with serve([str(tiny_model), "--workers", "2"], tmp_path / "log.txt", env) as s:
        assert len(list(scratch.glob("nanoinspect-metrics-*"))) == 1
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(60)
    assert not list(scratch.glob("nanoinspect-metrics-*")), os.listdir(scratch)


def test_a_tiny_image_is_scored_with_a_note(tiny_model):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((12, 40), 120, np.uint8)).save(buf, "PNG")
    with ready_client(tiny_model) as client:
        body = client.post("/v1/score", files={"file": ("small.png", buf.getvalue())}).json()
    assert body["width"] == 40 and body["height"] == 12
    assert body["notes"] == [
        "40x12 is under the 24 px a side the model needs for context: scored mirrored out to "
        "it, so the result is less reliable"
    ]


def test_training_warns_when_it_holds_out_too_few_images(synth_data, tmp_path):
    data = tmp_path / "two"
    data.mkdir()
    for png in sorted((synth_data / "train" / "good").glob("*.png"))[:2]:
        shutil.copyfile(png, data / png.name)
    result = _run(
        "train", data, "--out", tmp_path / "run", "--max-steps", "1", "--device", "cpu",
        "--config", _tiny_config(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: only 1 normal image(s) held out" in result.output
    (data / sorted(p.name for p in data.iterdir())[0]).unlink()
    result = _run("train", data, "--out", tmp_path / "run1", "--device", "cpu")
    _one_line_error(result, "training needs at least 2 normal images")
