"""Roll a model bundle out to serving: a Kubernetes Deployment (rolling update) or a local state file.

Deploying a model never builds an image: serving is one generic image plus ``VISIONOPS_MODEL_URI``. On
Kubernetes the URI lives in the Deployment's pod template, so every deploy is a new ReplicaSet revision that
``kubectl rollout undo`` can revert, and ``kubectl set env`` does the same thing by hand.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.errors import StorageError, VisionOpsError

log = logging.getLogger(__name__)

TARGETS = ("kubernetes", "local", "none")
MODEL_URI_ENV = "VISIONOPS_MODEL_URI"
DEFAULT_NAMESPACE = "visionops"
DEFAULT_DEPLOYMENT = "visionops-serving"
#: The containers of the serving pod that load the model (serving and the drift sidecar); ``deploy`` patches
#: every container of the Deployment that sets VISIONOPS_MODEL_URI unless told otherwise.
DEFAULT_CONTAINERS = ("serving", "drift-monitor")
STATE_FILE = "current_model.json"
BUNDLE_MARKER = "bundle.json"
_HISTORY = 20
_API_TIMEOUT_S = 30


class DeployError(VisionOpsError):
    """A model could not be rolled out (no access, no such Deployment, rollout stuck or timed out)."""


def deploy(
    model_uri: str,
    *,
    target: str = "kubernetes",
    namespace: str = DEFAULT_NAMESPACE,
    deployment: str = DEFAULT_DEPLOYMENT,
    container: str | Sequence[str] | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    state_dir: str | Path | None = None,
    check_bundle: bool = True,
    rollback_on_failure: bool = True,
    client_configuration: Any = None,
) -> dict[str, Any]:
    """Point serving at ``model_uri`` and return a record of what was done.

    ``target="kubernetes"``: set ``VISIONOPS_MODEL_URI`` on ``container`` (default: every container of the
    Deployment that already sets it, i.e. serving and the drift sidecar) with a strategic-merge PATCH, then
    wait until the rollout is complete (``observedGeneration``, ``updatedReplicas == replicas``, all
    available). A rollout that does not finish within ``timeout_s`` (or hits its progress deadline) raises
    :class:`DeployError`; with ``rollback_on_failure`` the previous URI is patched back first.
    ``client_configuration`` is a ``kubernetes.client.Configuration`` (default: in-cluster config, else
    ``~/.kube/config``).

    ``target="local"``: write ``<state_dir>/current_model.json`` atomically (a local serving process restarts
    from it; see :func:`read_current_model`). ``target="none"``: record nothing.
    """
    model_uri = _check_uri(model_uri, target)
    if check_bundle and target != "none":
        try:
            storage.require_marker(model_uri, BUNDLE_MARKER, "model bundle")
        except StorageError as exc:
            raise DeployError(f"refusing to deploy {model_uri}: {exc}") from exc
    if target == "none":
        log.info("deploy target 'none': %s recorded nowhere", model_uri)
        return {"target": "none", "model_uri": model_uri, "changed": False}
    if target == "local":
        if state_dir is None:
            raise DeployError("target 'local' needs state_dir (the directory holding current_model.json)")
        return _deploy_local(model_uri, Path(state_dir))
    if timeout_s <= 0 or poll_s <= 0:
        raise DeployError(f"timeout_s and poll_s must be > 0 (got timeout_s={timeout_s}, poll_s={poll_s})")
    api = _apps_api(client_configuration)
    return _deploy_kubernetes(
        api,
        model_uri,
        namespace=namespace,
        deployment=deployment,
        containers=[container] if isinstance(container, str) else container,
        timeout_s=timeout_s,
        poll_s=poll_s,
        rollback_on_failure=rollback_on_failure,
    )


def read_current_model(state_dir: str | Path) -> dict[str, Any] | None:
    """The record written by the local target (``model_uri``, ``deployed_at``, ``history``), or None."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(f"{path} is not readable JSON ({exc}); delete it and deploy again") from exc


# -- validation ---------------------------------------------------------------------------------------------
def _check_uri(model_uri: str, target: str) -> str:
    if target not in TARGETS:
        raise DeployError(f"unknown deploy target {target!r}; valid targets: {', '.join(TARGETS)}")
    model_uri = str(model_uri or "").strip()
    if not model_uri:
        raise DeployError("model URI is empty; pass the bundle URI, e.g. s3://models/glasses/v7")
    if target == "kubernetes" and not storage.is_remote(model_uri):
        raise DeployError(
            f"model URI {model_uri!r} is not an s3:// URI: serving pods pull the bundle from object storage, "
            "so publish it there first (e.g. s3://models/glasses/v7)"
        )
    return model_uri


