"""Zero-downtime model swap and model-file faults: a real server
swaps models under concurrent load with no failed request and answers from both models,
refuses bad artifacts (the old model keeps serving), reloads on SIGHUP, and keeps serving
when its model file is deleted, truncated or replaced on disk. In-process: a job admitted
before a swap finishes on the old model."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from models.detector import Detector
from tests.test_service_support import defect_png, serve

ADMIN = {"X-API-Key": "admin-secret"}
FILE = {"file": ("defect.png", defect_png())}


@pytest.fixture(scope="module")
def model_b(tiny_model, tmp_path_factory) -> Path:
    """A second model: the tiny one recalibrated (another name, alpha, sigma and image
    threshold, so other scores and verdicts: alpha alone moves nothing when calibration gave
    the BiGAN's term no weight) by rewriting its metadata, as `nanoinspect calibrate` does;
    a second export would cost a minute of the suite."""
    import onnx

    model = onnx.load(tiny_model)
    props = {p.key: p for p in model.metadata_props}
    props["name"].value = "tiny-b"
    props["alpha"].value = "0.0" if float(props["alpha"].value) > 0.5 else "1.0"
    props["sigma"].value = "0.0" if float(props["sigma"].value) > 0 else "4.0"
    props["image_threshold"].value = str(float(props["image_threshold"].value) * 0.9)
    out = tmp_path_factory.mktemp("model_b") / "tiny-b.onnx"
    onnx.save(model, out)
    return out


@pytest.fixture(scope="module")
def models(tiny_model, model_b, tmp_path_factory) -> dict[str, Path]:
    """The model folder the admin route may load from: a.onnx, b.onnx and bad artifacts."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path_factory.mktemp("models")
    shutil.copy(tiny_model, folder / "a.onnx")
    shutil.copy(model_b, folder / "b.onnx")
    data = (folder / "a.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (folder / "garbage.onnx").write_bytes(b"\x08\x07 not a model at all")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    ])  # fmt: skip
    foreign = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(foreign, folder / "foreign.onnx")  # valid ONNX, no nanoinspect metadata
    return {p.stem: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    env = {"NANOINSPECT_ADMIN_KEYS": "admin-secret", "NANOINSPECT_API_KEYS": "user-key",
           "NANOINSPECT_BATCH_WAIT_MS": "20"}  # fmt: skip
    log = tmp_path_factory.mktemp("swap") / "log.txt"
    with serve([str(models["a"])], log, env) as s:
        yield s


def sample(text: str, name: str, /, **labels: str) -> float:
    """The value of the sample `name` with these labels in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name} {labels}")


def sha(path: Path) -> str:
    return Detector(path, providers=("cpu",), threads=1).sha256


def served(url: str) -> str:
    return httpx.get(url + "/v1/model", headers={"X-API-Key": "user-key"}).json()["sha256"]


def swap(url: str, body: dict, headers: dict = ADMIN) -> httpx.Response:
    return httpx.post(url + "/v1/admin/model", json=body, headers=headers, timeout=120)


def test_swap_under_load_loses_no_request(server, models):
    a, b = sha(models["a"]), sha(models["b"])
    calibrated = {
        d.sha256: (d.meta.alpha, d.meta.image_threshold)
        for d in (Detector(models[m], providers=("cpu",), threads=1) for m in "ab")
    }
    assert a != b and calibrated[a] != calibrated[b]

    async def scenario():
        answers: list[tuple[float, httpx.Response]] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(
            base_url=server.url, headers={"X-API-Key": "user-key"}, timeout=60
        ) as c:

            async def client():
                while not stop.is_set():
                    r = await c.post("/v1/score", files=FILE, params={"mask_format": "none"})
                    answers.append((time.monotonic(), r))

            async def until(predicate):
                async with asyncio.timeout(120):
                    while not predicate():
                        await asyncio.sleep(0.02)

            load = [asyncio.create_task(client()) for _ in range(6)]
            await until(lambda: len(answers) >= 12)
            began = time.monotonic()
            swapped = await c.post("/v1/admin/model", json={"path": "b.onnx"}, headers=ADMIN)
            ended = time.monotonic()
            seen_b = lambda: sum(r.json()["model"]["sha256"] == b for _, r in answers)  # noqa: E731
            await until(lambda: seen_b() >= 12)
            stop.set()
            await asyncio.gather(*load)
        return swapped, answers, began, ended

    swapped, answers, began, ended = asyncio.run(scenario())
    assert swapped.status_code == 200, swapped.text
    out = swapped.json()
    assert (out["previous"]["sha256"], out["current"]["sha256"]) == (a, b)
    assert all(r.status_code == 200 for _, r in answers), {r.status_code for _, r in answers}
    bodies = [r.json() for _, r in answers]
    assert {x["model"]["sha256"] for x in bodies} == {a, b}
    for x in bodies:  # settings of the model that scored: no request mixed two models
        assert (x["alpha"], x["image_threshold"]) == calibrated[x["model"]["sha256"]]
    scores = {s: [x["score"] for x in bodies if x["model"]["sha256"] == s] for s in (a, b)}
    # one score per model (to float32 rounding: the map's peak moves by an ulp with the
    # batch the image shared), and the two models' differ
    for s in (a, b):
        assert max(scores[s]) == pytest.approx(min(scores[s]), rel=1e-6)
    assert scores[a][0] != pytest.approx(scores[b][0], rel=1e-3)
    during = sum(began <= t <= ended for t, _ in answers)
    print(f"\nswap: load+check {out['load_seconds']:.3f} s, {during} requests answered meanwhile,"
          f" {len(answers)} in all, none failed")  # fmt: skip
    assert served(server.url) == b
    text = httpx.get(server.url + "/metrics").text
    assert sample(text, "nanoinspect_model_info", name="tiny-b", sha256=b) == 1
    assert sample(text, "nanoinspect_model_info", sha256=a) == 0
    assert sample(text, "nanoinspect_model_swaps_total", result="ok") >= 1
    assert sample(text, "nanoinspect_model_images_total", sha256=a) >= 12
    assert sample(text, "nanoinspect_model_images_total", sha256=b) >= 12
    assert swap(server.url, {"path": str(models["a"])}).status_code == 200  # and back
    assert served(server.url) == a


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "says"),
    [
        ({"path": "garbage.onnx"}, ADMIN, 409, "model_refused", "not a loadable ONNX model"),
        ({"path": "truncated.onnx"}, ADMIN, 409, "model_refused", "not a loadable ONNX model"),
        ({"path": "foreign.onnx"}, ADMIN, 409, "model_refused", "not a nanoinspect model"),
        ({"path": "missing.onnx"}, ADMIN, 409, "model_refused", "not found"),
        ({"path": "b.onnx", "sha256": "0" * 64}, ADMIN, 409, "model_refused", "expected 000"),
        ({"path": "/etc/passwd"}, ADMIN, 403, "forbidden_path", "loaded from"),
        ({"path": "../../../etc/passwd"}, ADMIN, 403, "forbidden_path", "loaded from"),
        ({"path": "b.onnx"}, {}, 401, "unauthorized", "admin key"),
        ({"path": "b.onnx"}, {"X-API-Key": "user-key"}, 401, "unauthorized", "admin key"),
        ({"path": "b.onnx", "extra": 1}, ADMIN, 422, "invalid_parameter", "extra"),
        ({}, ADMIN, 422, "invalid_parameter", "path"),
    ],
)
def test_bad_swaps_are_refused_and_the_old_model_serves(
    server, models, body, headers, status, code, says
):
    before = served(server.url)
    r = swap(server.url, body, headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and says in r.json()["error"]["message"]
    assert served(server.url) == before
    scored = httpx.post(server.url + "/v1/score", files=FILE, headers={"X-API-Key": "user-key"})
    assert scored.status_code == 200 and scored.json()["model"]["sha256"] == before
    if code == "model_refused":
        assert "keeps serving" in r.json()["error"]["message"]
        text = httpx.get(server.url + "/metrics").text
        assert sample(text, "nanoinspect_model_swaps_total", result="refused") >= 1


def test_sighup_reloads_and_file_faults_keep_serving(models, tmp_path):
    """The served file replaced, truncated and deleted under a running server: the loaded
    model keeps answering; SIGHUP loads a good replacement and refuses a broken one."""
    a, b = sha(models["a"]), sha(models["b"])
    current = tmp_path / "current.onnx"
    shutil.copy(models["a"], current)
    with serve([str(current)], tmp_path / "log.txt") as s:

        def score_sha() -> str:
            r = httpx.post(s.url + "/v1/score", files=FILE, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["model"]["sha256"]

        def refused() -> float:
            text = httpx.get(s.url + "/metrics").text
            try:
                return sample(text, "nanoinspect_model_swaps_total", result="refused")
            except KeyError:
                return 0.0

        def hup_and_wait(done) -> None:
            s.proc.send_signal(signal.SIGHUP)
            until = time.monotonic() + 120
            while not done():
                assert time.monotonic() < until, s.text()[-3000:]
                time.sleep(0.1)

        shutil.copy(models["b"], tmp_path / "next.onnx")
        (tmp_path / "next.onnx").replace(current)  # replaced on disk: nothing changes...
        assert score_sha() == a
        hup_and_wait(lambda: served(s.url) == b)  # ...until SIGHUP
        assert score_sha() == b

        with current.open("r+b") as f:  # truncated in place
            f.truncate(current.stat().st_size // 3)
        assert score_sha() == b
        hup_and_wait(lambda: refused() == 1)
        assert score_sha() == b and served(s.url) == b

        current.unlink()  # deleted
        assert score_sha() == b
        hup_and_wait(lambda: refused() == 2)
        assert score_sha() == b
        log = s.text()
        assert "model swap refused" in log and "not found" in log and "keeps serving" in log


@pytest.mark.anyio
async def test_a_job_admitted_before_a_swap_finishes_on_the_old_model(models):
    """In-process, with inference held: one running and one queued job of model a, then a
    swap to b, then a new job: the first two answer with a, the third with b."""
    from tests.test_service import running, settings_for

    settings = settings_for(models["a"], batch_size=1, admin_keys=["admin-secret"])
    async with running(settings) as c:
        inspector = c.app.state.inspector
        old = inspector.detector
        gate, score = threading.Event(), old.score
        old.score = lambda *a, **k: gate.wait(30) and score(*a, **k)
        first = [asyncio.create_task(c.post("/v1/score", files=FILE)) for _ in range(2)]
        async with asyncio.timeout(30):
            while inspector.batcher.waiting < 1:  # one running, one queued
                await asyncio.sleep(0.01)
        r = await c.post("/v1/admin/model", json={"path": "b.onnx"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        later = asyncio.create_task(c.post("/v1/score", files=FILE))
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in (*first, later))
        gate.set()
        shas = [(await t).json()["model"]["sha256"] for t in (*first, later)]
        assert shas == [old.sha256, old.sha256, inspector.detector.sha256]
        assert old.sha256 != inspector.detector.sha256


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"
