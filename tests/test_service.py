"""The FastAPI service in-process (httpx over ASGI, lifespan run by hand): the numbers equal
Detector.score's, every bad upload is a JSON 4xx, accepted formats decode, concurrent
requests share batches, overload and deadlines answer at once, a bad model keeps /readyz 503."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import subprocess
import sys
import threading
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from models.decision import image_decision
from models.detector import Detector
from models.errors import ArtifactError
from models.images import decode_image
from models.render import mask_rle, rle_decode
from service.app import create_app
from service.settings import Settings
from tests.test_service_support import ROOT, accepted_uploads, bad_uploads, defect_png, metric

pytestmark = pytest.mark.anyio
FILE = {"file": ("defect.png", defect_png())}


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def settings_for(model, **kw) -> Settings:
    return Settings(model=model, providers=["cpu"], threads=1, log_format="text", **kw)


@asynccontextmanager
async def running(settings: Settings, wait_ready: bool = True):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(300):
                if not wait_ready or app.state.inspector.status != "loading":
                    break
                await asyncio.sleep(0.05)
            client.app = app
            yield client


@pytest.fixture(scope="module")
async def client(tiny_model):
    async with running(settings_for(tiny_model, max_pixels=50_000_000)) as c:
        yield c


@pytest.fixture(scope="module")
def detector(tiny_model):
    return Detector(tiny_model, providers=("cpu",), threads=1)


def png_array(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_score_equals_detector(client, detector):
    r = await client.post("/v1/score", files=FILE, params={"heatmap": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = detector.score([decode_image(defect_png()).pixels])[0]
    assert body["score"] == expected.score and body["is_anomalous"] == expected.is_anomalous
    assert "decision_score" not in body and body["reason"] == expected.reason
    ood = body["out_of_distribution"]
    assert body["is_anomalous"] == (body["score"] > body["image_threshold"] or ood is not None)
    if expected.zoom == 1.0:  # the score is the decision of the map as the graph made it
        assert body["score"] == image_decision(expected.score_map)
    m = detector.meta
    assert (body["alpha"], body["pixel_threshold"], body["image_threshold"]) == (
        m.alpha, m.pixel_threshold, m.image_threshold,
    )  # fmt: skip
    assert (body["width"], body["height"], body["format"]) == (96, 96, "PNG")
    assert body["anomalous_area_fraction"] == expected.anomalous_area_fraction
    assert [tuple(g["bbox"]) for g in body["regions"]] == [g.bbox for g in expected.regions]
    assert [g["peak_score"] for g in body["regions"]] == [g.peak_score for g in expected.regions]
    assert [g["counts"] for g in body["regions"]] == [g.counts for g in expected.regions]
    assert body["mask"]["format"] == "png"
    np.testing.assert_array_equal(png_array(body["mask"]["data"]), expected.mask)
    assert png_array(body["heatmap"]["data"]).shape == (96, 96, 3)
    assert set(body["timings"]) == {"decode", "queue", "inference", "post", "batch_size"}
    assert body["model"] == {
        "name": detector.name, "version": m.created, "sha256": detector.sha256,
        "provider": "CPUExecutionProvider",
    }  # fmt: skip


async def test_overrides_and_rle_mask(client, detector):
    params = {"alpha": 0.25, "pixel_threshold": 0.5, "image_threshold": 2.0, "min_area": 4}
    r = await client.post("/v1/score", files=FILE, params=params | {"mask_format": "rle"})
    body = r.json()
    image = decode_image(defect_png()).pixels
    expected = detector.score([image], **params)[0]
    assert body["score"] == expected.score and body["alpha"] == 0.25
    assert (body["pixel_threshold"], body["image_threshold"], body["min_area"]) == (0.5, 2.0, 4)
    assert body["mask"]["format"] == "rle" and body["mask"]["data"]["size"] == [96, 96]
    np.testing.assert_array_equal(rle_decode(body["mask"]["data"]), expected.mask)
    params = {"mask_format": "none", "crop_bottom": 16}  # drop an SEM banner of 16 rows
    cropped = (await client.post("/v1/score", files=FILE, params=params)).json()
    assert cropped["mask"] is None and cropped["heatmap"] is None
    assert cropped["score"] == detector.score([image[:80]])[0].score and cropped["height"] == 80


def test_rle_is_coco_column_major():
    assert mask_rle(np.array([[0, 1], [1, 1]], bool)) == {"size": [2, 2], "counts": [1, 3]}
    assert mask_rle(np.array([[1, 0], [1, 0]], bool))["counts"] == [0, 2, 2]
    mask = np.random.default_rng(0).random((7, 5)) > 0.5
    np.testing.assert_array_equal(rle_decode(mask_rle(mask)), mask)


# sigma 8.5: within the query bound, above the model's sigma_max of 8
@pytest.mark.parametrize(
    "params",
    [{"alpha": 2}, {"alpha": -0.1}, {"alpha": "nan"}, {"pixel_threshold": "inf"},
     {"image_threshold": -1}, {"mask_format": "jpeg"}, {"heatmap": "maybe"}, {"sigma": 99},
     {"sigma": 8.5}, {"min_area": -3}, {"max_regions": -1}, {"unknown": 1}, {"crop_bottom": 1.5},
     {"crop_bottom": -1}],
)  # fmt: skip
async def test_bad_parameters_are_422(client, params):
    assert_error(
        await client.post("/v1/score", files=FILE, params=params), 422, "invalid_parameter"
    )


@pytest.mark.parametrize("case", list(bad_uploads()))
async def test_bad_uploads(client, case):
    kwargs, status, code = bad_uploads()[case]
    assert_error(await client.post("/v1/score", **kwargs), status, code)


async def test_server_unharmed_after_bad_input(client):
    for kwargs, _, _ in bad_uploads().values():
        await client.post("/v1/score", **kwargs)
    assert (await client.post("/v1/score", files=FILE)).status_code == 200


@pytest.mark.parametrize("name", list(accepted_uploads()))
async def test_accepted_formats(client, name):
    data, width, height, note = accepted_uploads()[name]
    r = await client.post("/v1/score", files={"file": (name, data)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["filename"]) == (width, height, name)
    assert body["bit_depth"] == (16 if "16" in name else 8)
    assert any(note in n for n in body["notes"]) if note else True


async def test_batch_mixes_results_and_errors(client, detector):
    good, other = defect_png(), defect_png(5, 64, 80)
    files = [("files", ("a.png", good)), ("files", ("b.txt", b"not an image")),
             ("files", ("c.png", other))]  # fmt: skip
    r = await client.post("/v1/score/batch", files=files, params={"mask_format": "none"})
    body = r.json()
    assert (body["count"], body["failed"]) == (3, 1)
    a, b, c = body["items"]
    assert b["result"] is None and b["error"]["code"] == "unsupported_type"
    assert a["result"]["score"] == detector.score([decode_image(good).pixels])[0].score
    assert (c["result"]["width"], c["result"]["height"]) == (64, 80)
    assert_error(await client.post("/v1/score/batch", files=FILE), 400, "missing_file")


async def test_overlay_png(client, detector):
    r = await client.post("/v1/score/overlay", files=FILE)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (96, 96) and im.mode == "RGB"
    assert (
        float(r.headers["x-score"]) == detector.score([decode_image(defect_png()).pixels])[0].score
    )
    layers_off = {"heatmap": "false", "contours": "false", "boxes": "false"}
    plain = await client.post("/v1/score/overlay", files=FILE, params=layers_off)
    grey = np.asarray(Image.open(io.BytesIO(plain.content)))[..., 0]
    np.testing.assert_array_equal(grey, np.asarray(Image.open(io.BytesIO(defect_png()))))


async def test_upload_limit_by_content_length(tiny_model):
    async with running(settings_for(tiny_model, max_upload_bytes=4096)) as c:
        big = {"file": ("big.png", defect_png(3, 256, 256))}
        r = await c.post("/v1/score", files=big)
        assert_error(r, 413, "too_large")
        assert "Content-Length" in r.json()["error"]["message"]


async def test_upload_limit_while_streaming(tiny_model):
    """A chunked body with no Content-Length is cut off at the limit, not buffered whole."""
    sent = []

    async def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for i in range(1000):  # 64 MB if read to the end
            sent.append(i)
            yield b"\0" * 65536

    async with running(settings_for(tiny_model, max_upload_bytes=256 * 1024)) as c:
        headers = {"content-type": "multipart/form-data; boundary=b"}
        r = await c.post("/v1/score", content=body(), headers=headers)
        assert_error(r, 413, "too_large")
        assert "content-length" not in r.request.headers and len(sent) < 10


async def test_concurrent_requests_share_batches(tiny_model, detector):
    async with running(settings_for(tiny_model, batch_wait_ms=200, batch_size=8)) as c:
        files = [{"file": (f"{i}.png", defect_png(i))} for i in range(16)]
        rs = await asyncio.gather(*(c.post("/v1/score", files=f) for f in files))
        assert all(r.status_code == 200 for r in rs)
        assert max(r.json()["timings"]["batch_size"] for r in rs) > 1
        text = (await c.get("/metrics")).text
        assert metric(text, 'nanoinspect_batch_size_bucket{le="1.0"}') < metric(
            text, "nanoinspect_batch_size_count"
        )
        assert metric(text, "nanoinspect_images_scored_total") == 16
        single = detector.score([decode_image(defect_png(3)).pixels])[0].score
        assert rs[3].json()["score"] == pytest.approx(single, rel=1e-5)


async def test_overload_is_503_with_retry_after(tiny_model):
    async with running(settings_for(tiny_model, queue_size=1, batch_size=1)) as c:
        inspector = c.app.state.inspector
        gate, score = threading.Event(), inspector.detector.score
        inspector.detector.score = lambda *a, **k: gate.wait(30) and score(*a, **k)
        tasks = [asyncio.create_task(c.post("/v1/score", files=FILE)) for _ in range(8)]
        async with asyncio.timeout(30):
            while sum(t.done() for t in tasks) < 6:  # at most one running and one queued
                await asyncio.sleep(0.02)
        gate.set()
        rs = await asyncio.gather(*tasks)
        busy = [r for r in rs if r.status_code == 503]
        assert len(busy) >= 6 and all(r.headers["retry-after"] == "1" for r in busy)
        assert_error(busy[0], 503, "overloaded")
        assert all(r.status_code == 200 for r in rs if r not in busy)


async def test_request_during_model_load_waits_for_it(tiny_model):
    async with running(settings_for(tiny_model), wait_ready=False) as c:
        assert (await c.post("/v1/score", files=FILE)).status_code == 200


async def test_deadline_is_504(tiny_model):
    async with running(settings_for(tiny_model, request_timeout_s=1e-9)) as c:
        assert_error(await c.post("/v1/score", files=FILE), 504, "timeout")


@pytest.mark.parametrize("content", [None, b"this is not an onnx model"])
async def test_bad_model_keeps_readyz_503(tmp_path, caplog, content):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with caplog.at_level(logging.ERROR, "service"):
        async with running(settings_for(path)) as c:
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "failed"
            assert str(path) in r.json()["detail"]
            assert (await c.get("/healthz")).status_code == 200
            assert_error(await c.post("/v1/score", files=FILE), 503, "not_ready")
    assert any("model not loaded" in m and str(path) in m for m in caplog.messages)


async def test_bad_model_fails_startup_when_configured(tmp_path):
    app = create_app(settings_for(tmp_path / "missing.onnx", fail_on_bad_model=True))
    with pytest.raises(ArtifactError, match="not found"):
        async with app.router.lifespan_context(app):
            pass


async def test_api_keys(tiny_model):
    s = settings_for(tiny_model, api_keys=["k-one", "k-two"])
    async with running(s) as c:
        assert_error(await c.get("/v1/model"), 401, "unauthorized")
        r = await c.post("/v1/score", files=FILE, headers={"X-API-Key": "k-wrong"})
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert (await c.get("/v1/model", headers={"X-API-Key": "k-two"})).status_code == 200
        bearer = {"Authorization": "Bearer k-one"}
        assert (await c.post("/v1/score", files=FILE, headers=bearer)).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/", "/docs"):
            assert (await c.get(path)).status_code == 200, path
    async with running(settings_for(tiny_model, api_keys=["k"], open_paths=["/healthz"])) as c:
        assert_error(await c.get("/metrics"), 401, "unauthorized")


async def test_cors_when_configured(tiny_model, client):
    origin = {"Origin": "https://line3.example", "Access-Control-Request-Method": "POST"}
    async with running(settings_for(tiny_model, cors_origins=["https://line3.example"])) as c:
        r = await c.options("/v1/score", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://line3.example"
    r = await client.options("/v1/score", headers=origin)  # off by default
    assert "access-control-allow-origin" not in r.headers


async def test_request_id_echoed(client):
    r = await client.get("/healthz", headers={"X-Request-ID": "line-7:run-42"})
    assert r.headers["x-request-id"] == "line-7:run-42"
    generated = (await client.get("/healthz", headers={"X-Request-ID": "x" * 500})).headers
    assert len(generated["x-request-id"]) == 32
    r = await client.post("/v1/score", files={"file": ("x.txt", b"nope")})
    assert len(r.headers["x-request-id"]) == 32


async def test_every_error_is_json(client):
    assert_error(await client.get("/no/such/path"), 404, "not_found")
    assert_error(await client.get("/v1/score"), 405, "method_not_allowed")


async def test_model_docs_metrics_and_page(client, detector):
    model = (await client.get("/v1/model")).json()
    assert model["sha256"] == detector.sha256 and model["limits"]["max_pixels"] == 50_000_000
    spec = (await client.get("/openapi.json")).json()
    score = spec["paths"]["/v1/score"]["post"]
    assert "multipart/form-data" in score["requestBody"]["content"]
    assert {p["name"] for p in score["parameters"]} >= {"alpha", "mask_format", "heatmap"}
    assert "ScoreOut" in spec["components"]["schemas"]
    docs = (await client.get("/docs")).text
    assert "swagger-ui-bundle.js" in docs and "cdn." not in docs  # works offline
    assert (await client.get("/static-offline-docs/swagger-ui-bundle.js")).status_code == 200
    page = await client.get("/")
    assert page.status_code == 200 and "nanoinspect" in page.text
    assert (await client.get("/static/app.js")).status_code == 200
    text = (await client.get("/metrics")).text
    for name in ("requests_total", "request_duration_seconds", "inference_seconds",
                 "batch_size", "queue_depth", "anomalous_images_total"):  # fmt: skip
        assert f"nanoinspect_{name}" in text
    assert 'route="/v1/score"' in text and 'status="422"' in text


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("NANOINSPECT_API_KEYS", "key-a, key-b")
    monkeypatch.setenv("NANOINSPECT_PROVIDERS", "cpu")
    monkeypatch.setenv("NANOINSPECT_BATCH_WAIT_MS", "20")
    monkeypatch.setenv("NANOINSPECT_REQUIRE_GPU", "1")
    s = Settings()
    assert (s.api_keys, s.providers, s.batch_wait_ms) == (["key-a", "key-b"], ["cpu"], 20)
    assert s.require_gpu and s.model.name == "default.onnx" and "key-a" not in repr(s)


def test_service_runs_without_torch(tiny_model):
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import asyncio, httpx
from service.app import create_app
from service.settings import Settings
import cli

async def main():
    s = Settings(model={str(tiny_model)!r}, providers=["cpu"], fail_on_bad_model=True)
    app = create_app(s)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            image = open(sys.argv[1], "rb").read()
            r = await c.post("/v1/score", files={{"file": ("x.png", image)}})
            assert r.status_code == 200, r.text
asyncio.run(main())
print("ok", "torch" in sys.modules and sys.modules["torch"] is None)
"""
    path = tiny_model.parent / "torchless.png"
    path.write_bytes(defect_png())
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok True"