# -- local target -------------------------------------------------------------------------------------------
def _deploy_local(model_uri: str, state_dir: Path) -> dict[str, Any]:
    previous = read_current_model(state_dir)
    previous_uri = previous.get("model_uri") if previous else None
    now = datetime.now(UTC).isoformat(timespec="seconds")
    history = list(previous.get("history", [])) if previous else []
    history.append({"model_uri": model_uri, "deployed_at": now})
    record = {
        "model_uri": model_uri,
        "previous_model_uri": previous_uri,
        "deployed_at": now,
        "history": history[-_HISTORY:],
    }
    path = _write_json_atomic(state_dir / STATE_FILE, record)
    log.info("local deploy: %s -> %s (%s)", previous_uri, model_uri, path)
    return {
        "target": "local",
        "model_uri": model_uri,
        "previous_model_uri": previous_uri,
        "changed": previous_uri != model_uri,
        "state_file": str(path),
        "deployed_at": now,
    }


def _write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Temp file in the same directory, fsync, rename: a reader sees the old or the new record, never half."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise DeployError(f"cannot write {path}: {exc}") from exc
    return path


# -- kubernetes target --------------------------------------------------------------------------------------
def _apps_api(client_configuration: Any):
    """An AppsV1Api: the given Configuration, else in-cluster config, else the local kubeconfig."""
    from kubernetes import client, config

    if client_configuration is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                # KUBECONFIG is read now, not when the kubernetes package was imported.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
            except (config.ConfigException, OSError) as exc:
                raise DeployError(
                    "no Kubernetes credentials: not running in a pod and no usable kubeconfig "
                    f"({exc}); set KUBECONFIG or run the deploy step in the cluster"
                ) from exc
        return client.AppsV1Api()
    return client.AppsV1Api(client.ApiClient(client_configuration))


