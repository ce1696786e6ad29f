"""The model as an ONNX graph: export, parity, int8 quantization, and an ONNX Runtime stand-in for the model.

Serving on CPU is bound by the runtime, not by HTTP, and ONNX Runtime runs the same graph several times faster
than eager PyTorch on small CNNs. This module gives everything the other stages need for that:

- :func:`export_onnx` writes the model as ONNX with a dynamic batch axis and TWO outputs, ``logits`` and
  ``embedding`` (the input of the classification head), so drift features come from the same forward pass in
  both runtimes;
- :func:`parity` compares an exported graph with the PyTorch model on real images (max probability
  difference, identical decisions at the bundle's threshold);
- :func:`quantize_int8` makes a separate int8 artifact (ONNX Runtime static quantization, calibrated on
  training images);
- :class:`OnnxModel` runs an artifact behind the small surface the library uses of a torch model (call ->
  logits, ``parameters``, ``state_dict``, ``eval``), so :meth:`Bundle.predict_proba` and the gate evaluate
  the artifact that serves without knowing it;
- :func:`build_export` does the whole package-time job for a bundle and returns the files and metadata to add
  (:class:`Export`); :func:`attach_export` is the one place that writes them into a bundle.

Nothing heavy is imported at module load (torch, onnx and onnxruntime are imported inside the functions).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
#: runtime name -> the bundle file it serves (torch serves model.safetensors)
ARTIFACTS = {"onnx": ONNX_FILE, "onnx-int8": INT8_FILE}
RUNTIMES = ("auto", "torch", *ARTIFACTS)
#: Parity bound of issue 21: an ONNX graph may differ from PyTorch by at most this much in any probability.
MAX_PROB_DIFF = 1e-4
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "embedding")


# -- export -------------------------------------------------------------------------------------------------------
def _with_embedding(model, architecture: str):
    """``model`` wrapped so that one forward returns ``(logits, embedding)`` (the head's input, flattened)."""
    from torch import nn

    from visionops.models import penultimate

    class WithEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            embedding, logits = penultimate(self.model, architecture)(x)
            return logits, embedding

    return WithEmbedding().eval()


def export_onnx(model, architecture: str, image_size: int, path: str | Path) -> Path:
    """Write ``model`` (eval mode, CPU) as an ONNX graph with a dynamic batch axis; returns ``path``.

    Uses torch's ``torch.export``-based exporter (the maintained one; the TorchScript exporter is
    deprecated). Its progress lines are kept out of stdout (the CLI prints results there) and logged.
    """
    import torch

    path = Path(path)
    wrapper = _with_embedding(model.eval().cpu(), architecture)
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    chatter = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter):
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
            program.save(str(path))
    except Exception as exc:  # the exporter raises many types; all mean "this model did not export"
        raise BundleError(f"ONNX export of {architecture} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        log.debug("torch.onnx: %s", chatter.getvalue())
    return path


def cpu_limit_threads(root: str | Path = "/sys/fs/cgroup") -> int:
    """CPU threads this process may use: the container's CPU limit (cgroup v2 ``cpu.max``, v1 quota/period),
    rounded up, capped by the CPUs this process can run on. Without a limit: those CPUs.

    A runtime that sizes its pool from the host's cores in a pod limited to 2 CPUs spins 8+ threads on 2
    CPUs' worth of quota and is throttled; this is the number to give torch and ONNX Runtime instead.
    """
    root = Path(root)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = period = None
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            quota, period = float(fields[0]), float(fields[1]) if len(fields) > 1 else 100000.0
    except (OSError, ValueError, IndexError):
        try:  # cgroup v1
            q = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
            p = float((root / "cpu" / "cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quota, period = q, p
        except (OSError, ValueError):
            pass
    if quota is None or not period:
        return max(1, cpus)
    return max(1, min(cpus, -(-int(quota) // int(period))))


def open_session(path: str | Path, *, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads (None: the CPU limit).

    A missing, truncated or otherwise unloadable file raises :class:`BundleError` with ONNX Runtime's reason.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path.name} is missing ({path})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_limit_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle pool threads sleep instead of spinning: in a CPU-limited pod (or on a busy host) spinning burns the
    # quota the working threads need (measured on a loaded 2-core box: 2 threads 154 -> 298 images/s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
        raise BundleError(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0]}") from exc


class OnnxModel:
    """An ONNX artifact behind the surface the library uses of a torch classifier.

    Calling it with a (N, 3, H, W) tensor returns the logits tensor; :meth:`outputs` gives logits and
    embeddings as numpy. ``parameters``/``state_dict`` are the graph's initializers (int8 ones for a quantized
    graph), so size and parameter counts describe the artifact itself.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, runtime: str = "onnx") -> None:
        self.path = Path(path)
        self.runtime = runtime
        self.session = open_session(self.path, threads=threads)
        self._initializers: dict[str, Any] | None = None

    @property
    def artifact_file(self) -> Path:
        """The file that serves (the gate reports its size as the model size)."""
        return self.path

    def outputs(self, batch) -> tuple[Any, Any]:
        """``(logits (N, C), embedding (N, D))`` as float32 numpy arrays for a batch tensor or array."""
        import numpy as np

        array = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
        logits, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array.astype(np.float32)})
        return logits, embedding

    def __call__(self, batch):
        import torch

        return torch.from_numpy(self.outputs(batch)[0])

    def eval(self) -> OnnxModel:
        return self

    def state_dict(self) -> dict[str, Any]:
        if self._initializers is None:
            import onnx
            import torch
            from onnx import numpy_helper

            graph = onnx.load(str(self.path)).graph
            self._initializers = {
                t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer
            }
        return self._initializers

    def parameters(self):
        yield from self.state_dict().values()


# -- parity, quantization, speed ---------------------------------------------------------------------------------
def torch_outputs(model, architecture: str, batch) -> tuple[Any, Any]:
    """``(logits, embedding)`` of the PyTorch model as numpy (the reference side of parity)."""
    import torch

    from visionops.models import penultimate

    with torch.inference_mode():
        embedding, logits = penultimate(model, architecture)(batch)
    return logits.float().numpy(), embedding.float().numpy()


def softmax(logits):
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def parity(
    reference: tuple[Any, Any],
    candidate: tuple[Any, Any],
    *,
    positive_index: int,
    threshold: float,
    max_prob_diff: float = MAX_PROB_DIFF,
) -> dict[str, Any]:
    """Compare two runtimes' ``(logits, embedding)`` on the same images.

    Passes when no class probability differs by more than ``max_prob_diff`` and every image gets the same
    decision at ``threshold`` (the bundle's decision rule). The figures go into the bundle as the proof.
    """
    import numpy as np

    from visionops.bundle import decide_indices

    p_ref, p_new = softmax(reference[0]), softmax(candidate[0])
    prob_diff = float(np.abs(p_ref - p_new).max()) if len(p_ref) else 0.0
    same = decide_indices(p_ref, positive_index, threshold) == decide_indices(
        p_new, positive_index, threshold
    )
    emb_ref, emb_new = np.asarray(reference[1]), np.asarray(candidate[1])
    emb_diff = float(np.abs(emb_ref - emb_new).max()) if emb_ref.size else 0.0
    return {
        "images": len(p_ref),
        "max_prob_diff": prob_diff,
        "max_embedding_diff": emb_diff,
        "decisions_differ": int((~same).sum()),
        "threshold": float(threshold),
        "bound": max_prob_diff,
        "passed": bool(prob_diff <= max_prob_diff and same.all()),
    }


def quantize_int8(fp32_path: str | Path, calibration, out_path: str | Path) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of ``fp32_path``, calibrated on ``calibration``
    (an (N, 3, H, W) array of preprocessed training images). Writes ``out_path`` and returns it.

    Static quantization fixes each activation's scale from the calibration images, so those must look like
    production inputs; a calibration set that does not (a constant image) gives an artifact the gate refuses.
    """
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(
            f"calibration images must be a non-empty (N, 3, H, W) batch, got {calibration.shape}"
        )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="visionops-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(out_path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as exc:
            raise BundleError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    return out_path


def images_per_second(fn, batch, *, min_seconds: float = 1.0, min_runs: int = 3) -> float:
    """Images/s of ``fn(batch)`` after one warm-up call, timed for at least ``min_seconds``."""
    fn(batch)
    count, started = 0, time.perf_counter()
    while count < min_runs or time.perf_counter() - started < min_seconds:
        fn(batch)
        count += 1
    return len(batch) * count / (time.perf_counter() - started)


def machine() -> dict[str, Any]:
    """Where a speed figure was measured: CPU model, CPUs usable, load average."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "threads": cpu_limit_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# -- the package-time job -----------------------------------------------------------------------------------------
@dataclass
class Export:
    """What an export adds to a bundle: ``files`` (bundle-relative name -> local file) and ``meta`` (the
    ``onnx`` entry of bundle.json: status, files and their sha256, parity, speed, recommended runtime)."""

    files: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _speed(bundle, runtimes: dict[str, Any], golden, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """Images/s of each runtime at each batch size (in-process, this machine), and the fastest runtime at the
    best batch size (the ``auto`` choice of serving)."""
    import numpy as np
    import torch

    from visionops.models import penultimate

    run_torch = penultimate(bundle.model, bundle.architecture)

    def torch_fn(x):
        with torch.inference_mode():
            return run_torch(x)

    figures: dict[str, dict[str, float]] = {"torch": {}}
    figures.update({name: {} for name in runtimes})
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_limit_threads())  # what serving gives both runtimes (the ONNX sessions have it)
    try:
        for bs in batch_sizes:
            batch = golden[np.arange(bs) % len(golden)]
            figures["torch"][str(bs)] = round(images_per_second(torch_fn, batch), 2)
            for name, model in runtimes.items():
                figures[name][str(bs)] = round(images_per_second(model.outputs, batch), 2)
    finally:
        torch.set_num_threads(threads)
    best = {name: max(by_bs.values()) for name, by_bs in figures.items()}
    return {
        "images_per_s": figures,
        "best_images_per_s": best,
        "fastest": max(best, key=best.get),
        "machine": machine(),
        "threads": cpu_limit_threads(),
    }


def build_export(
    bundle,
    golden: Any,
    workdir: str | Path,
    *,
    calibration: Any = None,
    batch_sizes: tuple[int, ...] = (1, 16),
    measure: bool = True,
) -> Export:
    """Export ``bundle``'s model to ONNX in ``workdir``, prove parity on ``golden`` (a preprocessed (N, 3, H, W)
    tensor of golden images) and, with ``calibration`` (preprocessed training images), add an int8 artifact.

    Never raises for a model that does not export or misses parity: the returned :class:`Export` then has no
    ONNX file and ``meta["status"]`` says why, so the bundle still serves with PyTorch.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"status": "failed", "bound": MAX_PROB_DIFF, "files": {}}
    fp32 = workdir / ONNX_FILE
    try:
        export_onnx(bundle.model, bundle.architecture, bundle.preprocess.image_size, fp32)
        model = OnnxModel(fp32)
    except BundleError as exc:
        log.warning("%s; serving stays on PyTorch", exc)
        return Export(meta={**meta, "reason": str(exc)})
    reference = torch_outputs(bundle.model, bundle.architecture, golden)
    check = parity(
        reference, model.outputs(golden), positive_index=bundle.positive_index, threshold=bundle.threshold
    )
    meta["parity"] = check
    if not check["passed"]:
        reason = (
            f"ONNX parity missed on {check['images']} golden images: max probability difference "
            f"{check['max_prob_diff']:.2e} (bound {MAX_PROB_DIFF:.0e}), {check['decisions_differ']} decisions differ"
        )
        log.warning("%s; serving stays on PyTorch", reason)
        return Export(meta={**meta, "reason": reason})
    files = {ONNX_FILE: fp32}
    runtimes = {"onnx": model}
    if calibration is not None:
        try:
            int8 = quantize_int8(fp32, calibration, workdir / INT8_FILE)
            runtimes["onnx-int8"] = OnnxModel(int8, runtime="onnx-int8")
        except BundleError as exc:
            log.warning("%s; the fp32 graph is kept", exc)
            meta["int8"] = {"status": "failed", "reason": str(exc)}
    if "onnx-int8" in runtimes:
        files[INT8_FILE] = runtimes["onnx-int8"].path
        # int8 is not meant to match: its figures are reported, and the gate judges the artifact itself
        meta["int8"] = {
            "status": "ok",
            "parity": parity(
                reference,
                runtimes["onnx-int8"].outputs(golden),
                positive_index=bundle.positive_index,
                threshold=bundle.threshold,
            ),
            "calibration_images": len(calibration),  # type: ignore[arg-type]
            "method": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations (MinMax)",
        }
    meta.update(
        status="ok",
        files={
            name: {"sha256": sha256_file(path), "bytes": path.stat().st_size} for name, path in files.items()
        },
        outputs=list(OUTPUT_NAMES),
        input=INPUT_NAME,
        dynamic_batch=True,
        model_version=bundle.version,
        versions=_versions(),
    )
    if measure:
        meta["speed"] = _speed(bundle, runtimes, golden, batch_sizes)
    return Export(files=files, meta=meta)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def attach_export(bundle_uri: str, export: Export) -> dict[str, Any]:
    """Add an export's files and its ``onnx`` metadata to the bundle at ``bundle_uri``; returns the new meta.

    The one place that writes an export into a bundle (files first, bundle.json last).
    """
    from visionops import storage
    from visionops.bundle import update_meta

    for name, path in export.files.items():
        storage.write_bytes(storage.join(bundle_uri, name), Path(path).read_bytes())
    return update_meta(bundle_uri, onnx=export.meta)


def artifact_model(bundle, runtime: str, *, threads: int | None = None) -> OnnxModel:
    """The :class:`OnnxModel` for ``runtime`` ("onnx" or "onnx-int8") of a loaded bundle, after checking that
    the export passed and the file is the one recorded (sha256). Raises :class:`BundleError` saying why not."""
    if runtime not in ARTIFACTS:
        raise ConfigError(f"unknown ONNX runtime {runtime!r}; valid: {', '.join(ARTIFACTS)}")
    name = ARTIFACTS[runtime]
    info = bundle.meta.get("onnx") or {}
    if info.get("status") != "ok":
        why = info.get("reason") or "the bundle has no ONNX export (run `visionops package` with a dataset)"
        raise BundleError(f"no usable {name}: {why}")
    recorded = (info.get("files") or {}).get(name)
    if recorded is None:
        raise BundleError(f"the bundle's export has no {name}")
    if bundle.local_dir is None or not (Path(bundle.local_dir) / name).is_file():
        raise BundleError(f"{name} is missing from the bundle at {bundle.uri}")
    path = Path(bundle.local_dir) / name
    if sha256_file(path) != recorded["sha256"]:
        raise BundleError(f"{name} is corrupt: its sha256 differs from the one recorded at export")
    return OnnxModel(path, threads=threads, runtime=runtime)


def as_runtime(bundle, runtime: str, *, threads: int | None = None):
    """``bundle`` whose model is the artifact ``runtime`` serves ("torch": unchanged). The gate evaluates
    what this returns, so precision, golden figures and the ops budget are those of the served artifact."""
    import dataclasses

    if runtime == "torch":
        return bundle
    return dataclasses.replace(bundle, model=artifact_model(bundle, runtime, threads=threads))


def _split_batch(bundle, dataset, split: str, limit: int):
    """Up to ``limit`` images of ``split`` (in manifest order: the same images every time), preprocessed."""
    from visionops.evaluation.run import _resolve, load_images

    frame = dataset.split(split)
    if frame.empty:
        raise ConfigError(f"dataset {dataset.uri} has no {split!r} images to export against")
    paths = [_resolve(p, dataset.uri) for p in frame["path"].head(limit)]
    return bundle.to_tensor(load_images(paths))


def export_bundle(
    bundle_uri: str,
    dataset_uri: str | None = None,
    *,
    int8: bool = False,
    max_golden: int = 256,
    max_calibration: int = 128,
    measure: bool = True,
) -> dict[str, Any]:
    """Export the bundle at ``bundle_uri`` to ONNX, check parity on its dataset's golden (test) images and
    attach the result; with ``int8`` also a static-int8 artifact calibrated on training images.

    ``dataset_uri`` defaults to the dataset recorded in the bundle's lineage. Returns the ``onnx`` metadata
    now in the bundle (``status`` "ok", or "failed"/"skipped" with the ``reason``; serving then uses torch).
    """
    from visionops.bundle import load_bundle, read_meta, update_meta
    from visionops.data.manifest import load_dataset
    from visionops.errors import VisionOpsError

    meta = read_meta(bundle_uri)
    dataset_uri = dataset_uri or (meta.get("lineage") or {}).get("dataset_uri")
    if not dataset_uri:
        reason = "no golden images to prove parity on: pass the dataset (--dataset)"
        log.warning("ONNX export skipped: %s; serving stays on PyTorch", reason)
        return update_meta(bundle_uri, onnx={"status": "skipped", "reason": reason})["onnx"]
    bundle = load_bundle(bundle_uri, device="cpu")
    try:
        dataset = load_dataset(dataset_uri)
        golden = _split_batch(bundle, dataset, "test", max_golden)
        calibration = _split_batch(bundle, dataset, "train", max_calibration).numpy() if int8 else None
    except VisionOpsError as exc:
        reason = f"cannot read golden images from {dataset_uri}: {exc}"
        log.warning("ONNX export skipped: %s; serving stays on PyTorch", reason)
        return update_meta(bundle_uri, onnx={"status": "skipped", "reason": reason})["onnx"]
    with tempfile.TemporaryDirectory(prefix="visionops-onnx-") as tmp:
        export = build_export(bundle, golden, tmp, calibration=calibration, measure=measure)
        export.meta["golden_version"] = dataset.golden_version
        return attach_export(bundle_uri, export)["onnx"]


def runtime_verdicts(meta: dict[str, Any], bundle, runtime: str, verdict: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``runtime_evaluations`` with the gate's ``verdict`` (threshold, threshold_info, evaluation)
    for ``runtime``'s artifact added, pinned to that artifact's sha256: a re-export invalidates it."""
    artifact = getattr(bundle.model, "artifact_file", None)
    pinned = {**verdict, "artifact_sha256": sha256_file(artifact) if artifact else None}
    return {**(meta.get("runtime_evaluations") or {}), runtime: pinned}
