"""Determinism: the same image gets the same score and mask whether it is
scored alone or in a batch by the Detector, alone or in a multi-image request over REST (a
real server), or by the batch job (`nanoinspect score`). The container is compared by the
Docker suite's docker-test.

Tolerance: scores within rtol 1e-5; masks equal except where the reference pixel map lies
within 1e-4 (relative) of the threshold, where batching's float reordering may flip a pixel.
Measured on this machine (CPU): identical scores and masks on every surface."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.detector import Detector, Result
from models.render import rle_decode
from tests.test_service_support import ROOT, defect_image, encode, serve

RTOL = 1e-5
TIE = 1e-4  # pixels this close (relative) to the threshold may flip


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """Three images of one size (they batch together) and one of another size."""
    sizes = [(96, 96)] * 3 + [(128, 80)]
    out = {}
    for i, (w, h) in enumerate(sizes):
        pixels = (defect_image(20 + i, w, h) * 255 + 0.5).astype(np.uint8)
        out[f"img{i}.png"] = encode(Image.fromarray(pixels))
    return out


@pytest.fixture(scope="module")
def reference(tiny_model, images) -> dict[str, Result]:
    """Each image scored alone by the Detector."""
    from models.images import decode_image

    detector = Detector(tiny_model, providers=("cpu",), threads=1)
    return {n: detector.score([decode_image(b).pixels])[0] for n, b in images.items()}


def assert_same(name: str, ref: Result, score: float, mask: np.ndarray) -> None:
    assert score == pytest.approx(ref.score, rel=RTOL), name
    assert mask.shape == ref.mask.shape, name
    differ = mask != ref.mask
    near = np.abs(ref.score_map - ref.pixel_threshold) <= TIE * ref.pixel_threshold
    assert not (differ & ~near).any(), f"{name}: {int(differ.sum())} mask pixels differ"


def test_detector_alone_and_batched(tiny_model, images, reference):
    from models.images import decode_image

    detector = Detector(tiny_model, providers=("cpu",), threads=1)
    pixels = {n: decode_image(b).pixels for n, b in images.items()}
    same = [n for n in pixels if pixels[n].shape == (96, 96)]
    for name, r in zip(same, detector.score([pixels[n] for n in same]), strict=True):
        assert_same(name, reference[name], r.score, r.mask)


def test_rest_alone_batched_and_batch_job(tiny_model, images, reference, tmp_path):
    # the multi-image request fills one batch: its images are decoded side by side, and a loaded
    # machine may finish them hundreds of ms apart
    env = {"NANOINSPECT_BATCH_WAIT_MS": "2000"}
    params = {"mask_format": "rle"}
    with serve([str(tiny_model)], tmp_path / "log.txt", env) as s:
        for name, data in images.items():
            r = httpx.post(s.url + "/v1/score", files={"file": (name, data)}, params=params,
                           timeout=60)  # fmt: skip
            body = r.json()
            assert body["timings"]["batch_size"] == 1
            assert_same(
                f"REST {name}", reference[name], body["score"], rle_decode(body["mask"]["data"])
            )
        files = [("files", (name, data)) for name, data in images.items()]
        many = httpx.post(s.url + "/v1/score/batch", files=files, params=params, timeout=60)
        for item in many.json()["items"]:
            result = item["result"]
            mask = rle_decode(result["mask"]["data"])
            assert_same(f"REST batch {item['filename']}", reference[item["filename"]],
                        result["score"], mask)  # fmt: skip
        sizes = [item["result"]["timings"]["batch_size"] for item in many.json()["items"]]
        assert max(sizes) == 3  # the three same-size images shared an inference call

    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cli", "score", str(tiny_model), str(folder), "--out",
           str(out), "--save-masks", "--no-progress"]  # fmt: skip
    env = os.environ | {"NANOINSPECT_PROVIDERS": "cpu"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for row in pq.read_table(out / "results.parquet").to_pylist():
        name = row["relative_path"]
        with Image.open(out / "masks" / name) as im:
            mask = np.asarray(im.convert("L")) > 0
        assert_same(f"batch job {name}", reference[name], row["score"], mask)
