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
from dataclasses import dataclass
from typing import Any, ClassVar

from visionops import policy
from visionops.errors import ConfigError
from visionops.settings import Settings, setting

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


# The repeatable CLI options arrive joined with "," (visionops.settings); Kubernetes label keys and values and
# taint keys and values cannot hold a comma, so splitting there gives back the items typed.
def _selector_text(raw: str) -> dict[str, str]:
    return parse_node_selector([item for item in raw.split(",") if item])


def _render_selector(selector: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in selector.items())


def _tolerations_text(raw: str) -> tuple[dict[str, str], ...]:
    return tuple(parse_toleration(item) for item in raw.split(",") if item)


def _render_tolerations(tolerations: tuple[dict[str, str], ...]) -> str:
    def one(t: dict[str, str]) -> str:
        value = f"={t['value']}" if "value" in t else ""
        return t["key"] + value + (f":{t['effect']}" if t.get("effect") else "")

    return ",".join(one(t) for t in tolerations)


def _known_effects(tolerations: tuple[dict[str, str], ...]) -> bool:
    return all(not t.get("effect") or t["effect"] in TOLERATION_EFFECTS for t in tolerations)


def _every_step(resources: dict[str, TaskResources]) -> bool:
    return set(DEFAULT_RESOURCES) <= set(resources)


@dataclass(frozen=True)
class ClusterSettings(Settings):
    """Compile-time settings of a pipeline on a cluster (none of them changes what the steps compute).

    One field per cluster option of ``visionops pipeline compile`` and ``submit`` (generated by
    :func:`visionops.settings.options_command`); no environment variables (the image's own default comes from
    ``VISIONOPS_IMAGE`` through :class:`visionops.settings.ProcessSettings`).
    """

    kind: ClassVar[str] = "cluster settings"

    image: str = setting(
        "",
        "Container image of every step (empty: visionops.DEFAULT_IMAGE or $VISIONOPS_IMAGE).",
        flags=("--image",),
    )
    s3_secret: str = setting(
        policy.S3_SECRET_NAME,
        "Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_ENDPOINT_URL.",
        flags=("--secret",),
        check=bool,
        must="must name the Kubernetes Secret holding the object-storage credentials",
    )
    node_selector: dict[str, str] = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        help="Node label KEY=VALUE the train (GPU) step must run on (repeatable).",
        default_factory=dict,
        flags=("--node-selector",),
        multiple=True,
        parse=_selector_text,
        render=_render_selector,
    )
    step_node_selector: dict[str, str] = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        help="Node label KEY=VALUE every step of the pipeline must run on (repeatable), e.g. a batch node pool.",
        default_factory=dict,
        flags=("--step-node-selector",),
        multiple=True,
        parse=_selector_text,
        render=_render_selector,
    )
    tolerations: tuple[dict[str, str], ...] = setting(
        help="Train-step toleration KEY[=VALUE][:EFFECT] (repeatable; default nvidia.com/gpu:NoSchedule).",
        default_factory=_default_tolerations,
        flags=("--toleration",),
        multiple=True,
        parse=_tolerations_text,
        render=_render_tolerations,
        check=_known_effects,
        must=f"effects must be one of {', '.join(TOLERATION_EFFECTS)}",
    )
    shm_size: str = setting(
        "4Gi", "Size of the memory-backed /dev/shm of the train step.", flags=("--shm-size",)
    )
    retries: int = setting(
        3,
        "Retries (exponential backoff) of the steps that do I/O.",
        check=lambda v: v >= 0,
        must="must be >= 0",
    )
    retry_backoff: str = setting("30s", "First retry's backoff (doubled each retry).")
    resources: dict[str, TaskResources] = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        help="CPU/memory requests and limits per step.",
        default_factory=lambda: dict(DEFAULT_RESOURCES),
        cli=False,
        check=_every_step,
        must=f"must name every step: {', '.join(DEFAULT_RESOURCES)}",
    )

    @property
    def resolved_image(self) -> str:
        from visionops.pipeline.image import IMAGE

        return self.image or IMAGE


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
