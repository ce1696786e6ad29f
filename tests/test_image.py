"""The built image, started from the image as the cluster starts it (``make test-image``; marker ``image``).

Every container here runs from the image's own root filesystem, with the process, user, environment and mounts
taken from the compiled pipeline (tests/golden/training_pipeline.yaml) and the serving manifests, not from this
checkout:

- the KFP executor command of one component, exactly as compiled, with an executor input like the one the
  KFP launcher passes;
- ``visionops serve`` and ``visionops monitor`` with the Deployment's args, env (the ConfigMap literals, the
  container env, the Secret's keys), user 10001, no capabilities, no privilege escalation, a read-only root
  filesystem and the pod's emptyDirs as size-limited tmpfs mounts, answering /readyz, /classify and
  /metrics;
- the image's ``visionops --help``, and its installed versions against constraints.txt.

Two ways to start a container: buildah (vfs) mounts the image's root filesystem and runc, the OCI runtime under
containerd and the kubelet, runs each container from an OCI spec built here (runc's default spec changed as the
pod spec asks); or ``docker run`` where a Docker engine answers (not exercised on the machines this was written
on: they have none). Each emptyDir is a fresh size-limited tmpfs, group fsGroup, bind-mounted like a kubelet
volume. The containers share the host's network (the pod's network namespace in a cluster), so the servers
listen on free ports instead of the manifests' 3000 and 8001. Skipped, with the reason, where no engine, no
built image or only an image built from other sources is present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port, start_moto
from tests.test_drift_support import CLASSES, feature_bundle, wait_until

pytestmark = [pytest.mark.image, pytest.mark.slow]

IR = ROOT / "tests" / "golden" / "training_pipeline.yaml"
DEPLOYMENT = ROOT / "manifests" / "base" / "deployment" / "deployment.yaml"
KUSTOMIZATION = ROOT / "manifests" / "base" / "kustomization.yaml"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
TEST_CONTAINER = "visionops-image-test"  # the same name in scripts/image.sh
#: Where the KFP launcher exposes minio:// artifacts to the step (kfp.dsl.types.artifact_types).
MINIO_MOUNT = "/minio"
STARTUP_TIMEOUT = 600.0  # the manifests' startupProbe allows 10 minutes; a busy 2-core machine needs some


def executor(name: str) -> dict:
    """The compiled container spec of one pipeline step (command, args, image)."""
    ir = next(yaml.safe_load_all(IR.read_text()))  # the pipeline spec (the platform spec follows)
    return ir["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


def image_name() -> str:
    """The image the cluster pulls: the one the compiled steps name (= the manifests' image)."""
    return executor("ingest")["image"]


def pod_spec() -> dict:
    return yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]


def config_map() -> dict[str, str]:
    """The literals of the generated ConfigMap visionops-config (envFrom of both containers)."""
    generator = yaml.safe_load(KUSTOMIZATION.read_text())["configMapGenerator"]
    (config,) = [g for g in generator if g["name"] == "visionops-config"]
    return dict(literal.split("=", 1) for literal in config["literals"])


def container_env(container: dict, secret: dict[str, str]) -> dict[str, str]:
    """The environment the kubelet gives a container: envFrom first, then env (literal or secretKeyRef)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "visionops-config"
        env.update(config_map())
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
    # the model-uri component copies the ConfigMap's model into the container env (a Deployment revision)
    env["VISIONOPS_MODEL_URI"] = config_map()["VISIONOPS_MODEL_URI"]
    return env


def size_bytes(quantity: str) -> int:
    """A Kubernetes quantity such as 2Gi or 512Mi in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def pod_container(name: str, secret: dict[str, str]) -> dict:
    """One container of the serving pod as the kubelet would start it: args, env, user, emptyDirs."""
    spec = pod_spec()
    (container,) = [c for c in spec["containers"] if c["name"] == name]
    security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    volumes = {v["name"]: v for v in spec["volumes"]}
    empty_dirs = {}
    for mount in container.get("volumeMounts", []):
        empty_dir = volumes[mount["name"]]["emptyDir"]
        empty_dirs[mount["mountPath"]] = size_bytes(empty_dir.get("sizeLimit", "1Gi"))
    return {
        "args": container.get("args"),
        "command": container.get("command"),
        "env": container_env(container, secret),
        "user": (security["runAsUser"], security["runAsGroup"], security.get("fsGroup")),
        "read_only": security.get("readOnlyRootFilesystem", False),
        "no_new_privileges": not security.get("allowPrivilegeEscalation", True),
        "capabilities": [] if security.get("capabilities", {}).get("drop") == ["ALL"] else None,
        "empty_dirs": empty_dirs,
    }


