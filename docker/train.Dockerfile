# Training on GPUs: `nanoinspect train/export/evaluate` with torch and the `train` extra.
#
#   docker build -f docker/train.Dockerfile -t nanoinspect-train:0.1.0 .
#   docker run --gpus all --ipc=host -v "$PWD/data:/data:ro" -v "$PWD/runs:/runs" \
#       nanoinspect-train:0.1.0 train /data/line3 --out /runs/line3 --device cuda
#   # several GPUs: --entrypoint torchrun ... --standalone --nproc_per_node=4 -m cli train ...
#
# torch's CUDA wheels carry their own CUDA libraries; the base supplies CUDA 13 + cuDNN 9 for
# onnxruntime-gpu, which `export` runs for its parity check. TORCH pins torch like the Makefile
# (an unpinned torch resolves to whatever build is newest); TORCH_INDEX_URL picks a CUDA flavour,
# e.g. https://download.pytorch.org/whl/cu130.
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
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
ARG PIP_TRUSTED_HOST
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH"
COPY pyproject.toml ./
RUN mkdir models training service cli && touch README.md \
    && /opt/venv/bin/pip install '.[train]' \
    && /opt/venv/bin/pip uninstall -y nanoinspect
COPY README.md ./
COPY models/ models/
COPY training/ training/
COPY service/ service/
COPY cli/ cli/
RUN /opt/venv/bin/pip install --no-deps .

FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /data /runs && chown 10001:10001 /runs
COPY --from=build /opt/venv /opt/venv
# /data: training images (mount read-only); /runs: checkpoints, TensorBoard logs, exports.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /runs
ENTRYPOINT ["nanoinspect"]
CMD ["--help"]
