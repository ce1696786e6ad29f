"""Package a model bundle as a Bento (``.bento`` archive) for users who ``bentoml containerize`` elsewhere.

The Bento holds the ``visionops`` library (source), the serving service, the model bundle under ``model/``
(served by default when ``VISIONOPS_MODEL_URI`` is unset; the variable still overrides it) and a Python
environment pinned to the versions this project runs with (``lock_packages: false``: BentoML's lock step
would otherwise resolve torch to the full CUDA wheel set and needs network access to an index).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from visionops import storage
from visionops.errors import ConfigError, StorageError
from visionops.serving import BUNDLED_MODEL_DIR, SERVICE_IMPORT

log = logging.getLogger(__name__)

BENTO_NAME = "visionops-classifier"
#: Runtime dependencies that serving does not need (pipeline submission, the drift sidecar's Evidently).
NOT_FOR_SERVING = {"kfp", "kfp-kubernetes", "kubernetes", "evidently"}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def serving_requirements() -> list[str]:
    """``name==version`` for every runtime dependency of visionops that serving needs, as installed now.

    The installed versions are the ones the tests ran with (``pip install -c constraints.txt``), so the Bento
    gets the same pins, torch and torchvision as their matched pair.
    """
    import re

    pins = []
    for requirement in metadata.requires("visionops") or []:
        if ";" in requirement and "extra ==" in requirement:
            continue  # optional (dev) extras
        name = _canonical(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        if name in NOT_FOR_SERVING:
            continue
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as exc:
            raise ConfigError(f"cannot pin {name!r} for the Bento: it is not installed here") from exc
    return sorted(pins)


def _stage(bundle_uri: str, root: Path) -> None:
    """Lay out the build context: the library source and the bundle files."""
    import visionops
    from visionops.bundle import MARKER, read_meta

    read_meta(bundle_uri)  # fails clearly on a missing or incomplete bundle
    source = Path(visionops.__file__).resolve().parent
    shutil.copytree(source, root / "visionops", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    model = root / BUNDLED_MODEL_DIR
    if storage.is_remote(bundle_uri):
        storage.download_dir(bundle_uri, model)
    else:
        shutil.copytree(bundle_uri, model)
    if not (model / MARKER).is_file():
        raise StorageError(f"copying the bundle {bundle_uri} into the Bento lost {MARKER}")


def package(
    bundle_uri: str,
    output: str,
    *,
    dataset_uri: str | None = None,
    onnx: bool = True,
    int8: bool = False,
) -> str:
    """Build a Bento serving ``bundle_uri`` and export it as a ``.bento`` archive to ``output``.

    ``output`` is a file name ending in ``.bento`` or a directory / s3:// prefix (the archive is then named
    ``visionops-classifier-<model_version>.bento``). Returns the archive's URI.

    With ``onnx`` (the default) the model is first exported to ONNX, checked for parity on the golden images
    of ``dataset_uri`` (default: the dataset in the bundle's lineage) and timed against PyTorch; ``int8`` adds a
    quantized graph calibrated on the training images (served only once the gate has blessed it). See
    :func:`visionops.onnx_runtime.export_bundle`: a failed export is reported and serving stays on PyTorch.
    """
    import bentoml

    from visionops.bundle import read_meta

    if onnx:
        from visionops.onnx_runtime import export_bundle

        report = export_bundle(bundle_uri, dataset_uri, int8=int8)
        log.info("ONNX export %s: %s", report.get("status"), report.get("reason") or report.get("parity"))

    meta = read_meta(bundle_uri)
    version = meta["model_version"]
    target = (
        output if str(output).endswith(".bento") else storage.join(output, f"{BENTO_NAME}-{version}.bento")
    )
    with tempfile.TemporaryDirectory(prefix="visionops-bento-") as tmp:
        root = Path(tmp)
        _stage(bundle_uri, root)
        log.info("building Bento %s:%s for %s", BENTO_NAME, version, bundle_uri)
        _forget(f"{BENTO_NAME}:{version}")
        bento = bentoml.bentos.build(
            SERVICE_IMPORT,
            name=BENTO_NAME,
            version=version,
            build_ctx=str(root),
            include=[
                "visionops/**/*.py",
                "visionops/**/*.yaml",
                "visionops/**/*.json",
                f"{BUNDLED_MODEL_DIR}/**",
            ],
            labels={
                "model_version": version,
                "architecture": str(meta["architecture"]),
                "positive_class": str(meta.get("positive_class", "")),
            },
            description=f"VisionOps classifier for {meta['classes']} (model {version}, {meta['architecture']})",
            python={"packages": serving_requirements(), "lock_packages": False},
            docker={"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"},
        )
        archive = root / "export" / f"{BENTO_NAME}-{version}.bento"
        archive.parent.mkdir()
        bentoml.export_bento(bento.tag, str(archive))
        if storage.is_remote(target):
            storage.store_for(target).upload_file(archive, target)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, target)
    log.info("exported %s to %s", bento.tag, target)
    return str(target)


def _forget(tag: str) -> None:
    """Remove an earlier build of the same tag from the local Bento store (packaging again replaces it)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.bentos.get(tag)
    except NotFound:
        return
    bentoml.bentos.delete(tag)