# ---- starting containers --------------------------------------------------------------------------------------


@dataclass
class Container:
    """A running container: its main process (runc or docker in the foreground) and its log file."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    engine: Engine
    volumes: list[Path]  # host tmpfs mounts behind the emptyDirs, unmounted at stop

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def exec(self, *argv: str) -> subprocess.CompletedProcess:
        """Run a command in the running container (kubectl exec)."""
        return self.engine.exec(self.name, list(argv))

    def uid_gid(self) -> tuple[int, int]:
        """The real uid and gid of the container's main process, read from the host's /proc."""
        pid = self.engine.pid(self.name)
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(status["Uid"].split()[0]), int(status["Gid"].split()[0])

    def stop(self) -> None:
        self.engine.stop(self.name)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.engine.remove(self.name)
        for volume in self.volumes:
            subprocess.run(["umount", str(volume)], capture_output=True, timeout=60)


@dataclass
class Engine:
    """Starts containers from the built image: runc on a buildah-mounted root filesystem, or docker."""

    kind: str  # "runc" or "docker"
    image: str
    config: dict  # the image's OCI config (Entrypoint, Cmd, Env, User, WorkingDir)
    rootfs: str | None = None
    workdir: Path = field(default_factory=Path)

    def process_args(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        """Kubernetes' rule: command replaces ENTRYPOINT (and drops CMD), args replace CMD."""
        if command:
            return list(command) + list(args or [])
        return list(self.config.get("Entrypoint") or []) + list(
            args if args is not None else self.config.get("Cmd") or []
        )

    def image_user(self) -> tuple[int, int]:
        uid, _, gid = str(self.config.get("User", "0")).partition(":")
        return int(uid), int(gid or uid)

    def start(
        self,
        *,
        command: list[str] | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        user: tuple[int, int, int | None] | None = None,
        read_only: bool = True,
        no_new_privileges: bool = True,
        capabilities: list[str] | None = None,
        empty_dirs: dict[str, int] | None = None,
        binds: dict[str, tuple[Path, bool]] | None = None,
    ) -> Container:
        """Start a container; ``empty_dirs`` maps container paths to size limits in bytes, ``binds`` maps
        container paths to (host path, read-only)."""
        name = f"visionops-test-{uuid.uuid4().hex[:10]}"
        uid, gid = (user[0], user[1]) if user else self.image_user()
        groups = [user[2]] if user and user[2] is not None else []
        log_path = self.workdir / f"{name}.log"
        volumes = [
            self.empty_dir(f"{name}-{i}", size, groups) for i, size in enumerate((empty_dirs or {}).values())
        ]
        binds = {**dict(zip(empty_dirs or {}, ((v, False) for v in volumes), strict=True)), **(binds or {})}
        argv = (self._runc_argv if self.kind == "runc" else self._docker_argv)(
            name,
            self.process_args(command, args),
            {**env_dict(self.config.get("Env") or []), **(env or {})},
            (uid, gid, groups),
            read_only,
            no_new_privileges,
            capabilities,
            binds,
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return Container(name, proc, log_path, self, volumes)

    def empty_dir(self, name: str, size: int, groups: list[int]) -> Path:
        """An emptyDir as the kubelet makes one with medium Memory: a size-limited tmpfs on the host, group-owned
        by the pod's fsGroup with the setgid bit, bind-mounted into the container. (A tmpfs mounted by runc
        itself takes the mode of the image's directory, e.g. 0755 for /home/visionops/bentoml, which no
        kubelet volume does.)"""
        path = self.workdir / name
        path.mkdir()
        options = f"size={size},mode=2777" + (f",gid={groups[0]}" if groups else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        return path

    def _runc_argv(self, name, argv, env, ids, read_only, no_new_privileges, caps, binds) -> list[str]:
        """An OCI bundle (runc's default spec, changed as the kubelet's pod spec asks) and `runc run` on it."""
        bundle = self.workdir / name
        bundle.mkdir()
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        spec = json.loads((bundle / "config.json").read_text())
        uid, gid, groups = ids
        spec["root"] = {"path": self.rootfs, "readonly": read_only}
        spec["hostname"] = name
        process = spec["process"]
        process.update(
            terminal=False,
            args=argv,
            env=[f"{k}={v}" for k, v in env.items()],
            cwd=self.config.get("WorkingDir") or "/",
            user={"uid": uid, "gid": gid, "additionalGids": groups},
            noNewPrivileges=no_new_privileges,
        )
        if caps is not None:
            process["capabilities"] = {k: list(caps) for k in process["capabilities"]}
        # the host's network (a pod's network namespace in a cluster); the kubelet also mounts these two files
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        mounts = spec["mounts"]
        for path in ("/etc/hosts", "/etc/resolv.conf"):
            mounts.append({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]})
        for path, (source, ro) in sorted(binds.items()):
            options = ["rbind", "ro" if ro else "rw"]
            mounts.append({"destination": path, "type": "bind", "source": str(source), "options": options})
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        return ["runc", "run", "--bundle", str(bundle), name]

    def _docker_argv(self, name, argv, env, ids, read_only, no_new_privileges, caps, binds) -> list[str]:
        uid, gid, groups = ids
        cmd = ["docker", "run", "--rm", "--name", name, "--network", "host", "--user", f"{uid}:{gid}"]
        cmd += [f"--group-add={g}" for g in groups]
        cmd += ["--read-only"] if read_only else []
        cmd += ["--security-opt", "no-new-privileges"] if no_new_privileges else []
        cmd += ["--cap-drop", "ALL"] if caps == [] else []
        for path, (source, ro) in sorted(binds.items()):
            cmd += ["-v", f"{source}:{path}:{'ro' if ro else 'rw'}"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        cmd += ["--entrypoint", argv[0], self.image, *argv[1:]]
        return cmd

    def exec(self, name: str, argv: list[str]) -> subprocess.CompletedProcess:
        tool = ["runc", "exec", name] if self.kind == "runc" else ["docker", "exec", name]
        return subprocess.run(tool + argv, capture_output=True, text=True, timeout=120)

    def pid(self, name: str) -> int:
        if self.kind == "runc":
            return json.loads(subprocess.check_output(["runc", "state", name]))["pid"]
        return int(subprocess.check_output(["docker", "inspect", "-f", "{{.State.Pid}}", name], text=True))

    def stop(self, name: str) -> None:
        tool = ["runc", "kill", name, "TERM"] if self.kind == "runc" else ["docker", "stop", "-t", "20", name]
        subprocess.run(tool, capture_output=True, timeout=60)

    def remove(self, name: str) -> None:
        if self.kind == "runc":
            subprocess.run(["runc", "delete", "--force", name], capture_output=True, timeout=60)

    def run(self, timeout: float = 300.0, **kwargs) -> tuple[int, str]:
        """Start a container, wait for it to exit; its exit code and output."""
        container = self.start(**kwargs)
        try:
            code = container.wait(timeout)
        finally:
            container.stop()
        return code, container.log()


def env_dict(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def require_current(image: str, config: dict) -> None:
    """Skip unless the image was built from these sources (its label visionops.source, see scripts/image.sh)."""
    built_from = (config.get("Labels") or {}).get("visionops.source")
    current = subprocess.check_output([str(ROOT / "scripts" / "image.sh"), "source-hash"], text=True).strip()
    if built_from != current:
        pytest.skip(f"image {image} was built from other sources ({built_from} != {current}): make image")


def docker_engine(image: str, workdir: Path) -> Engine | None:
    """docker, if an engine answers and holds the image."""
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode:
        return None
    found = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True)
    if found.returncode:
        pytest.skip(f"image {image} is not built: make image")
    config = json.loads(found.stdout)[0]["Config"]
    require_current(image, config)
    return Engine("docker", image, config, workdir=workdir)


def image_rootfs(image: str, image_id: str) -> str:
    """The image's root filesystem, mounted by buildah from the working container TEST_CONTAINER.

    With vfs a working container is a full copy of the image (minutes for several GB), so it is kept between
    sessions and made again only when it holds another image (scripts/image.sh removes it after a build).
    Containers here never write to it: runc mounts it read-only.
    """
    held = subprocess.run(
        [*BUILDAH, "inspect", "--type", "container", "--format", "{{.FromImageID}}", TEST_CONTAINER],
        capture_output=True,
        text=True,
    )
    if held.returncode or held.stdout.strip() != image_id:
        subprocess.run([*BUILDAH, "rm", TEST_CONTAINER], capture_output=True)
        subprocess.run(
            [*BUILDAH, "from", "--pull-never", "--name", TEST_CONTAINER, image],
            check=True,
            capture_output=True,
        )
    return subprocess.check_output([*BUILDAH, "mount", TEST_CONTAINER], text=True).strip()


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """An engine that starts containers from the built image; skips with the reason where none can."""
    image = image_name()
    workdir = tmp_path_factory.mktemp("containers")
    docker = docker_engine(image, workdir)
    if docker is not None:
        return docker
    missing = [tool for tool in ("buildah", "runc") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"no Docker engine, and {' and '.join(missing)} not installed (make image-deps)")
    if os.geteuid() != 0:
        pytest.skip("buildah (vfs) and runc start containers as root here")
    found = subprocess.run([*BUILDAH, "inspect", "--type", "image", image], capture_output=True, text=True)
    if found.returncode:
        pytest.skip(f"image {image} is not built: make image")
    inspected = json.loads(found.stdout)
    config = inspected["OCIv1"]["config"]
    require_current(image, config)
    rootfs = image_rootfs(image, inspected["FromImageID"])
    return Engine("runc", image, config, rootfs=rootfs, workdir=workdir)


# ---- the image's command line and versions -------------------------------------------------------------------


def test_image_help_runs_as_the_image_user(engine):
    code, out = engine.run(timeout=300)  # ENTRYPOINT + CMD: visionops --help
    assert code == 0, out
    for command in ("serve", "monitor", "pipeline", "train"):
        assert command in out, f"`visionops --help` in the image does not list {command}:\n{out}"
    assert engine.image_user() == (10001, 10001)


VERSIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"
)


def test_installed_versions_equal_constraints(engine):
    from packaging.requirements import Requirement

    code, out = engine.run(command=["python", "-c", VERSIONS], timeout=300)
    assert code == 0, out
    installed = json.loads(out.strip().splitlines()[-1])
    pins = [
        Requirement(line.split("#")[0])
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert pins, "constraints.txt pins nothing"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    checked = 0
    for pin in pins:
        name = pin.name.lower().replace("_", "-")
        if name not in installed:
            assert name not in runtime, f"{pin} is a runtime dependency but not installed in the image"
            continue  # a development tool (moto) stays out of the image
        checked += 1
        assert pin.specifier.contains(installed[name], prereleases=True), (
            f"image has {name} {installed[name]}"
        )
    assert checked >= 8, f"only {checked} pins checked"
    assert installed["visionops"] == image_name().rsplit(":", 1)[1], (
        "the image tag is not the package version"
    )
    code, out = engine.run(command=["python", "-m", "pip", "check"], timeout=300)
    assert code == 0, f"pip check in the image:\n{out}"


# ---- a pipeline step ----------------------------------------------------------------------------------------


def source_images(root: Path) -> Path:
    """A small synthetic image folder (glasses / no_glasses) for the ingest step."""
    from visionops.data.synth import generate

    return Path(generate(str(root / "source"), count=24, size=48, seed=3))


def executor_input(run_root: str) -> dict:
    """The executor input the KFP launcher passes to the ingest step (parameters + the output artifact)."""
    return {
        "inputs": {
            "parameterValues": {
                "source_uri": "/data/source",
                "golden_uri": "",
                "val_fraction": 0.25,
                "test_fraction": 0.25,
                "seed": 0,
            }
        },
        "outputs": {
            "artifacts": {
                "dataset": {
                    "artifacts": [
                        {
                            "name": "projects/visionops/artifacts/ingest-dataset",
                            "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
                            "uri": f"minio://{run_root}/ingest/dataset",
                            "metadata": {},
                        }
                    ]
                }
            },
            "outputFile": "/tmp/kfp_outputs/output_metadata.json",
        },
    }


def test_kfp_step_runs_the_compiled_executor_command(engine, tmp_path):
    step = executor("ingest")
    assert step["image"] == engine.image
    source = source_images(tmp_path)
    artifacts, outputs = tmp_path / "minio", tmp_path / "kfp_outputs"
    for folder in (artifacts, outputs):  # the step runs as the image's user
        folder.mkdir()
        folder.chmod(0o777)
    run_root = "mlpipeline/v2/artifacts/visionops-training/run-1"
    payload = json.dumps(executor_input(run_root))
    args = [payload if a == "{{$}}" else a for a in step["args"]]
    code, out = engine.run(
        command=step["command"],
        args=args,
        empty_dirs={"/tmp": 2**30},
        binds={
            "/data/source": (source, True),
            MINIO_MOUNT: (artifacts, False),
            "/tmp/kfp_outputs": (outputs, False),
        },
        timeout=600,
    )
    assert code == 0, out
    dataset = artifacts / run_root / "ingest" / "dataset"
    manifest = (dataset / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 24, f"the dataset lists {len(manifest) - 1} images, not 24"
    assert (dataset / "manifest.csv").stat().st_uid == 10001, "the step did not run as the image's user"
    metadata = json.loads((outputs / "output_metadata.json").read_text())
    (artifact,) = metadata["artifacts"]["dataset"]["artifacts"]
    assert artifact["metadata"]["images"] == 24 and sorted(artifact["metadata"]["classes"]) == CLASSES


# ---- the serving pod ------------------------------------------------------------------------------------------


def jpeg(seed: int) -> bytes:
    import io

    from visionops.data.synth import render_pair

    face = render_pair(seed, size=64)[0]
    buffer = io.BytesIO()
    face.save(buffer, format="JPEG")
    return buffer.getvalue()


def test_serving_pod_containers_answer_from_the_image(engine, tmp_path, monkeypatch):
    s3 = start_moto()
    containers: list[Container] = []
    try:
        secret = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        bucket = config_map()["VISIONOPS_MODEL_URI"].removeprefix("s3://").split("/")[0]
        s3.make_bucket(bucket)
        bundle = feature_bundle(tmp_path)
        from visionops.bundle import MARKER
        from visionops.storage import publish_dir

        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        publish_dir(bundle, config_map()["VISIONOPS_MODEL_URI"], MARKER)
        serve_port, monitor_port = free_port(), free_port()
        monitor = pod_container("drift-monitor", secret)
        monitor["env"].update(S3_ENDPOINT_URL=s3.endpoint, VISIONOPS_MONITOR_PORT=str(monitor_port))
        serving = pod_container("serving", secret)
        serving["env"].update(
            S3_ENDPOINT_URL=s3.endpoint, VISIONOPS_MONITOR_URL=f"http://127.0.0.1:{monitor_port}"
        )
        serving["args"] = [str(serve_port) if a == "3000" else a for a in serving["args"]]
        assert serving["read_only"] and monitor["read_only"], "the manifests ask for a read-only root"
        containers.append(engine.start(**monitor))
        containers.append(engine.start(**serving))
        probe_serving(serve_port, monitor_port, containers)
        for container in containers:
            assert container.uid_gid() == (10001, 10001)
            denied = container.exec("touch", "/opt/venv/written")
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr
            assert container.exec("touch", "/tmp/written").returncode == 0, "the /tmp emptyDir is writable"
    finally:
        for container in containers:
            container.stop()
        s3.proc.terminate()
        s3.proc.wait(timeout=10)


def probe_serving(serve_port: int, monitor_port: int, containers: list[Container]) -> None:
    """/readyz, /classify and /metrics of serving; the sidecar receives the request's features."""
    serve = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=60)
    monitor = httpx.Client(base_url=f"http://127.0.0.1:{monitor_port}", timeout=60)

    def ready(client: httpx.Client) -> bool:
        for container in containers:
            assert container.proc.poll() is None, f"{container.name} exited:\n{container.log()}"
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    started = time.monotonic()
    wait_until(lambda: ready(monitor), timeout=STARTUP_TIMEOUT, interval=1.0)
    wait_until(lambda: ready(serve), timeout=STARTUP_TIMEOUT, interval=1.0)
    print(f"serving pod ready after {time.monotonic() - started:.0f}s")
    answer = serve.post("/classify", files={"image": ("face.jpg", jpeg(1), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["label"] in CLASSES and answer.json()["model_version"].startswith("m-")
    bad = serve.post("/classify", files={"image": ("x.jpg", b"not an image", "image/jpeg")})
    assert 400 <= bad.status_code < 500, bad.text
    metrics = serve.get("/metrics").text
    assert "visionops_requests_total{" in metrics and "visionops_model_info{" in metrics
    received = wait_until(
        lambda: metric_value(monitor.get("/metrics").text, "visionops_monitor_rows_received_total")
    )
    assert received >= 1.0


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
