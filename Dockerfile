# The GPU serving image: `nanoinspect serve` on onnxruntime-gpu, the `serve` extra, no torch.
#
#   docker build -t nanoinspect:0.1.0 .
#   docker run --gpus all -p 127.0.0.1:8000:8000 nanoinspect:0.1.0
#
# onnxruntime-gpu >= 1.27 (what pyproject.toml pins) is built for CUDA 13 and cuDNN 9: the
# default base carries both; the host needs an NVIDIA driver >= 580 (CUDA 12 hosts: see
# ONNXRUNTIME_GPU below). BASE_IMAGE may be any glibc >= 2.28 image with python3 >= 3.11 and
# venv, or with apt-get to install them (`make docker-test` passes a Debian base it makes
# itself). See the README's Docker section.
ARG BASE_IMAGE=nvidia/cuda:13.1.1-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# Only for this stage, never in the final image: how pip reaches an index from the build host
# (e.g. PIP_CERT for a re-signing proxy, PIP_INDEX_URL for a mirror).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The dependencies first, at the versions and hashes of requirements/serve.lock (`make lock`
# compiles it from the `serve` extra): this layer is reused until the lock changes.
COPY requirements/serve.lock requirements/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes -r requirements/serve.lock
# Then the code and the default model (package data of `models`), installed with its `serve`
# extra: anything the extra needs and a stale lock lacks is still installed.
COPY pyproject.toml README.md ./
COPY models/ models/
COPY training/ training/
COPY service/ service/
COPY cli/ cli/
RUN /opt/venv/bin/pip install '.[serve]' \
    && if /opt/venv/bin/python -c 'import torch' 2>/dev/null; then \
        echo 'torch must not be in the serving image' >&2; exit 1; fi
# CUDA 12 hosts: --build-arg ONNXRUNTIME_GPU=onnxruntime-gpu==1.26.0 (the last CUDA 12 build)
# with a CUDA 12 BASE_IMAGE (pip then warns that it is below the CUDA 13 pin of pyproject.toml).
ARG ONNXRUNTIME_GPU=
RUN if [ -n "$ONNXRUNTIME_GPU" ]; then /opt/venv/bin/pip install "$ONNXRUNTIME_GPU"; fi

FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /models
COPY --from=build /opt/venv /opt/venv
# /models: mount another model there (read-only) and point NANOINSPECT_MODEL at it; without
# it the bundled default model is served. The root filesystem may be read-only: nothing is
# written outside /tmp (multi-worker metrics, libraries' temporary files): make it a tmpfs.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NANOINSPECT_HOST=0.0.0.0 \
    NANOINSPECT_PORT=8000 \
    NANOINSPECT_FAIL_ON_BAD_MODEL=true \
    NANOINSPECT_LOG_FORMAT=json
# A bad model or NANOINSPECT_REQUIRE_GPU=1 without a usable GPU ends the container at startup
# (FAIL_ON_BAD_MODEL) instead of leaving it up and never ready.
USER 10001:10001
EXPOSE 8000
# uvicorn drains on SIGTERM: no new connections, in-flight requests finish (up to 30 s; give
# `docker stop -t 40`, compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Ready = model loaded and warmed up (/readyz 200); the start period covers CUDA start-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('NANOINSPECT_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["nanoinspect"]
CMD ["serve"]
