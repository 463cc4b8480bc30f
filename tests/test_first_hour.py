"""Issue 17, a new user's first hour: no command corrupts a model or overwrites a file it
was not asked to, mistakes end as one line and exit 2, and the output is the project's own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


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
