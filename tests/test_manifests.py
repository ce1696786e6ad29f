"""The Kubernetes manifests and the Dockerfile, checked offline (there is no cluster and no Docker engine here).

Every kustomization is rendered with ``kubectl kustomize``; every object is validated in strict mode against the
Kubernetes schemas (``kubernetes-validate``) or, for CRDs, against ``manifests/schemas/``. Cross-checks then
catch the mistakes that validate fine but break on a cluster: selectors that match no pod, ports and probe paths
that the code does not serve, settings the code does not read, plaintext credentials, a wrong image tag.
Where possible the truth is read from the code (settings classes, route definitions, metric definitions).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import visionops
import yaml
from PIL import Image
from visionops import storage

from tests.conftest import free_port, require_binary
from tests.test_drift_support import feature_bundle

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
SCHEMAS = MANIFESTS / "schemas"
K8S_VERSION = "1.33.0"
KUSTOMIZATIONS = [
    "base",
    "overlays/dev",
    "overlays/gpu",
    "overlays/canary",
    "overlays/shadow",
    "observability",
    "rbac",
    "experiments",
]
#: kustomizations that only make sense inside another one (a Component; the shared pod; overlay parts)
PARTS = {
    "components/model-uri",
    "components/canary",
    "components/canary/deployment",
    "components/shadow",
    "components/shadow/deployment",
    "components/flagger",
    "base/deployment",
}
SERVING_KUSTOMIZATIONS = [k for k in KUSTOMIZATIONS if k == "base" or k.startswith("overlays/")]
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway-v1.json",
    ("flagger.app/v1beta1", "Canary"): "canary-flagger-v1beta1.json",
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): "alertmanagerconfig-monitoring-v1alpha1.json",
}
SERVING, MONITOR = "serving", "drift-monitor"


# -- rendering and the truth from the code ------------------------------------------------------------------
@cache
def render(name: str) -> tuple[dict, ...]:
    kubectl = require_binary("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS / name)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kubectl kustomize {name} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def objects(name: str, kind: str) -> list[dict]:
    return [o for o in render(name) if o["kind"] == kind]


def one(name: str, kind: str, obj_name: str) -> dict:
    found = [o for o in objects(name, kind) if o["metadata"]["name"] == obj_name]
    assert len(found) == 1, f"{name}: expected one {kind} {obj_name}, found {len(found)}"
    return found[0]


def config_data(name: str) -> dict[str, str]:
    """The data of the generated (hash-suffixed) visionops-config ConfigMap of a kustomization."""
    (config,) = [
        c for c in objects(name, "ConfigMap") if c["metadata"]["name"].startswith("visionops-config")
    ]
    return config["data"]


def render_overlay(tmp_path: Path, text: str) -> tuple[dict, ...]:
    """Render a user's own overlay (in tmp_path, paths given relative to manifests/ as MANIFESTS/...)."""
    kubectl = require_binary("kubectl")
    rel = os.path.relpath(MANIFESTS, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(text.replace("MANIFESTS", rel))
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def containers(deployment: dict) -> dict[str, dict]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def effective_env(name: str, container: dict) -> dict[str, str | None]:
    """Names -> literal values (None for secret/field refs) the container sees, envFrom ConfigMaps included."""
    values: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        values.update(one(name, "ConfigMap", ref)["data"])
    for var in container.get("env", []):
        values[var["name"]] = var.get("value")
    return values


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@cache
def code_settings() -> dict[str, set[str]]:
    """The VISIONOPS_* variables each role's settings class reads (from the code, not from the docs)."""
    from visionops.auth import AuthSettings
    from visionops.drift.settings import MonitorSettings
    from visionops.serving import settings
    from visionops.settings import env_vars

    control = set(env_vars(AuthSettings))  # both roles check control requests (visionops.auth)
    return {
        SERVING: set(settings.ENV_VARS) | control,
        MONITOR: set(env_vars(MonitorSettings)) | control,
    }


@cache
def code_probe_paths() -> dict[str, set[str]]:
    """GET paths the two processes answer: BentoML's system routes for serving, the sidecar's do_GET."""
    from bentoml._internal.server.base_app import BaseAppFactory
    from visionops.drift import service

    serving = set(re.findall(r'"(/[a-z]+)"', inspect.getsource(BaseAppFactory.get_system_routes)))
    handler = inspect.getsource(service)
    do_get = handler[handler.index("def do_GET") : handler.index("def do_POST")]
    return {SERVING: serving, MONITOR: set(re.findall(r'path == "(/[a-z]+)"', do_get))}


@cache
def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text[text.index("## Prometheus metric names") :]
    return set(re.findall(r"`(visionops_[a-z_]+)", section))


@cache
def code_metrics() -> set[str]:
    """Metric names the serving and drift code define (prometheus_client adds _total to counters)."""
    names: set[str] = set()
    for area in ("serving", "drift"):
        for path in (ROOT / "components" / "visionops" / area).glob("*.py"):
            names |= set(re.findall(r'"(visionops_[a-z_]+)"', path.read_text()))
    return names | {f"{n}_total" for n in names if not n.endswith("_total")}


def metric_names(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b(visionops_[a-z_]+)", expr)}


def base_metric(name: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", name)


# -- rendering and schema validation ------------------------------------------------------------------------
def test_every_kustomization_is_tested():
    found = {str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml")}
    assert found == set(KUSTOMIZATIONS) | PARTS


def validate(obj: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
        jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(name):
    rendered = render(name)
    assert rendered, f"{name} renders nothing"
    for obj in rendered:
        try:
            validate(obj)
        except Exception as exc:  # name the object in the failure
            pytest.fail(f"{name}: {obj['kind']} {obj['metadata'].get('name')} is invalid: {exc}")
        assert obj["metadata"].get("namespace") or obj["kind"] == "Namespace", obj["metadata"]["name"]


def test_validation_is_strict_for_builtins_and_crds():
    for path in SCHEMAS.glob("*.json"):
        jsonschema.Draft7Validator.check_schema(json.loads(path.read_text()))
    assert {p.name for p in SCHEMAS.glob("*.json")} == set(CRD_SCHEMAS.values())
    deployment = copy.deepcopy(one("base", "Deployment", "visionops-serving"))
    containers(deployment)[SERVING]["livenessProbe"]["httpGett"] = {"path": "/livez"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = copy.deepcopy(one("observability", "ServiceMonitor", "visionops-serving"))
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    rule = copy.deepcopy(one("observability", "PrometheusRule", "visionops"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "30 minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate(rule)


# -- the image ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SERVING_KUSTOMIZATIONS)
def test_image_tag_is_the_package_version(name):
    assert visionops.DEFAULT_IMAGE.endswith(f":{visionops.__version__}")
    for dep in objects(name, "Deployment"):
        for container in containers(dep).values():
            assert container["image"] == visionops.DEFAULT_IMAGE, (dep["metadata"]["name"], container["name"])


def test_dockerfile_matches_ci_install_and_runs_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    code = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    froms = re.findall(r"^FROM\s+(\S+)", code, flags=re.M)
    base_args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", code, flags=re.M))
    # `scratch` is the empty wheelhouse stage: nothing is pulled for it
    images = [
        base_args.get(f.strip("${}"), f) for f in froms if not f.startswith("builder") and f != "scratch"
    ]
    assert len(froms) >= 2, "multi-stage build expected"
    for image in images:
        assert ":" in image and not image.endswith(":latest"), f"base image not pinned: {image}"
        assert re.search(r":\d+\.\d+\.\d+", image), f"base image not pinned to a full version: {image}"
    # the same two install commands CI runs (Makefile), with the same constraints file
    for packages in ("torch torchvision", "-e '.[dev]'"):
        assert f"-c constraints.txt {packages}" in makefile
    assert re.search(r"pip install .*-c constraints\.txt torch torchvision", code)
    assert re.search(r"pip install .*-c constraints\.txt \.(\s|$)", code)
    assert re.search(r"^USER\s+10001", code, flags=re.M)
    assert re.search(r'^ENTRYPOINT\s+\["visionops"\]', code, flags=re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".git", "runs", "tests"):
        assert path in ignored or f"{path}/" in ignored


# -- wiring: selectors, ports, probes, settings -------------------------------------------------------------
@pytest.mark.parametrize("name", SERVING_KUSTOMIZATIONS)
def test_services_select_pods_and_target_their_ports(name):
    deployments = objects(name, "Deployment")
    for service in objects(name, "Service"):
        selector = service["spec"]["selector"]
        selected = [d for d in deployments if selects(selector, d["spec"]["template"]["metadata"]["labels"])]
        assert selected, f"{name}: Service {service['metadata']['name']} selects no pod"
        for dep in selected:
            ports = {
                p["name"]: p["containerPort"] for c in containers(dep).values() for p in c.get("ports", [])
            }
            for port in service["spec"]["ports"]:
                target = port["targetPort"]
                assert target in ports or target in ports.values(), (service["metadata"]["name"], target)
                assert ports.get(target, target) != 8001, "the drift sidecar's port must not be in a Service"
    for dep in deployments:  # a Deployment's selector must match its own pods
        assert selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("name", SERVING_KUSTOMIZATIONS)
def test_ports_args_and_probe_paths_match_the_code(name):
    paths = code_probe_paths()
    assert {"/livez", "/readyz"} <= paths[SERVING] and {"/healthz", "/metrics"} <= paths[MONITOR]
    for dep in objects(name, "Deployment"):
        by_name = containers(dep)
        assert set(by_name) == {SERVING, MONITOR}
        serving, monitor = by_name[SERVING], by_name[MONITOR]
        assert serving["args"][0] == "serve" and monitor["args"][0] == "monitor"
        http_port = {p["name"]: p["containerPort"] for p in serving["ports"]}["http"]
        monitor_port = {p["name"]: p["containerPort"] for p in monitor["ports"]}["monitor"]
        args = serving["args"]
        assert (
            args[args.index("--port") + 1] == str(http_port) and args[args.index("--host") + 1] == "0.0.0.0"
        )
        assert env_of(monitor)["VISIONOPS_MONITOR_PORT"]["value"] == str(monitor_port)
        assert env_of(serving)["VISIONOPS_MONITOR_URL"]["value"] == f"http://127.0.0.1:{monitor_port}"
        for role, container in by_name.items():
            ports = {p["name"] for p in container["ports"]}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                assert get["path"] in paths[role], f"{role} {probe}: {get['path']} is not served"
                assert get["port"] in ports


@pytest.mark.parametrize("name", SERVING_KUSTOMIZATIONS)
def test_settings_are_ones_the_code_reads_and_required_ones_are_set(name):
    read = code_settings()
    every = read[SERVING] | read[MONITOR]
    for dep in objects(name, "Deployment"):
        for role, container in containers(dep).items():
            env = effective_env(name, container)
            unknown = {k for k in env if k.startswith("VISIONOPS_")} - every
            assert not unknown, f"{role}: settings no code reads: {unknown}"
            explicit = {k for k in env_of(container) if k.startswith("VISIONOPS_")}
            assert explicit <= read[role], f"{role} sets {explicit - read[role]} it does not read"
            # required: the model, the object store and its credentials (from the Secret)
            assert str(env.get("VISIONOPS_MODEL_URI") or "").startswith("s3://")
            assert env.get("S3_ENDPOINT_URL", "").startswith("http")
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ref = env_of(container)[key]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "visionops-s3", "key": key}
        # serving and its sidecar always load the same bundle
        uris = {env_of(c)["VISIONOPS_MODEL_URI"]["value"] for c in containers(dep).values()}
        assert len(uris) == 1, f"{dep['metadata']['name']}: containers load different models {uris}"


def test_configmap_model_uri_reaches_the_pod_template():
    for name in SERVING_KUSTOMIZATIONS:
        config = next(
            c for c in objects(name, "ConfigMap") if c["metadata"]["name"].startswith("visionops-config")
        )
        stable = one(name, "Deployment", "visionops-serving")
        for container in containers(stable).values():
            assert env_of(container)["VISIONOPS_MODEL_URI"]["value"] == config["data"]["VISIONOPS_MODEL_URI"]
            # envFrom points at the generated (hash-suffixed) ConfigMap, so config changes roll the pods
            assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]


# -- safety -------------------------------------------------------------------------------------------------
def looks_like_key(value: str) -> bool:
    """An access key id, a PEM block, or a long mixed-case-and-digits token that is not a URL or path."""
    if re.search(r"(AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN", value):
        return True
    for token in value.split():
        if "://" in token or token.startswith("/"):
            continue
        if re.fullmatch(r"[A-Za-z0-9+/=_-]{20,}", token) and all(
            re.search(p, token) for p in ("[a-z]", "[A-Z]", "[0-9]")
        ):
            return True
    return False


def test_credential_detector():
    assert looks_like_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")  # AWS's documented example secret
    assert looks_like_key("AKIAIOSFODNN7EXAMPLE")
    assert not looks_like_key("s3://visionops/models/glasses/champion")
    assert not looks_like_key("http://ml-pipeline.kubeflow.svc.cluster.local:8888")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_plaintext_credentials(name):
    for obj in render(name):
        assert obj["kind"] != "Secret", f"{name} ships a Secret: credentials never live in the repository"
        if obj["kind"] == "ConfigMap" and "grafana_dashboard" not in obj["metadata"].get("labels", {}):
            for key, value in obj["data"].items():
                assert not looks_like_key(value), f"{key} looks like a credential"
                assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", key), key
    for dep in objects(name, "Deployment"):
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        for container in containers(dep).values():
            secret_dirs = [
                m["mountPath"] for m in container.get("volumeMounts", []) if "secret" in volumes[m["name"]]
            ]
            for var in container.get("env", []):
                value = var.get("value", "")
                assert not looks_like_key(value), f"{var['name']} looks like a credential"
                if var["name"].endswith(("_TOKEN_FILE", "_KEY_FILE")):  # a path into a mounted Secret
                    assert any(value.startswith(d + "/") for d in secret_dirs), (var, secret_dirs)
                elif re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|_KEY$", var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), (
                        f"{var['name']} must come from a Secret"
                    )
    for example_file in ("secret.example.yaml", "secret-control.example.yaml"):
        example = yaml.safe_load((MANIFESTS / "base" / example_file).read_text())
        for key, value in example["stringData"].items():
            assert value.startswith("REPLACE_WITH_") or "KEY" not in key.upper(), f"{key}: placeholders only"
            if example_file == "secret-control.example.yaml":
                assert value.startswith("REPLACE_WITH_"), f"{key}: placeholders only"
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not [r for r in resources if r.endswith(".example.yaml")], kustomization


@pytest.mark.parametrize("name", SERVING_KUSTOMIZATIONS)
def test_every_container_is_locked_down(name):
    for dep in objects(name, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (container["name"], kind)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, (container["name"], probe)
            # every writable place is an emptyDir with a size limit, /tmp included; Secrets are read-only
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts
            for mount in container["volumeMounts"]:
                volume = volumes[mount["name"]]
                if "secret" in volume:
                    assert mount.get("readOnly") is True and volume["secret"]["defaultMode"] == 0o440, mount
                elif "projected" in volume:  # the KFP token: read-only, never writable
                    assert mount.get("readOnly") is True, mount
                else:
                    assert volume["emptyDir"]["sizeLimit"]
            env = env_of(container)
            for var in ("BENTOML_HOME", "XDG_CACHE_HOME"):
                if var in env:
                    path = env[var]["value"]
                    assert any(path == m or path.startswith(m + "/") for m in mounts), (
                        f"{var}={path} not writable"
                    )
        assert "BENTOML_HOME" in env_of(containers(dep)[SERVING])


def test_example_secret_has_every_key_serving_and_the_pipeline_read():
    from visionops.pipeline.training import SECRET_KEYS, ClusterSettings

    example = yaml.safe_load((MANIFESTS / "base" / "secret.example.yaml").read_text())
    referenced = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for name in SERVING_KUSTOMIZATIONS
        for dep in objects(name, "Deployment")
        for container in containers(dep).values()
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert example["metadata"]["name"] == "visionops-s3" == ClusterSettings().s3_secret
    assert referenced | set(SECRET_KEYS) <= set(example["stringData"])


def test_namespace_enforces_restricted_pod_security():
    labels = one("base", "Namespace", "visionops")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_networkpolicy_admits_the_api_and_only_prometheus_and_alertmanager_to_the_sidecar():
    policy = one("base", "NetworkPolicy", "visionops-serving")
    dep = one("base", "Deployment", "visionops-serving")
    assert selects(
        policy["spec"]["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {p["port"]: rule for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert set(rules) == {"http", "monitor"}
    assert "from" not in rules["http"]  # the API is open to callers of the Service
    sources = rules["monitor"]["from"]
    assert sources and all("podSelector" in s and "namespaceSelector" in s for s in sources)
    assert {s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in sources} == {
        "prometheus",
        "alertmanager",
    }
    # the named ports exist on the pods the policy selects
    ports = {p["name"] for c in containers(dep).values() for p in c["ports"]}
    assert set(rules) <= ports


def test_pdb_and_hpa_target_the_stable_deployment():
    dep = one("base", "Deployment", "visionops-serving")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdb = one("base", "PodDisruptionBudget", "visionops-serving")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels) and pdb["spec"]["maxUnavailable"] == 1
    hpa = one("base", "HorizontalPodAutoscaler", "visionops-serving")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "visionops-serving",
    }
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"


# -- overlays -----------------------------------------------------------------------------------------------
def test_dev_is_one_cpu_replica_without_autoscaler():
    dep = one("overlays/dev", "Deployment", "visionops-serving")
    assert dep["spec"]["replicas"] == 1
    assert not objects("overlays/dev", "HorizontalPodAutoscaler")
    assert "nvidia.com/gpu" not in json.dumps(dep)


def test_gpu_overlay_requests_a_gpu_for_serving_only():
    dep = one("overlays/gpu", "Deployment", "visionops-serving")
    pod = dep["spec"]["template"]["spec"]
    serving, monitor = containers(dep)[SERVING], containers(dep)[MONITOR]
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in json.dumps(monitor["resources"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    assert env_of(serving)["VISIONOPS_DEVICE"]["value"] == "cuda"
    assert "VISIONOPS_DEVICE" in code_settings()[SERVING]


def test_canary_takes_about_ten_percent_of_live_traffic():
    name = "overlays/canary"
    stable, canary = (
        one(name, "Deployment", "visionops-serving"),
        one(name, "Deployment", "visionops-serving-canary"),
    )
    service = one(name, "Service", "visionops-serving")
    for dep in (stable, canary):
        assert selects(service["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    # the two Deployments must not adopt each other's pods
    assert not selects(
        stable["spec"]["selector"]["matchLabels"], canary["spec"]["template"]["metadata"]["labels"]
    )
    assert not selects(
        canary["spec"]["selector"]["matchLabels"], stable["spec"]["template"]["metadata"]["labels"]
    )
    hpa = one(name, "HorizontalPodAutoscaler", "visionops-serving")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "visionops-serving"
    share = canary["spec"]["replicas"] / (canary["spec"]["replicas"] + hpa["spec"]["minReplicas"])
    assert 0.08 <= share <= 0.12
    stable_uri = env_of(containers(stable)[SERVING])["VISIONOPS_MODEL_URI"]["value"]
    canary_uri = env_of(containers(canary)[SERVING])["VISIONOPS_MODEL_URI"]["value"]
    assert canary_uri != stable_uri
    assert env_of(containers(canary)[SERVING])["VISIONOPS_VARIANT"]["value"] == "canary"
    assert len(objects(name, "PodDisruptionBudget")) == 1


def test_shadow_mirrors_to_pods_outside_the_live_service():
    name = "overlays/shadow"
    route = one(name, "HTTPRoute", "visionops-serving")
    shadow = one(name, "Deployment", "visionops-serving-shadow")
    stable = one(name, "Deployment", "visionops-serving")
    services = {s["metadata"]["name"]: s for s in objects(name, "Service")}
    rule = route["spec"]["rules"][0]
    assert [b["name"] for b in rule["backendRefs"]] == ["visionops-serving"]
    mirror = next(f for f in rule["filters"] if f["type"] == "RequestMirror")["requestMirror"]["backendRef"]
    target = services[mirror["name"]]
    assert mirror["port"] in [p["port"] for p in target["spec"]["ports"]]
    shadow_labels = shadow["spec"]["template"]["metadata"]["labels"]
    assert selects(target["spec"]["selector"], shadow_labels)
    assert not selects(target["spec"]["selector"], stable["spec"]["template"]["metadata"]["labels"])
    assert not selects(services["visionops-serving"]["spec"]["selector"], shadow_labels), (
        "shadow took live traffic"
    )
    serving = env_of(containers(shadow)[SERVING])
    assert serving["VISIONOPS_VARIANT"]["value"] == "shadow"
    assert (
        serving["VISIONOPS_PREDICTION_LOG"]["value"]
        != effective_env(name, containers(stable)[SERVING])["VISIONOPS_PREDICTION_LOG"]
    )


# -- RBAC and the deploy step -------------------------------------------------------------------------------
def test_deployer_role_is_get_and_patch_on_the_serving_deployment_only():
    from visionops.deploy import DEFAULT_DEPLOYMENT, DEFAULT_NAMESPACE, MODEL_URI_ENV

    role = one("rbac", "Role", "visionops-deployer")
    assert role["metadata"]["namespace"] == DEFAULT_NAMESPACE
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": [DEFAULT_DEPLOYMENT],
            "verbs": ["get", "patch"],
        }
    ]
    binding = one("rbac", "RoleBinding", "visionops-deployer")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "visionops-deployer",
    }
    # bound to the accounts KFP runs steps as (never a run *as* another account: the launcher needs the
    # runner's rights): default-editor of the profile (multi-user), pipeline-runner in kubeflow (single-user)
    profile = config_data("base")["VISIONOPS_KFP_NAMESPACE"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "default-editor", "namespace": profile},
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"},
    ]
    assert not objects("rbac", "ServiceAccount")
    assert not objects("rbac", "ClusterRole") and not objects("rbac", "ClusterRoleBinding")
    # what the deploy step patches exists in the manifests it is allowed to patch
    dep = one("base", "Deployment", DEFAULT_DEPLOYMENT)
    assert dep["metadata"]["namespace"] == DEFAULT_NAMESPACE
    assert all(MODEL_URI_ENV in env_of(c) for c in containers(dep).values())


# -- observability ------------------------------------------------------------------------------------------
def test_monitors_scrape_ports_that_exist():
    dep = one("base", "Deployment", "visionops-serving")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    service = one("base", "Service", "visionops-serving")
    sm = one("observability", "ServiceMonitor", "visionops-serving")
    assert selects(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    pm = one("observability", "PodMonitor", "visionops-drift-monitor")
    assert selects(pm["spec"]["selector"]["matchLabels"], pod_labels)
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["monitor"]
    assert "/metrics" in code_probe_paths()[MONITOR]
    for obj in (sm, pm):
        assert obj["spec"]["namespaceSelector"]["matchNames"] == [dep["metadata"]["namespace"]]


def rule_exprs() -> list[str]:
    rule = one("observability", "PrometheusRule", "visionops")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def dashboard() -> dict:
    configmap = one("observability", "ConfigMap", "visionops-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(configmap["data"]["visionops.json"])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def test_rules_and_dashboard_use_documented_metrics_the_code_defines():
    used = set().union(*(metric_names(e) for e in rule_exprs() + dashboard_exprs()))
    used = {base_metric(m) for m in used}
    assert used <= documented_metrics(), f"not in docs/ARCHITECTURE.md: {used - documented_metrics()}"
    assert used <= code_metrics(), f"no code defines: {used - code_metrics()}"
    alerts = {
        r["alert"]
        for g in one("observability", "PrometheusRule", "visionops")["spec"]["groups"]
        for r in g["rules"]
    }
    assert {
        "VisionOpsDriftPersisting",
        "VisionOpsLivePrecisionBelowTarget",
        "VisionOpsHighErrorRate",
        "VisionOpsHighLatencyP95",
        "VisionOpsMonitorDown",
        "VisionOpsMonitorDroppingRows",
    } <= alerts
    # the dashboard shows what the brief asks for
    shown = {base_metric(m) for e in dashboard_exprs() for m in metric_names(e)}
    assert {
        "visionops_requests_total",
        "visionops_request_latency_seconds",
        "visionops_predictions_total",
        "visionops_prediction_confidence",
        "visionops_drift_share",
        "visionops_feature_drift_score",
        "visionops_live_precision",
        "visionops_live_recall",
    } <= shown


def _rules_file(tmp_path: Path, groups: list[dict]) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_checks_the_alert_rules_and_dashboard_queries(tmp_path):
    promtool = require_binary("promtool")
    groups = one("observability", "PrometheusRule", "visionops")["spec"]["groups"]
    out = subprocess.run(
        [promtool, "check", "rules", str(_rules_file(tmp_path, groups))], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in out.stdout
    # every dashboard query parses as PromQL once Grafana's variables are filled in
    exprs = [
        e.replace("$__rate_interval", "5m").replace("$namespace", "visionops") for e in dashboard_exprs()
    ]
    recording = [
        {
            "name": "dashboard",
            "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
        }
    ]
    out = subprocess.run(
        [promtool, "check", "rules", str(_rules_file(tmp_path, recording))], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_the_alerts_fire(tmp_path):
    promtool = require_binary("promtool")
    groups = one("observability", "PrometheusRule", "visionops")["spec"]["groups"]
    rules = _rules_file(tmp_path, groups)
    by_alert = {r["alert"]: r["annotations"] for g in groups for r in g["rules"] if "alert" in r}

    def expect(alert: str, value: str = "", **labels: str) -> dict:
        """The alert's annotations with its templates filled in as Prometheus would."""
        out = {}
        for key, text in by_alert[alert].items():
            text = re.sub(r"\{\{ \$value \| \w+ \}\}", value, text)
            out[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return {"exp_labels": {"alertname": alert, **labels}, "exp_annotations": out}

    labels = 'namespace="visionops", pod="p1", job="visionops-drift-monitor"'
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'visionops_drift_detected{{{labels}, model_version="v7"}}',
                        "values": "0 1x60",
                    },
                    {"series": f"visionops_live_precision{{{labels}}}", "values": "0.97x10 0.90x40"},
                    {"series": f"visionops_live_labels_window{{{labels}}}", "values": "80x50"},
                    {
                        "series": 'visionops_requests_total{namespace="visionops", endpoint="/classify", status="200"}',
                        "values": "0+90x40",
                    },
                    {
                        "series": 'visionops_requests_total{namespace="visionops", endpoint="/classify", status="503"}',
                        "values": "0+10x40",
                    },
                    {"series": f"up{{{labels}}}", "values": "1x20 0x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "VisionOpsDriftPersisting", "exp_alerts": []},
                    {
                        "eval_time": "40m",
                        "alertname": "VisionOpsDriftPersisting",
                        "exp_alerts": [
                            expect(
                                "VisionOpsDriftPersisting",
                                severity="warning",
                                namespace="visionops",
                                model_version="v7",
                            )
                        ],
                    },
                    {"eval_time": "10m", "alertname": "VisionOpsLivePrecisionBelowTarget", "exp_alerts": []},
                    {
                        "eval_time": "35m",
                        "alertname": "VisionOpsLivePrecisionBelowTarget",
                        "exp_alerts": [
                            expect(
                                "VisionOpsLivePrecisionBelowTarget",
                                "90%",
                                severity="critical",
                                namespace="visionops",
                                pod="p1",
                            )
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "VisionOpsHighErrorRate",
                        "exp_alerts": [
                            expect(
                                "VisionOpsHighErrorRate", "10%", severity="critical", namespace="visionops"
                            )
                        ],
                    },
                    {
                        "eval_time": "40m",
                        "alertname": "VisionOpsMonitorDown",
                        "exp_alerts": [
                            expect(
                                "VisionOpsMonitorDown",
                                severity="warning",
                                namespace="visionops",
                                pod="p1",
                                job="visionops-drift-monitor",
                            )
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -- the settings the manifests set are accepted by the code ------------------------------------------------
@pytest.mark.parametrize("name", SERVING_KUSTOMIZATIONS)
def test_settings_classes_accept_the_manifest_values(name):
    from visionops.drift.settings import MonitorSettings
    from visionops.serving.settings import ServingSettings

    for dep in objects(name, "Deployment"):
        by_name = containers(dep)
        serving_env = {
            k: "from-secret" if v is None else v for k, v in effective_env(name, by_name[SERVING]).items()
        }
        monitor_env = {
            k: "from-secret" if v is None else v for k, v in effective_env(name, by_name[MONITOR]).items()
        }
        serving = ServingSettings.from_env(serving_env)  # raises ConfigError on a bad value
        monitor = MonitorSettings.from_env(monitor_env)
        assert serving.model_uri == monitor.model_uri == serving_env["VISIONOPS_MODEL_URI"]
        assert monitor.port == next(p["containerPort"] for p in by_name[MONITOR]["ports"])
        assert serving.monitor_url == f"http://127.0.0.1:{monitor.port}"
        assert serving.variant == env_of(by_name[SERVING])["VISIONOPS_VARIANT"]["value"]
        assert monitor.trigger_dry_run is True  # retraining stays off until a user turns it on


# -- the pod's two processes, started exactly as the manifests start them -----------------------------------
def _pod_process(container: dict, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The container's process: ``visionops <args>`` with only the container's environment."""
    visionops_bin = Path(sys.executable).parent / "visionops"
    base = {k: os.environ[k] for k in ("PATH", "LANG", "HOME") if k in os.environ}
    return subprocess.Popen(
        [str(visionops_bin), *container["args"]],
        env={**base, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not 200 after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.mark.integration
@pytest.mark.slow
def test_pod_processes_start_and_talk_as_configured(s3, tmp_path):
    """Both containers of the base Deployment run with the manifest's args and env (object storage, credentials
    and host ports swapped for the moto server and free ports; emptyDir mounts mapped to temp dirs): every probe
    path answers 200 and a classified image reaches the sidecar through VISIONOPS_MONITOR_URL."""
    import os

    import httpx

    bundle_uri = storage.publish_dir(
        Path(feature_bundle(tmp_path / "src")), f"{s3.bucket}/models/champion", "bundle.json"
    )
    dep = one("base", "Deployment", "visionops-serving")
    by_name = containers(dep)
    monitor_port, serving_port = free_port(), free_port()
    container_port = next(p["containerPort"] for p in by_name[MONITOR]["ports"])
    procs = []
    try:
        for role in (MONITOR, SERVING):
            container = copy.deepcopy(by_name[role])
            mounts = {m["mountPath"]: tmp_path / role / m["name"] for m in container["volumeMounts"]}
            env: dict[str, str] = {}
            for key, value in effective_env("base", container).items():
                if value is None:  # from the Secret
                    ref = env_of(container)[key]["valueFrom"]["secretKeyRef"]["key"]
                    value = s3.env[ref]
                for path, local in mounts.items():  # writable emptyDirs -> temp dirs
                    if value == path or value.startswith(path + "/"):
                        local.mkdir(parents=True, exist_ok=True)
                        value = str(local) + value[len(path) :]
                env[key] = value
            for key, value in env.items():  # the Secret's files (same content for both containers)
                if key.endswith(("_TOKEN_FILE", "_KEY_FILE")):
                    Path(value).parent.mkdir(parents=True, exist_ok=True)
                    Path(value).write_text(f"test-{key.lower()}-0123456789")
            env["TMPDIR"] = str(mounts["/tmp"])
            mounts["/tmp"].mkdir(parents=True, exist_ok=True)
            env.update(
                {
                    "VISIONOPS_MODEL_URI": bundle_uri,
                    "S3_ENDPOINT_URL": s3.endpoint,
                    "VISIONOPS_REPORT_URI": f"{s3.bucket}/reports",
                    "VISIONOPS_PREDICTION_LOG": f"{s3.bucket}/predictions",
                }
            )
            if role == MONITOR:
                env["VISIONOPS_MONITOR_PORT"] = str(monitor_port)
                port = monitor_port
            else:
                assert env["VISIONOPS_MONITOR_URL"] == f"http://127.0.0.1:{container_port}"
                env["VISIONOPS_MONITOR_URL"] = f"http://127.0.0.1:{monitor_port}"
                args = container["args"]
                args[args.index("--port") + 1] = str(serving_port)
                port = serving_port
            log = tmp_path / f"{role}.log"
            proc = _pod_process(container, env, log)
            procs.append(proc)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                _wait_for(f"http://127.0.0.1:{port}{container[probe]['httpGet']['path']}", proc, log)

        buf = io.BytesIO()
        Image.new("RGB", (96, 96), (120, 90, 60)).save(buf, "JPEG")
        answer = httpx.post(
            f"http://127.0.0.1:{serving_port}/classify",
            files={"image": ("w.jpg", buf.getvalue(), "image/jpeg")},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

        def rows_seen() -> float:
            text = httpx.get(f"http://127.0.0.1:{monitor_port}/metrics", timeout=5).text
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(
                    ("visionops_monitor_rows_received_total", "visionops_monitor_rows_rejected_total")
                )
            )

        deadline = time.monotonic() + 60
        while rows_seen() < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert rows_seen() >= 1, "serving's features never reached the sidecar"
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)


# -- online experiments: the router and the canary-analysis webhook ---------------------------------------------
def test_experiment_services_are_locked_down_and_wired_to_real_paths():
    from visionops.experiments import router, webhook

    code = Path(router.__file__).read_text() + Path(webhook.__file__).read_text()
    deployments = {d["metadata"]["name"]: d for d in objects("experiments", "Deployment")}
    assert set(deployments) == {"visionops-router", "visionops-canary-webhook"}
    for dep in deployments.values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["image"] == visionops.DEFAULT_IMAGE
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            assert f'"{path}"' in code, (
                f"{dep['metadata']['name']} probes {path}, which the code does not serve"
            )
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert str(ports["http"]) in container["args"]
    # the Flagger Canary calls the webhook Service on the path the webhook serves
    canary = one("experiments", "Canary", "visionops-serving")
    (hook,) = canary["spec"]["analysis"]["webhooks"]
    service = one("experiments", "Service", "visionops-canary-webhook")
    assert (
        hook["url"]
        == f"http://visionops-canary-webhook.visionops:{service['spec']['ports'][0]['port']}/canary/check"
    )
    assert (
        canary["spec"]["targetRef"]["name"]
        == one("base", "Deployment", "visionops-serving")["metadata"]["name"]
    )
    # the router's CLI arguments parse with the code's own parsers
    from visionops.experiments.assign import parse_weights
    from visionops.experiments.router import parse_variants

    args = deployments["visionops-router"]["spec"]["template"]["spec"]["containers"][0]["args"]
    variants = parse_variants(",".join(args[i + 1] for i, a in enumerate(args) if a == "--variant"))
    assert set(parse_weights(args[args.index("--weights") + 1])) == set(variants)


# -- issue 18: overlays that compose, Flagger, the in-cluster retraining trigger ----------------------------
USER_OVERLAY = """
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - MANIFESTS/overlays/dev
configMapGenerator:
  - name: visionops-config
    behavior: merge
    literals:
      - VISIONOPS_MODEL_URI=s3://visionops/models/glasses/m-deployed-v7
components:
  - MANIFESTS/components/model-uri
  - MANIFESTS/components/{component}
"""


@pytest.mark.parametrize("component", ["canary", "shadow"])
def test_canary_and_shadow_components_keep_the_users_model_and_settings(tmp_path, component):
    """base + dev + the model deploy rolled out + the Component: stable keeps all of it; the new track shares
    the overlay's ConfigMap and runs the candidate under its own variant name."""
    rendered = render_overlay(tmp_path, USER_OVERLAY.format(component=component))
    deployments = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "Deployment"}
    assert set(deployments) == {"visionops-serving", f"visionops-serving-{component}"}
    dev = one("overlays/dev", "Deployment", "visionops-serving")
    stable, track = deployments["visionops-serving"], deployments[f"visionops-serving-{component}"]
    assert stable["spec"]["replicas"] == dev["spec"]["replicas"] == 1
    for name, container in containers(stable).items():
        assert container["resources"] == containers(dev)[name]["resources"], name  # dev sizes intact
        assert (
            env_of(container)["VISIONOPS_MODEL_URI"]["value"] == "s3://visionops/models/glasses/m-deployed-v7"
        )
    (config,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert config["data"]["VISIONOPS_MODEL_URI"] == "s3://visionops/models/glasses/m-deployed-v7"
    assert config["data"]["VISIONOPS_WINDOW_SIZE"] == config_data("overlays/dev")["VISIONOPS_WINDOW_SIZE"]
    assert not [o for o in rendered if o["kind"] == "HorizontalPodAutoscaler"]  # dev's deletion holds
    for container in containers(track).values():
        assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        assert (
            env_of(container)["VISIONOPS_MODEL_URI"]["value"] != "s3://visionops/models/glasses/m-deployed-v7"
        )
    assert env_of(containers(track)[SERVING])["VISIONOPS_VARIANT"]["value"] == component
    assert env_of(containers(stable)[SERVING])["VISIONOPS_VARIANT"]["value"] == "stable"
    for obj in rendered:
        validate(obj)


def _flagger_selector(deployment: dict) -> dict[str, str]:
    """fluxcd/flagger v1.44.0 pkg/canary/deployment_controller.go getSelectorLabel with the default
    --selector-labels "app,name,app.kubernetes.io/name" (cmd/flagger/main.go): the first one in the
    target's spec.selector.matchLabels; its Services select {label: value} (canary) / value-primary."""
    match = deployment["spec"]["selector"]["matchLabels"]
    label = next(name for name in ("app", "name", "app.kubernetes.io/name") if name in match)
    return {label: match[label]}


def test_flagger_selects_only_serving_pods_and_takes_over_the_hpa(tmp_path):
    canary = one("experiments", "Canary", "visionops-serving")
    target = one("base", "Deployment", canary["spec"]["targetRef"]["name"])
    selector = _flagger_selector(target)
    assert selector == {"app": "visionops-serving"}
    pods = [
        (name, dep["metadata"]["name"], dep["spec"]["template"]["metadata"]["labels"])
        for name in [*KUSTOMIZATIONS]
        for dep in objects(name, "Deployment")
    ]
    selected = {(name, dep) for name, dep, labels in pods if selects(selector, labels)}
    assert selected and all(
        labels["app.kubernetes.io/component"] == "serving"
        for name, dep, labels in pods
        if (name, dep) in selected
    )
    assert ("experiments", "visionops-router") not in selected
    assert ("experiments", "visionops-canary-webhook") not in selected
    ref = canary["spec"]["autoscalerRef"]
    hpa = one("base", "HorizontalPodAutoscaler", ref["name"])
    assert (ref["apiVersion"], ref["kind"]) == (hpa["apiVersion"], hpa["kind"])
    assert hpa["spec"]["scaleTargetRef"]["name"] == target["metadata"]["name"]
    # with the flagger Component each track logs its own `app` label, the names the webhook compares
    rendered = render_overlay(
        tmp_path,
        "resources: [MANIFESTS/base]\ncomponents: [MANIFESTS/components/model-uri, MANIFESTS/components/flagger]\n",
    )
    (dep,) = [o for o in rendered if o["kind"] == "Deployment"]
    variant = env_of(containers(dep)[SERVING])["VISIONOPS_VARIANT"]
    assert variant == {
        "name": "VISIONOPS_VARIANT",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}},
    }
    primary = {"app": f"{selector['app']}-primary"}  # Flagger's primary pods
    args = one("experiments", "Deployment", "visionops-canary-webhook")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    weights = args[args.index("--weights") + 1]
    assert {w.split("=")[0] for w in weights.split(",")} == {primary["app"], selector["app"]}
    assert args[args.index("--control") + 1] == primary["app"]
    validate(dep)


def test_the_sidecar_alone_gets_the_kfp_token_and_the_client_reads_it(tmp_path):
    from visionops.pipeline.client import DEFAULT_TOKEN_PATH, TOKEN_AUDIENCE, read_token

    for name in SERVING_KUSTOMIZATIONS:
        for dep in objects(name, "Deployment"):
            pod = dep["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            volumes = {v["name"]: v for v in pod["volumes"]}
            monitor = containers(dep)[MONITOR]
            (mount,) = [m for m in monitor["volumeMounts"] if m["name"] == "kfp-token"]
            (source,) = volumes["kfp-token"]["projected"]["sources"]
            token = source["serviceAccountToken"]
            assert token["audience"] == TOKEN_AUDIENCE == "pipelines.kubeflow.org"
            assert f"{mount['mountPath']}/{token['path']}" == DEFAULT_TOKEN_PATH
            assert mount["readOnly"] is True
            assert "VISIONOPS_KFP_TOKEN_PATH" not in effective_env(name, monitor)  # the default path is it
            serving = containers(dep)[SERVING]
            assert all(m["name"] != "kfp-token" for m in serving.get("volumeMounts", [])), name
    # the client reads a token laid out as the volume lays it out
    mounted = tmp_path / DEFAULT_TOKEN_PATH.lstrip("/")
    mounted.parent.mkdir(parents=True)
    mounted.write_text("eyJhbGciOi.projected\n")
    assert read_token(str(mounted)) == "eyJhbGciOi.projected"


def test_the_retraining_trigger_is_wired_to_the_kubeflow_install():
    """Namespace labels that Kubeflow's NetworkPolicies admit, the profile, RBAC and the run parameters."""
    from visionops.drift.trigger import warm_start_params
    from visionops.pipeline.training import pipeline_parameters

    data = config_data("base")
    profile = data["VISIONOPS_KFP_NAMESPACE"]
    namespace = one("base", "Namespace", "visionops")
    # kubeflow/manifests v1.11.0 common/networkpolicies/base/ml-pipeline.yaml (and minio.yaml; kubeflow/
    # pipelines 2.17.0 third-party/seaweedfs/base/seaweedfs/seaweedfs-networkpolicy.yaml): ingress only from
    # namespaces whose app.kubernetes.io/part-of is kubeflow-profile
    assert namespace["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeflow-profile"
    assert namespace["metadata"]["name"] == profile
    assert data["VISIONOPS_KFP_HOST"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert data["S3_ENDPOINT_URL"] == "http://seaweedfs.kubeflow.svc.cluster.local:8333"
    binding = one("rbac", "RoleBinding", "visionops-retrain-trigger")
    dep = one("base", "Deployment", "visionops-serving")
    assert binding["metadata"]["namespace"] == profile
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-pipelines-edit",
    }  # fmt: skip
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": dep["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": dep["metadata"]["namespace"],
        }
    ]
    # every required run parameter is set: the API refuses a run without them
    required = {name for name, (_, default) in pipeline_parameters().items() if default is ...}
    params = {**warm_start_params("s3://m"), **json.loads(data["VISIONOPS_KFP_PARAMS"])}
    assert required <= set(params), required - set(params)


def test_schemas_are_the_pinned_upstream_crds_and_reject_what_they_reject():
    """manifests/schemas are generated by scripts/crd_schemas.py from the CRDs at the pinned tags: a field the
    real CRD lacks is refused, e.g. HTTPRoute `retry`, which gateway-api v1.4.1 ships only in the
    experimental channel (config/crd/experimental, not config/crd/standard)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import crd_schemas
    finally:
        sys.path.pop(0)
    pins = {filename: f"{repo}@{tag} {path}" for repo, tag, path, _, _, filename in crd_schemas.PINS}
    assert set(pins) == set(CRD_SCHEMAS.values())
    for filename, source in pins.items():
        comment = json.loads((SCHEMAS / filename).read_text())["$comment"]
        assert comment.startswith(f"generated by scripts/crd_schemas.py from {source}"), filename
    route = copy.deepcopy(one("overlays/shadow", "HTTPRoute", "visionops-serving"))
    validate(route)
    route["spec"]["rules"][0]["retry"] = {"attempts": 2}
    with pytest.raises(jsonschema.ValidationError, match="retry"):
        validate(route)
    canary = copy.deepcopy(one("experiments", "Canary", "visionops-serving"))
    canary["spec"]["analysis"]["stepWeigth"] = 10
    with pytest.raises(jsonschema.ValidationError, match="stepWeigth"):
        validate(canary)
    canary = copy.deepcopy(one("experiments", "Canary", "visionops-serving"))
    canary["spec"]["analysis"]["threshold"] = "three"  # the CRD says integer
    with pytest.raises(jsonschema.ValidationError):
        validate(canary)


def test_alertmanager_sends_the_alert_token_the_sidecar_reads():
    """The AlertmanagerConfig's webhook authorization names the same Secret key that the sidecar mounts at
    VISIONOPS_ALERT_TOKEN_FILE (otherwise every notification gets 401 and retraining never starts)."""
    config = one("observability", "AlertmanagerConfig", "visionops-retrain")
    (webhook,) = config["spec"]["receivers"][0]["webhookConfigs"]
    auth = webhook["httpConfig"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    dep = one("base", "Deployment", "visionops-serving")
    monitor = containers(dep)[MONITOR]
    path = env_of(monitor)["VISIONOPS_ALERT_TOKEN_FILE"]["value"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in monitor["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    secret = volumes[mount["name"]]["secret"]
    items = {i["path"]: i["key"] for i in secret["items"]}
    assert secret["secretName"] == auth["credentials"]["name"]
    assert items[path.removeprefix(mount["mountPath"] + "/")] == auth["credentials"]["key"]
    # serving holds no alert token: least privilege
    serving = containers(dep)[SERVING]
    assert "VISIONOPS_ALERT_TOKEN_FILE" not in env_of(serving)
