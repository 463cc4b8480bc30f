"""Schemathesis against the service's own OpenAPI schema, served by a real `nanoinspect serve`:
generated requests to every operation, each answer checked for no 5xx and
for conformance to the schema (status documented, content type, headers, body, auth really
enforced). Hypothesis examples are bounded and derandomized, so the run takes seconds.

File fields get real PNGs of random sizes and contents (schemathesis' own binary strings are
rarely images), so the scoring path and its 200 bodies are exercised, not only the errors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import positive_data_acceptance

from service.app import create_app
from service.settings import Settings
from tests.test_service_support import encode, serve

KEY = "fuzz-key"
# Valid by the schema yet refused for what only the image or the model decides: a side under
# 8 px, crop_bottom leaving under 8 rows, sigma above the served model's sigma_max (all 422).
IMAGE_DEPENDENT = {"/v1/score", "/v1/score/overlay", "/v1/score/batch"}


def _png(spec: tuple[int, int, int, str]) -> bytes:
    width, height, seed, mode = spec
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), np.uint8)
    return encode(Image.fromarray(pixels).convert(mode))


schemathesis.openapi.format(
    "binary",
    st.tuples(
        st.integers(8, 48), st.integers(8, 48), st.integers(0, 2**32 - 1),
        st.sampled_from(["L", "RGB", "P", "I;16"]),
    ).map(_png),
)  # fmt: skip

# The schema the app publishes at /openapi.json, built without serving it (the operations must
# be known when tests are collected); the requests go to the real server.
schema = schemathesis.openapi.from_dict(create_app(Settings(log_level="warning")).openapi())


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    env = {"NANOINSPECT_API_KEYS": KEY, "NANOINSPECT_LOG_LEVEL": "warning"}
    with serve([str(tiny_model)], tmp_path_factory.mktemp("fuzz") / "log.txt", env) as s:
        yield s


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, server):
    excluded = [positive_data_acceptance] if case.operation.path in IMAGE_DEPENDENT else []
    case.call_and_validate(
        base_url=server.url, headers={"X-API-Key": KEY}, excluded_checks=excluded
    )


def test_fuzzing_reached_scoring_and_left_no_crash(server):
    """Schema-valid images really were scored (so their 200 bodies were validated too)."""
    families = text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
    requests = next(f for f in families if f.name == "nanoinspect_requests")
    scored = {s.labels["route"] for s in requests.samples if s.labels["status"] == "200"}
    assert scored >= IMAGE_DEPENDENT
    assert server.proc.poll() is None
    assert "Traceback" not in server.text()
