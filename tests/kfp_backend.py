"""What the KFP v2 backend does with a compiled pipeline, for every field VisionOps uses.

Read from the backend's own source, kubeflow/pipelines at tag 2.17.0 (the same code since the tag named per
function; 2.14.0 is the first tag whose Argo compiler honours retries):

- backend/src/v2/driver/driver.go ``initPodSpecPatch`` / ``getPodResource``: CPU/memory from the
  ``resource*`` string fields (placeholders resolved) or else the old float fields, each through
  ``k8sres.ParseQuantity``; the accelerator type from ``resourceType`` (or ``type``) and the count from
  ``resourceCount`` (or ``count``), and a GPU limit ONLY when both resolve to non-empty strings;
- backend/src/v2/driver/resolve.go ``resolvePodSpecInputRuntimeParameter`` (util.go in 2.4.0-2.5.0): a
  ``{{$.inputs.parameters['NAME']}}`` placeholder becomes ``GetStringValue()`` of the resolved value, i.e. ""
  for a number or a boolean;
- backend/src/v2/driver/util.go ``inputPipelineChannelPattern`` (the placeholder's form);
- backend/src/v2/driver/k8s.go ``extendPodSpecPatch``: ``nodeSelector.labels``, ``tolerations``
  (key/operator/value/effect), ``secretAsEnv`` (``secretNameParameter`` or ``secretName``, else an error),
  ``emptyDirMounts`` (``k8sres.MustParse(sizeLimit)``: a bad quantity panics the driver);
- backend/src/v2/compiler/argocompiler/container.go ``addContainerExecutorTemplate`` /
  ``getTaskRetryParametersWithValues``: a task's ``retryPolicy`` makes the retry template (not on DAG
  tasks); its durations are protobuf ``Duration`` values;
- backend/src/v2/driver/cache.go / container.go: a cached result is reused only when
  ``cachingOptions.enableCache`` is true (and caching is not disabled server-wide);
- backend/src/v2/driver/dag.go: ``triggerPolicy.condition`` is a CEL expression over
  ``inputs.parameter_values``; ``== true`` only type-checks against a BOOLEAN value.

The run's parameter values are typed as the API stores them (``structpb.Value``): a NUMBER_INTEGER parameter
is a number, never a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

KFP_TAG = "2.17.0"
#: backend/src/v2/driver/util.go: inputPipelineChannelPattern / fullInputParameterRe
PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['(.+?)'\]\}\}")
#: k8s.io/apimachinery resource.ParseQuantity, the forms a pipeline uses (decimal or binary suffixes)
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$")
#: google.protobuf.Duration in JSON: seconds with an "s"
DURATION = re.compile(r"^\d+(\.\d+)?s$")
PYTHON_TYPES = {
    "STRING": str,
    "NUMBER_INTEGER": (int, float),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": bool,
    "STRUCT": dict,
    "LIST": list,
}


class BackendRejects(Exception):
    """The backend would fail this run (the driver returns an error or panics)."""


@dataclass
class TaskOnCluster:
    """One task as the driver and the Argo compiler turn it into a pod."""

    name: str
    executor: str | None
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    image: str = ""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env_from_secret: dict[str, tuple[str, str]] = field(default_factory=dict)  # env -> (secret, key)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)
    retry: dict[str, Any] | None = None
    cache: bool = False
    runs: bool = True  # the task's trigger condition held (tasks inside a DAG inherit the DAG's)


def string_value(value: Any) -> str:
    """structpb ``Value.GetStringValue()``: the string, or "" for any other kind."""
    return value if isinstance(value, str) else ""


def resolve_pod_spec_parameter(text: str, parameters: dict[str, Any]) -> str:
    """``resolvePodSpecInputRuntimeParameter``: a placeholder -> the parameter's *string* value; else as is."""
    match = PLACEHOLDER.search(text)
    if not match:
        return text
    if match.group(1) not in parameters:
        raise BackendRejects(f"executorInput did not contain input parameter {match.group(1)}")
    return string_value(parameters[match.group(1)])


def parse_quantity(text: str, what: str) -> str:
    if not QUANTITY.match(text):
        raise BackendRejects(f"{what}: {text!r} is not a Kubernetes quantity")
    return text


