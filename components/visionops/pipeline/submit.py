"""Submit the training pipeline to a Kubeflow Pipelines API server with ``kfp.Client``.

One call compiles the pipeline, uploads it (a new version when a pipeline of that name exists; the same
version again when its content is unchanged), finds or creates the experiment, and starts a run — or, with a
cron ``schedule``, a recurring run.

Connection, token lookup (``token``, a token file, the projected ServiceAccount token), ``cookies`` (e.g.
``authservice_session=...`` behind Dex/oauth2-proxy), the namespace default and the error type are those of
:mod:`visionops.pipeline.client`, shared with the drift sidecar's retraining trigger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionops.errors import ConfigError, VisionOpsError
from visionops.pipeline.client import KfpError, api_error, connect
from visionops.pipeline.training import PIPELINE_DESCRIPTION, PIPELINE_NAME, ClusterSettings

log = logging.getLogger(__name__)

#: The error of a refused submission: the one KFP client error (kept under this name for callers).
SubmitError = KfpError


@dataclass(frozen=True)
class SubmitResult:
    """What was created on the server."""

    pipeline_id: str
    version_id: str
    version_name: str
    experiment_id: str
    run_id: str | None = None
    recurring_run_id: str | None = None
    url: str = ""


def cron_expression(schedule: str) -> str:
    """KFP cron has 6 fields (seconds first); a classic 5-field cron gets ``0`` seconds prepended."""
    fields = schedule.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(
        f"schedule {schedule!r} must be a cron expression of 5 fields (minute hour day month weekday, "
        "e.g. '0 3 * * *' = daily at 03:00) or 6 fields with seconds first"
    )


def version_name_for(package: Path) -> str:
    """``v<package version>-<content hash>``: re-submitting unchanged code reuses the same pipeline version."""
    from visionops import __version__

    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:10]
    return f"v{__version__}-{digest}"


def _ui_link(host: str | None, page: str) -> str:
    return f"{host.rstrip('/')}/#/{page}" if host else f"/pipeline/#/{page}"


def _version_id(client, pipeline_id: str, version_name: str) -> str | None:
    """The ID of the pipeline version called ``version_name``, if it exists."""
    result = client.list_pipeline_versions(
        pipeline_id=pipeline_id,
        page_size=1,
        filter=json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]}
        ),
    )
    versions = result.pipeline_versions or []
    return versions[0].pipeline_version_id if versions else None


def upload(
    client, package: Path, *, pipeline_name: str = PIPELINE_NAME, namespace: str | None = None
) -> tuple[str, str, str]:
    """Upload ``package`` as a new pipeline, or as a new version of the pipeline called ``pipeline_name``.

    Returns (pipeline ID, version ID, version name). A first upload creates the pipeline with its first version;
    later uploads add a version named by :func:`version_name_for`, or reuse it when that content is there.
    """
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            str(package), pipeline_name=pipeline_name, description=PIPELINE_DESCRIPTION, namespace=namespace
        )
        versions = client.list_pipeline_versions(
            pipeline_id=pipeline.pipeline_id, page_size=1, sort_by="created_at desc"
        ).pipeline_versions
        if not versions:
            raise KfpError(f"pipeline {pipeline_name} was uploaded but the server lists no version of it")
        return pipeline.pipeline_id, versions[0].pipeline_version_id, versions[0].display_name
    version_name = version_name_for(package)
    existing = _version_id(client, pipeline_id, version_name)
    if existing:
        log.info("pipeline %s version %s exists already: reusing it", pipeline_name, version_name)
        return pipeline_id, existing, version_name
    version = client.upload_pipeline_version(
        str(package),
        pipeline_version_name=version_name,
        pipeline_id=pipeline_id,
        description=f"visionops {version_name}",
    )
    return pipeline_id, version.pipeline_version_id, version_name


def submit(
    host: str | None,
    *,
    experiment: str = "visionops",
    schedule: str | None = None,
    params: dict[str, Any] | None = None,
    token: str | None = None,
    token_path: str | None = None,
    cookies: str | None = None,
    namespace: str | None = None,
    run_name: str | None = None,
    pipeline_name: str = PIPELINE_NAME,
    settings: ClusterSettings | None = None,
    package: str | Path | None = None,
    service_account: str | None = None,
    pipeline_root: str | None = None,
    ssl_ca_cert: str | None = None,
    verify_ssl: bool | None = None,
    client=None,
) -> SubmitResult:
    """Upload the training pipeline and start a run (or a recurring run when ``schedule`` is a cron).

    ``params`` are run parameters (``data_uri`` is required); ``package`` uploads an already compiled YAML
    instead of compiling with ``settings``; ``client`` replaces the ``kfp.Client`` built from the auth options.
    """
    from visionops.pipeline.compile import compile_pipeline
    from visionops.pipeline.training import build_training_pipeline, coerce_parameters

    arguments = coerce_parameters(dict(params or {}), build_training_pipeline(settings))
    if "data_uri" not in arguments:
        raise ConfigError("the run needs data_uri (the images to train on, e.g. s3://bucket/raw/glasses)")
    cron = cron_expression(schedule) if schedule else None
    try:
        client = client or connect(
            host,
            token=token,
            token_path=token_path,
            cookies=cookies,
            ssl_ca_cert=ssl_ca_cert,
            verify_ssl=verify_ssl,
        )
        with tempfile.TemporaryDirectory(prefix="visionops-submit-") as tmp:
            path = (
                Path(package)
                if package
                else compile_pipeline(Path(tmp) / "training_pipeline.yaml", settings=settings)
            )
            pipeline_id, version_id, version_name = upload(
                client, path, pipeline_name=pipeline_name, namespace=namespace
            )
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        name = run_name or f"{pipeline_name} {version_name} {stamp}"
        common = dict(
            experiment_id=experiment_id,
            job_name=name,
            params=arguments,
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=pipeline_root,
            service_account=service_account,
        )
        if cron:
            recurring = client.create_recurring_run(
                cron_expression=cron, max_concurrency=1, no_catchup=True, enabled=True, **common
            )
            return SubmitResult(
                pipeline_id,
                version_id,
                version_name,
                experiment_id,
                recurring_run_id=recurring.recurring_run_id,
                url=_ui_link(host, f"recurringrun/details/{recurring.recurring_run_id}"),
            )
        run = client.run_pipeline(**common)
        return SubmitResult(
            pipeline_id,
            version_id,
            version_name,
            experiment_id,
            run_id=run.run_id,
            url=_ui_link(host, f"runs/details/{run.run_id}"),
        )
    except VisionOpsError:
        raise
    except Exception as exc:  # kfp_server_api.ApiException, urllib3 errors
        raise api_error(exc, host, "refused the submission") from exc