def _api_call(what: str, ref: str, fn, *args, **kwargs):
    """Call the API and turn its errors into DeployErrors that say what to do."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, _request_timeout=_API_TIMEOUT_S, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            hint = "apply the manifests first (kubectl apply -k manifests/overlays/dev) or pass --deployment/--namespace"
            raise DeployError(f"{what} {ref}: not found; {hint}") from exc
        if exc.status in (401, 403):
            raise DeployError(
                f"{what} {ref}: forbidden ({exc.status}); the deploy step's ServiceAccount needs get and patch on "
                "that Deployment (kubectl apply -k manifests/rbac)"
            ) from exc
        raise DeployError(f"{what} {ref}: API server answered {exc.status} {exc.reason}: {exc.body}") from exc
    except (HTTPError, OSError) as exc:
        raise DeployError(f"{what} {ref}: cannot reach the Kubernetes API server ({exc})") from exc


def _model_uri_containers(dep: Any, wanted: Sequence[str] | None, ref: str) -> dict[str, str | None]:
    """{container name: current VISIONOPS_MODEL_URI} for the containers to patch."""
    containers = dep.spec.template.spec.containers or []
    current = {
        c.name: next((e.value for e in c.env or [] if e.name == MODEL_URI_ENV), None) for c in containers
    }
    if wanted:
        missing = [name for name in wanted if name not in current]
        if missing:
            raise DeployError(
                f"deployment {ref} has no container named {', '.join(missing)}; its containers: "
                f"{', '.join(current) or 'none'}"
            )
        return {name: current[name] for name in wanted}
    names = [c.name for c in containers if any(e.name == MODEL_URI_ENV for e in c.env or [])]
    if not names:
        raise DeployError(
            f"no container of deployment {ref} sets {MODEL_URI_ENV}; pass container= (e.g. {DEFAULT_CONTAINERS[0]})"
        )
    return {name: current[name] for name in names}


def _patch_body(model_uri: str, containers: Sequence[str]) -> dict[str, Any]:
    """Strategic merge patch: env entries merge by name; ``valueFrom: None`` drops a ConfigMap reference."""
    env = [{"name": MODEL_URI_ENV, "value": model_uri, "valueFrom": None}]
    return {
        "metadata": {"annotations": {"kubernetes.io/change-cause": f"visionops deploy {model_uri}"}},
        "spec": {"template": {"spec": {"containers": [{"name": name, "env": env} for name in containers]}}},
    }


def rollout_state(dep: Any, generation: int) -> tuple[bool, str]:
    """(complete, what we are waiting for), the same rules as ``kubectl rollout status``.

    Raises DeployError when the Deployment reports ProgressDeadlineExceeded: it will not finish by itself.
    """
    status, spec = dep.status, dep.spec
    for cond in status.conditions or []:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            raise DeployError(f"rollout exceeded its progress deadline: {cond.message}")
    if (status.observed_generation or 0) < generation:
        return False, f"waiting for the controller to observe generation {generation}"
    want = spec.replicas if spec.replicas is not None else 1
    updated, total, available = (
        status.updated_replicas or 0,
        status.replicas or 0,
        status.available_replicas or 0,
    )
    if updated < want:
        return False, f"{updated} of {want} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available} of {want} replicas updated and available"


def _deploy_kubernetes(
    api: Any,
    model_uri: str,
    *,
    namespace: str,
    deployment: str,
    containers: Sequence[str] | None,
    timeout_s: float,
    poll_s: float,
    rollback_on_failure: bool,
) -> dict[str, Any]:
    ref = f"{namespace}/{deployment}"
    started = time.monotonic()
    dep = _api_call("reading deployment", ref, api.read_namespaced_deployment, deployment, namespace)
    current = _model_uri_containers(dep, containers, ref)
    previous = sorted({uri for uri in current.values() if uri})
    changed = any(uri != model_uri for uri in current.values())
    if changed:
        body = _patch_body(model_uri, list(current))
        dep = _api_call(
            "patching deployment", ref, api.patch_namespaced_deployment, deployment, namespace, body
        )
        log.info("deployment %s: %s set to %s on %s", ref, MODEL_URI_ENV, model_uri, ", ".join(current))
    else:
        log.info("deployment %s already runs %s; checking that its rollout is complete", ref, model_uri)
    generation = dep.metadata.generation or 0
    try:
        state = _wait_for_rollout(api, ref, deployment, namespace, generation, started + timeout_s, poll_s)
    except DeployError as exc:
        message = str(exc)
        if changed and rollback_on_failure and len(previous) == 1:
            body = _patch_body(previous[0], list(current))
            try:
                _api_call("rolling back", ref, api.patch_namespaced_deployment, deployment, namespace, body)
                message += f"; rolled back to {previous[0]} (the previous pods kept serving meanwhile)"
            except DeployError as rollback_exc:
                message += (
                    f"; the rollback failed too ({rollback_exc}): "
                    f"kubectl -n {namespace} rollout undo deployment/{deployment}"
                )
        else:
            message += f"; to roll back: kubectl -n {namespace} rollout undo deployment/{deployment}"
        raise DeployError(f"deploying {model_uri} to {ref} failed: {message}") from exc
    return {
        "target": "kubernetes",
        "model_uri": model_uri,
        "previous_model_uri": previous[0] if len(previous) == 1 else (previous or None),
        "changed": changed,
        "namespace": namespace,
        "deployment": deployment,
        "containers": list(current),
        "generation": generation,
        "replicas": state.spec.replicas,
        "updated_replicas": state.status.updated_replicas or 0,
        "available_replicas": state.status.available_replicas or 0,
        "duration_s": round(time.monotonic() - started, 3),
    }


def _wait_for_rollout(
    api: Any, ref: str, name: str, namespace: str, generation: int, deadline: float, poll_s: float
) -> Any:
    """Poll the Deployment until its rollout is complete; DeployError on deadline or timeout."""
    last_log = 0.0
    while True:
        dep = _api_call("reading deployment", ref, api.read_namespaced_deployment, name, namespace)
        done, message = rollout_state(dep, generation)
        if done:
            log.info("deployment %s rolled out: %s", ref, message)
            return dep
        now = time.monotonic()
        if now >= deadline:
            raise DeployError(
                f"rollout not complete when the timeout ran out ({message}); look at the new pods: "
                f"kubectl -n {namespace} get pods -l {_selector(dep)} and kubectl -n {namespace} describe "
                f"deployment/{name}"
            )
        if now - last_log >= 10:
            log.info("deployment %s: %s", ref, message)
            last_log = now
        time.sleep(min(poll_s, max(deadline - now, 0.01)))


def _selector(dep: Any) -> str:
    labels = (dep.spec.selector.match_labels or {}) if dep.spec.selector else {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<selector>"