def run_parameters(spec: dict, arguments: dict[str, Any]) -> dict[str, Any]:
    """The root DAG's parameter values for a run: the API checks each argument against its type."""
    values = {}
    for name, definition in spec["root"]["inputDefinitions"].get("parameters", {}).items():
        if name in arguments:
            value = arguments[name]
        elif "defaultValue" in definition:
            value = definition["defaultValue"]
        elif definition.get("isOptional"):
            continue
        else:
            raise BackendRejects(f"the run lacks the required parameter {name}")
        kind = definition["parameterType"]
        if not isinstance(value, PYTHON_TYPES[kind]) or (kind != "BOOLEAN" and isinstance(value, bool)):
            raise BackendRejects(f"parameter {name} is {kind}; the run gives {value!r}")
        values[name] = value
    return values


def _task_parameters(task: dict, scope: dict[str, Any], outputs: dict[tuple[str, str], Any]) -> dict:
    values = {}
    for name, spec in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in spec:
            values[name] = scope.get(spec["componentInputParameter"])
        elif "runtimeValue" in spec:
            values[name] = spec["runtimeValue"]["constant"]
        elif "taskOutputParameter" in spec:
            ref = spec["taskOutputParameter"]
            values[name] = outputs.get((ref["producerTask"], ref["outputParameterKey"]))
    return values


def evaluate_condition(condition: str, parameters: dict[str, Any], types: dict[str, str]) -> bool:
    """The CEL conditions the SDK writes for ``dsl.If(output == True)``: ``inputs.parameter_values['X'] ==
    true|false`` (CEL has no ``string == bool`` overload: the driver fails on a non-BOOLEAN input)."""
    match = re.fullmatch(r"inputs\.parameter_values\['(.+?)'\] == (true|false)", condition)
    if not match:
        raise BackendRejects(f"condition {condition!r} is not one this emulation knows")
    name, literal = match.groups()
    if types.get(name) != "BOOLEAN":
        raise BackendRejects(f"condition {condition!r}: {name} is {types.get(name)}, CEL needs a bool")
    return parameters.get(name) is (literal == "true")


def _pod(task_name: str, executor: str, spec: dict, k8s: dict, parameters: dict) -> TaskOnCluster:
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    pod = TaskOnCluster(task_name, executor)
    res = container.get("resources", {})
    for new, old, target, key, fmt in (
        ("resourceMemoryLimit", "memoryLimit", pod.limits, "memory", "{}G"),
        ("resourceMemoryRequest", "memoryRequest", pod.requests, "memory", "{}G"),
        ("resourceCpuLimit", "cpuLimit", pod.limits, "cpu", "{}"),
        ("resourceCpuRequest", "cpuRequest", pod.requests, "cpu", "{}"),
    ):  # getPodResource: the new string field wins; the old float only when the new one is unset
        if res.get(new):
            target[key] = parse_quantity(resolve_pod_spec_parameter(res[new], parameters), new)
        elif res.get(old):
            target[key] = parse_quantity(fmt.format(res[old]), old)
    accelerator = res.get("accelerator")
    if accelerator:
        kind = (
            resolve_pod_spec_parameter(accelerator["resourceType"], parameters)
            if accelerator.get("resourceType")
            else accelerator.get("type", "")
        )
        if accelerator.get("resourceCount"):
            count = resolve_pod_spec_parameter(accelerator["resourceCount"], parameters)
        else:
            count = str(accelerator["count"]) if int(accelerator.get("count", 0)) > 0 else ""
        if kind and count:  # else: no limit, silently
            pod.limits[kind] = parse_quantity(count, "accelerator count")
    pod.image = resolve_pod_spec_parameter(container["image"], parameters)
    config = k8s.get(executor, {})
    pod.node_selector = dict(config.get("nodeSelector", {}).get("labels", {}))
    pod.tolerations = [
        {k: t[k] for k in ("key", "operator", "value", "effect", "tolerationSeconds") if t.get(k)}
        for t in config.get("tolerations", [])
    ]
    for secret in config.get("secretAsEnv", []):
        if "secretNameParameter" in secret:
            name = string_value(secret["secretNameParameter"]["runtimeValue"]["constant"])
        elif secret.get("secretName"):
            name = secret["secretName"]
        else:
            raise BackendRejects("missing either SecretName or SecretNameParameter for secret env")
        for pair in secret["keyToEnv"]:
            pod.env_from_secret[pair["envVar"]] = (name, pair["secretKey"])
    for mount in config.get("emptyDirMounts", []):
        limit = mount.get("sizeLimit")
        if limit:
            parse_quantity(limit, "emptyDir sizeLimit (k8sres.MustParse panics)")
        pod.volumes[mount["volumeName"]] = {
            "emptyDir": {"medium": mount.get("medium", ""), "sizeLimit": limit}
        }
        pod.mounts[mount["volumeName"]] = mount["mountPath"]
    return pod


