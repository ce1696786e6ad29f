"""How every pipeline's tasks are set up on a cluster: :class:`ClusterSettings` and the one function that
applies them to a task.

The training, experiment-analysis and weekly-review pipelines all configure their tasks here, so ``--image``,
``--secret``, node selectors, retries and resources mean the same in each (kfp + kfp-kubernetes; ``kfp.local``
ignores all of it):

- the image of every component (``image``; empty = :data:`visionops.pipeline.image.IMAGE`);
- CPU/memory requests and limits per step (``resources``);
- the object-storage credentials from the Kubernetes Secret ``s3_secret`` as the env variables
  :data:`SECRET_KEYS` (never pipeline parameters);
- ``step_node_selector`` on every task; the GPU step also gets ``node_selector``, ``tolerations`` and a
  memory-backed ``/dev/shm`` (:func:`gpu_placement`);
- retries with exponential backoff for the steps that do I/O, caching only where a step is a function of its
  inputs (the pipeline says which).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visionops import policy
from visionops.errors import ConfigError

#: Kubernetes Secret keys (= env var names) the steps read object-storage credentials from.
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL")
GPU_RESOURCE = "nvidia.com/gpu"
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class TaskResources:
    """CPU/memory requests and limits of one task (Kubernetes quantities; "" = not set)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


#: Per step of every pipeline: training (ingest .. deploy), experiment analysis (analyze), weekly review.
DEFAULT_RESOURCES: dict[str, TaskResources] = {
    "ingest": TaskResources("1", "4", "2Gi", "8Gi"),
    "validate": TaskResources("1", "2", "2Gi", "4Gi"),
    "train": TaskResources("4", "8", "16Gi", "32Gi"),
    "evaluate": TaskResources("2", "4", "4Gi", "8Gi"),
    "package": TaskResources("500m", "1", "1Gi", "2Gi"),
    "deploy": TaskResources("250m", "500m", "256Mi", "512Mi"),
    "analyze": TaskResources("1", "", "2Gi", "4Gi"),
    "review": TaskResources("1", "4", "2Gi", "8Gi"),
}


def _default_tolerations() -> tuple[dict[str, str], ...]:
    # GPU node pools are usually tainted nvidia.com/gpu (GKE, AKS, the NVIDIA GPU operator docs).
    return ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)


@dataclass(frozen=True)
class ClusterSettings:
    """Compile-time settings of a pipeline on a cluster (none of them changes what the steps compute)."""

    image: str = ""  # empty = visionops.pipeline.image.IMAGE
    s3_secret: str = policy.S3_SECRET_NAME
    #: node labels of the GPU (train) step
    node_selector: dict[str, str] = field(default_factory=dict)
    #: node labels of every step of every pipeline (e.g. a batch node pool)
    step_node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = field(default_factory=_default_tolerations)
    shm_size: str = "4Gi"
    retries: int = 3
    retry_backoff: str = "30s"
    resources: dict[str, TaskResources] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))

    def __post_init__(self) -> None:
        if not self.s3_secret:
            raise ConfigError(
                "s3_secret must name the Kubernetes Secret holding the object-storage credentials"
            )
        for toleration in self.tolerations:
            effect = toleration.get("effect")
            if effect and effect not in TOLERATION_EFFECTS:
                raise ConfigError(
                    f"toleration effect {effect!r} unknown; valid: {', '.join(TOLERATION_EFFECTS)}"
                )
        missing = sorted(set(DEFAULT_RESOURCES) - set(self.resources))
        if missing:
            raise ConfigError(f"resources missing for steps {missing}")
        if self.retries < 0:
            raise ConfigError("retries must be >= 0")

    @property
    def resolved_image(self) -> str:
        from visionops.pipeline.image import IMAGE

        return self.image or IMAGE


def parse_node_selector(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["pool=gpu", "gpu=h100"]`` -> ``{"pool": "gpu", "gpu": "h100"}``."""
    selector: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"node selector {item!r} must look like KEY=VALUE (e.g. cloud.google.com/gke-nodepool=gpu)"
            )
        selector[key] = value
    return selector


def parse_toleration(text: str) -> dict[str, str]:
    """A toleration in ``kubectl taint`` syntax: ``KEY[=VALUE][:EFFECT]`` (no value = operator Exists)."""
    spec, _, effect = text.partition(":")
    key, sep, value = spec.partition("=")
    if not key:
        raise ConfigError(
            f"toleration {text!r} must look like KEY[=VALUE][:EFFECT], e.g. nvidia.com/gpu:NoSchedule"
        )
    if effect and effect not in TOLERATION_EFFECTS:
        raise ConfigError(f"toleration effect {effect!r} unknown; valid: {', '.join(TOLERATION_EFFECTS)}")
    toleration = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration


def with_image(component, image: str):
    """The same component on another image (the body and interface are unchanged)."""
    from kfp import dsl

    if component.component_spec.implementation.container.image == image:
        return component
    return dsl.component(base_image=image, install_kfp_package=False)(component.python_func)


def configure_task(
    task, step: str, settings: ClusterSettings, *, display_name: str, retried: bool, cached: bool
):
    """Display name, resources, the Secret-sourced credentials, node selector, retries and caching of a task."""
    from kfp import kubernetes

    res = settings.resources[step]
    task.set_display_name(display_name)
    if res.cpu_request:
        task.set_cpu_request(res.cpu_request)
    if res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    if res.memory_request:
        task.set_memory_request(res.memory_request)
    if res.memory_limit:
        task.set_memory_limit(res.memory_limit)
    kubernetes.use_secret_as_env(
        task, secret_name=settings.s3_secret, secret_key_to_env={k: k for k in SECRET_KEYS}
    )
    for key, value in sorted(settings.step_node_selector.items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if retried and settings.retries:
        task.set_retry(
            num_retries=settings.retries, backoff_duration=settings.retry_backoff, backoff_factor=2.0
        )
    task.set_caching_options(enable_caching=cached)
    return task


def gpu_placement(task, gpu_count, settings: ClusterSettings):
    """GPU request (``gpu_count``), the GPU node selector, tolerations and a memory-backed /dev/shm.

    ``gpu_count`` must be a *string* pipeline parameter (or a constant): the KFP v2 driver resolves the
    accelerator-count placeholder with ``GetStringValue()`` and sets no GPU limit when that is empty, which it
    is for a number (backend/src/v2/driver/driver.go and resolve.go at 2.17.0; tests/kfp_backend.py).
    """
    from kfp import kubernetes

    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpu_count)
    for key, value in sorted(settings.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in settings.tolerations:
        kubernetes.add_toleration(
            task,
            key=toleration.get("key"),
            operator=toleration.get("operator"),
            value=toleration.get("value"),
            effect=toleration.get("effect"),
        )
    # PyTorch DataLoader workers pass batches through shared memory; a pod's default /dev/shm is 64 MiB.
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm_size
    )
    return task


def default_pipeline_getattr(module: str, attribute: str, build: Callable[[], Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` whose ``attribute`` is ``build()`` (the pipeline with default settings), built
    on first access and then kept on the module: importing a pipeline module builds nothing."""

    def __getattr__(name: str) -> Any:
        if name == attribute:
            value = build()
            setattr(sys.modules[module], name, value)
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
