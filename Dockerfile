# syntax=docker/dockerfile:1
# VisionOps: ONE image for every role -- pipeline steps (KFP components), `visionops serve` (BentoML) and
# `visionops monitor` (the drift sidecar). Tag = package version: ghcr.io/visionops/visionops:<__version__>
# (visionops.DEFAULT_IMAGE; the KFP components and manifests/ use exactly that tag).
#
#   docker build -t ghcr.io/visionops/visionops:0.1.0 .
#
# Base: Debian slim with CPython 3.11, pinned by version (pin by digest too for bit-for-bit rebuilds:
# --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...). It is CUDA-capable because the torch wheel
# from PyPI brings its own CUDA runtime, cuDNN and NCCL (the nvidia-* wheels); only the NVIDIA driver comes from
# the GPU node (NVIDIA container toolkit / GPU Operator). An nvidia/cuda base would add a second copy of the
# same libraries (several GB) for nothing.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a virtualenv with the project and its pinned dependencies --------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# The default package index on purpose: its torch build runs on CPU and GPU, and the pinned torchvision is
# built against exactly it.
RUN python -m venv /opt/venv && python -m pip install --upgrade pip wheel
WORKDIR /src
# The same two install commands CI runs (Makefile `install`): the torch/torchvision pair first, then the project,
# both under constraints.txt. The first layer is cached until constraints.txt changes.
COPY constraints.txt ./
RUN python -m pip install -c constraints.txt torch torchvision
COPY pyproject.toml README.md ./
COPY components ./components
RUN python -m pip install -c constraints.txt . \
    && python -c "import torch, torchvision, visionops; print('visionops', visionops.__version__, 'torch', torch.__version__)"

# ---- runtime: the virtualenv, a non-root user, nothing else --------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="visionops" \
      org.opencontainers.image.description="VisionOps pipeline steps, BentoML serving and drift monitor" \
      org.opencontainers.image.licenses="Apache-2.0"
# Writable places (the pods mount emptyDirs here; the root filesystem is read-only in Kubernetes). No usage
# telemetry (BentoML, Evidently): air-gapped clusters, and nothing writes under $HOME.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/visionops \
    BENTOML_HOME=/home/visionops/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1 \
    XDG_CACHE_HOME=/var/cache/visionops \
    TORCH_HOME=/var/cache/visionops/torch \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --gid 10001 visionops \
    && useradd --uid 10001 --gid 10001 --home-dir /home/visionops --create-home --shell /usr/sbin/nologin visionops \
    && mkdir -p /home/visionops/bentoml /var/cache/visionops \
    && chown -R 10001:10001 /home/visionops /var/cache/visionops
COPY --from=builder /opt/venv /opt/venv
USER 10001
WORKDIR /home/visionops
# 3000: `visionops serve` (BentoML); 8001: `visionops monitor` (drift sidecar, in-pod only).
EXPOSE 3000 8001
# No HEALTHCHECK: one image runs several roles (a pipeline step has no port); Kubernetes probes per role
# (manifests/base/deployment) do the job. KFP steps override the entry point with their own command.
ENTRYPOINT ["visionops"]
CMD ["--help"]