def _retry(task: dict, spec: dict) -> dict | None:
    policy = task.get("retryPolicy")
    if policy is None or "dag" in spec["components"][task["componentRef"]["name"]]:
        return None
    for key in ("backoffDuration", "backoffMaxDuration"):
        if key in policy and not DURATION.match(policy[key]):
            raise BackendRejects(f"retryPolicy.{key} {policy[key]!r} is not a protobuf Duration")
    return {
        "limit": int(policy.get("maxRetryCount", 0)),
        "backoff": policy.get("backoffDuration"),
        "factor": policy.get("backoffFactor"),
    }


def emulate_run(
    spec: dict, platform: dict, arguments: dict[str, Any], outputs: dict[tuple[str, str], Any] | None = None
) -> dict[str, TaskOnCluster]:
    """Every task of a run (nested DAGs included) as the backend would set it up; ``outputs`` are the
    producer tasks' output parameters that conditions read, e.g. ``{("evaluate", "Output"): True}``."""
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    outputs = outputs or {}
    tasks: dict[str, TaskOnCluster] = {}

    def walk(dag: dict, scope: dict[str, Any], runs: bool) -> None:
        for name, task in dag["tasks"].items():
            component = spec["components"][task["componentRef"]["name"]]
            parameters = _task_parameters(task, scope, outputs)
            condition = task.get("triggerPolicy", {}).get("condition")
            holds = runs
            if condition:
                types = {
                    key: _output_type(spec, value["taskOutputParameter"])
                    for key, value in task.get("inputs", {}).get("parameters", {}).items()
                    if "taskOutputParameter" in value
                }
                holds = runs and evaluate_condition(condition, parameters, types)
            if "dag" in component:
                tasks[name] = TaskOnCluster(name, None, runs=holds)
                walk(component["dag"], parameters, holds)
                continue
            pod = _pod(name, component["executorLabel"], spec, k8s, parameters)
            pod.retry = _retry(task, spec)
            pod.cache = bool(task.get("cachingOptions", {}).get("enableCache"))
            pod.runs = holds
            tasks[name] = pod

    walk(spec["root"]["dag"], run_parameters(spec, arguments), True)
    return tasks


def _output_type(spec: dict, ref: dict) -> str | None:
    for dag in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]:
        if ref["producerTask"] in dag["tasks"]:
            component = spec["components"][dag["tasks"][ref["producerTask"]]["componentRef"]["name"]]
            out = component.get("outputDefinitions", {}).get("parameters", {})
            return out.get(ref["outputParameterKey"], {}).get("parameterType")
    return None


def dropped_gpu_requests(spec: dict, platform: dict, arguments: dict[str, Any]) -> list[str]:
    """Tasks whose compiled accelerator request the backend would drop for these run arguments."""
    executors = spec["deploymentSpec"]["executors"]
    problems = []
    for task in emulate_run(spec, platform, arguments).values():
        accelerator = executors.get(task.executor, {}).get("container", {}).get("resources", {})
        accelerator = accelerator.get("accelerator")
        if accelerator and not any(
            k in task.limits for k in (accelerator.get("resourceType"), accelerator.get("type"))
        ):
            problems.append(
                f"{task.name}: the accelerator count {accelerator.get('resourceCount') or accelerator.get('count')!r} "
                "resolves to '' (GetStringValue of a non-string parameter): the pod gets no GPU limit"
            )
    return problems
