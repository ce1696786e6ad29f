"""A small wrapper over ``kfp.Client``: connect with a token and start a run of a named pipeline.

Used by the drift sidecar's retraining trigger (and reusable by the pipeline tools). The token is, in order:
the ``token`` argument, the file at ``token_path``, the file named by ``KF_PIPELINES_SA_TOKEN_PATH``, the
projected service-account token at ``/var/run/secrets/kubeflow/pipelines/token`` (what a Kubeflow
``PodDefault`` / ``ServiceAccountToken`` volume mounts). Without any, the client connects without one (a
port-forward or an in-cluster endpoint without auth).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from visionops.errors import ConfigError, VisionOpsError

log = logging.getLogger(__name__)

DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


class KfpError(VisionOpsError):
    """The Kubeflow Pipelines API refused or failed a request."""


def _read_token(token_path: str | None) -> str | None:
    candidates = [token_path, os.environ.get("KF_PIPELINES_SA_TOKEN_PATH"), DEFAULT_TOKEN_PATH]
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path).read_text().strip() or None
    if token_path:
        raise ConfigError(f"KFP token file {token_path} does not exist")
    return None


def connect(
    host: str, *, token: str | None = None, token_path: str | None = None, namespace: str | None = None
):
    """A ``kfp.Client`` for ``host`` (e.g. ``http://ml-pipeline-ui.kubeflow:80``), authenticated with a
    bearer token when one is given or mounted."""
    import kfp

    if not host:
        raise ConfigError(
            "no KFP host given (set --kfp-host / VISIONOPS_KFP_HOST, e.g. http://ml-pipeline.kubeflow:8888)"
        )
    token = token or _read_token(token_path)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
            return kfp.Client(host=host, existing_token=token, namespace=namespace)
    except Exception as exc:
        raise KfpError(f"cannot connect to Kubeflow Pipelines at {host}: {exc}") from exc


def latest_version_id(client, pipeline_id: str) -> str:
    """The id of the most recently created version of a pipeline."""
    response = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
    versions = response.pipeline_versions or []
    if not versions:
        raise KfpError(f"pipeline {pipeline_id} has no versions; upload one first")
    return versions[0].pipeline_version_id


def create_run(
    host: str,
    *,
    pipeline_name: str,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None = None,
    token: str | None = None,
    token_path: str | None = None,
    namespace: str | None = None,
) -> str:
    """Start a run of the latest version of the pipeline named ``pipeline_name`` in ``experiment`` (created
    when missing). Returns the run id.

    A host ``local://DIR`` runs the pipeline on this machine instead (``visionops pipeline run --local`` in a
    background process, outputs under DIR): the laptop's stand-in for a cluster, with the same call.
    """
    if host.startswith("local://"):
        from visionops.demo.launcher import launch_local_run, runs_dir_of

        return launch_local_run(
            runs_dir_of(host),
            pipeline_name=pipeline_name,
            params=params,
            experiment=experiment,
            run_name=run_name,
        )
    client = connect(host, token=token, token_path=token_path, namespace=namespace)
    try:
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            raise KfpError(
                f"no pipeline named {pipeline_name!r} at {host}; upload it (visionops pipeline upload) or set "
                "--kfp-pipeline to an existing pipeline's name"
            )
        version_id = latest_version_id(client, pipeline_id)
        # kfp prints "Experiment details: <link>" to stdout; the sidecar logs instead.
        with contextlib.redirect_stdout(io.StringIO()):
            exp = client.create_experiment(experiment, namespace=namespace)
            run = client.run_pipeline(
                experiment_id=exp.experiment_id,
                job_name=run_name or f"{pipeline_name}-run",
                params=params,
                pipeline_id=pipeline_id,
                version_id=version_id,
            )
    except VisionOpsError:
        raise
    except Exception as exc:
        raise KfpError(f"Kubeflow Pipelines at {host} refused to start {pipeline_name!r}: {exc}") from exc
    log.info(
        "started KFP run %s of %s (version %s) in experiment %s",
        run.run_id,
        pipeline_name,
        version_id,
        experiment,
    )
    return run.run_id
