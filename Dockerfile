# syntax=docker/dockerfile:1
# VisionOps: ONE image for every role -- pipeline steps (KFP components), `visionops serve` (BentoML) and
# `visionops monitor` (the drift sidecar). Tag = package version: ghcr.io/visionops/visionops:<__version__>
# (visionops.DEFAULT_IMAGE; the KFP components and manifests/ use exactly that tag).
#
#   docker build -t ghcr.io/visionops/visionops:0.1.0 .
#   make image      # the same build with docker, or with buildah where no Docker engine exists (docs/kubernetes.md)
#
# Build arguments:
#   BASE_IMAGE  any Debian-like image with CPython 3.11 and its venv module. Default: the official slim Python
#               image, pinned by version (add @sha256:... for bit-for-bit rebuilds). A plain Debian bookworm with
#               Debian's python3 and python3-venv works too (`make image` builds on one where no image can be
#               pulled).
#   TORCH       cuda (default): the registry's torch, which runs on CPU and on NVIDIA GPUs (CUDA 13: driver
#               R580 or newer, compute capability 7.5 or newer); its CUDA runtime, cuDNN and NCCL come as
#               nvidia-* wheels, so the GPU node provides only the driver and an nvidia/cuda base would ship the
#               same libraries twice. cpu: the CPU-only torch build from TORCH_CPU_INDEX, several GB smaller,
#               for serving images on CPU nodes.
# Build context (optional):
#   wheelhouse  a directory of wheels (`make wheelhouse`): `--build-context wheelhouse=DIR` (docker buildx,
#               buildah) replaces the empty stage below and every install runs offline from it
#               (--no-index --find-links), so a build never downloads the CUDA stack again.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- wheelhouse: empty unless the build supplies one ---------------------------------------------------------
FROM scratch AS wheelhouse

# ---- builder: a virtualenv with the project and its pinned dependencies --------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG TORCH=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The same two install commands CI runs (Makefile `install`): the torch/torchvision pair first, then the project,
# both under constraints.txt. The first layer is cached until constraints.txt changes. Where the wheels come
# from: the wheelhouse if it holds any; else the default index (TORCH=cuda) or the CPU-only index (TORCH=cpu).
COPY constraints.txt ./
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; \
    elif [ "$TORCH" = cpu ]; then set -- --index-url "$TORCH_CPU_INDEX"; \
    elif [ "$TORCH" = cuda ]; then set --; \
    else echo "TORCH must be cuda or cpu, not '$TORCH'" >&2; exit 2; fi; \
    python3 -m venv /opt/venv; \
    python -m pip install "$@" -c constraints.txt torch torchvision; \
    python -c "import os, sys, torch; cuda, want = torch.version.cuda, os.environ['TORCH']; \
print('torch', torch.__version__, 'CUDA', cuda); \
sys.exit(None if (cuda is None) == (want == 'cpu') else f'TORCH={want} but this torch build has CUDA {cuda}')"
COPY pyproject.toml README.md ./
COPY components ./components
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; else set --; fi; \
    python -m pip install "$@" -c constraints.txt . \
    && python -c "import torch, torchvision, visionops; print('visionops', visionops.__version__, 'torch', torch.__version__)"

# ---- runtime: the virtualenv, a non-root user, nothing else --------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
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
