"""Each setting, limit and file-writing rule has one definition that every surface
uses: the atomic replacement of files, the image file names, the artifact's code version."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.atomic import TMP_PREFIX, replacing
from service.batch.inputs import expand
from tests.conftest import ROOT
from training.data import find_dataset

PACKAGES = ("models", "training", "service", "cli")  # the product's code
MOVES = {"training/synth.py"}  # swaps a whole generated folder into place, not a file


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    a, b = tmp_path / "new" / "a.txt", tmp_path / "new" / "b.txt"
    with replacing(a, b) as (ta, tb):
        ta.write_text("a1")
        tb.write_text("b1")
        assert not a.exists()  # nothing under the final names while writing
    assert (a.read_text(), b.read_text()) == ("a1", "b1")
    with pytest.raises(OSError), replacing(a, b) as (ta, tb):
        ta.write_text("a2")
        raise OSError(28, "No space left on device")
    assert (a.read_text(), b.read_text()) == ("a1", "b1")
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_files_are_replaced_only_through_models_atomic():
    """os.replace/rename anywhere else would be a second, unsynced way to write a file."""
    pattern = re.compile(r"\bos\.replace\(|\.rename\(")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in PACKAGES
        for path in sorted((ROOT / top).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in MOVES | {"models/atomic.py"}
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and ".corrupt" not in line  # the batch store sets bad parts aside
    ]
    assert found == []


def test_training_and_the_batch_job_take_the_same_image_files(tmp_path):
    grey = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8))
    for suffix in ("png", "tif", "jpg", "bmp", "gif", "webp"):
        grey.save(tmp_path / f"a.{suffix}")
    (tmp_path / "notes.txt").write_text("not an image")
    trained_on = {s.path.suffix for s in find_dataset(tmp_path).train}
    scored = {Path(i.path).suffix for i in expand([str(tmp_path)], out=tmp_path / "out")}
    assert trained_on == scored == {".png", ".tif", ".jpg", ".bmp", ".gif", ".webp"}


def test_the_artifact_names_the_commit_that_made_it(tiny_model):
    from models.detector import Detector

    recorded = Detector(tiny_model, providers=("cpu",)).meta.code_version
    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        from importlib.metadata import version  # not a checkout: the package version

        assert recorded == version("nanoinspect")
        return
    commit = re.fullmatch(r"([0-9a-f]{40})(\+dirty)?", recorded)
    assert commit, recorded
    assert subprocess.run([*git, "merge-base", "--is-ancestor", commit[1], "HEAD"]).returncode == 0


def test_json_log_lines_come_from_python_json_logger(capsys):
    import json
    import logging

    from pythonjsonlogger.json import JsonFormatter

    from service.observability import configure_logging

    configure_logging("json", "info")
    (ours,) = [h for h in logging.getLogger().handlers if getattr(h, "_nanoinspect", False)]
    assert isinstance(ours.formatter, JsonFormatter)
    logging.getLogger("t").warning("hi %s", 1, extra={"status": 200, "color_message": "x"})
    line = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert set(line) == {"ts", "level", "logger", "msg", "request_id", "status"}
    assert (line["level"], line["msg"], line["status"]) == ("warning", "hi 1", 200)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", line["ts"])


def _constants(path: Path) -> set[str]:
    """The UPPER_CASE names a module assigns at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets += [node.target] if isinstance(node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper())
    return names


def test_a_constant_is_defined_in_one_module():
    """A second definition under the same name drifts from the first, or means something
    else under a name a reader takes for the same (MIN_SIDE once meant 8 and 24)."""
    where: dict[str, list[str]] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            for name in _constants(path):
                where.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


def test_every_surface_takes_its_default_from_the_one_definition():
    from cli.model import calibrate as calibrate_command
    from models.decision import EDGE, IMAGE_FPR, MARGIN, PIXEL_FPR
    from models.detector import TILE, Detector
    from service.settings import Settings
    from training.calibrate import calibrate

    def defaults(fn, *names):
        params = inspect.signature(fn).parameters
        return tuple(params[n].default for n in names)

    assert EDGE == 2 * MARGIN
    assert Settings.model_fields["tile"].default == defaults(Detector, "tile")[0] == TILE
    fprs = (PIXEL_FPR, IMAGE_FPR)
    assert defaults(calibrate_command, "pixel_fpr", "image_fpr") == fprs
    assert defaults(calibrate, "pixel_fpr", "image_fpr") == fprs
