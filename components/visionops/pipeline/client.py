"""The one Kubeflow Pipelines client: connect to the KFP API, find the token, and start a run of a pipeline.

Used by ``visionops pipeline submit`` (:mod:`visionops.pipeline.submit`), the drift sidecar's retraining
trigger (:mod:`visionops.drift.trigger`) and the demo. One behaviour for all of them:

- **Token**, first found wins: the ``token`` argument; the file ``token_path``; the file named by
  ``KF_PIPELINES_SA_TOKEN_PATH``; the projected ServiceAccount token at
  ``/var/run/secrets/kubeflow/pipelines/token`` (audience ``pipelines.kubeflow.org``, what the sidecar's
  ``kfp-token`` volume and a Kubeflow ``PodDefault`` mount). Without any, ``kfp.Client`` connects on its own
  terms: with a ``host`` (a port-forward) without a token, without a host from the kube config or, inside a
  pod, through the in-cluster API Service. The file is read on every :func:`connect`: projected tokens rotate.
- **Namespace** (the Kubeflow profile that owns experiments and runs): the ``namespace`` argument, else the
  one saved in the kfp context (``~/.config/kfp/context.json``, written by ``kfp``'s CLI), else, when the
  server says it is multi-user, the namespace of the pod; single-user installs need none.
- **Errors**: every refusal or connection failure is a :class:`KfpError` saying where, what and, for 401/403,
  which credential to check.

A host ``local://DIR`` runs the pipeline on this machine instead (:mod:`visionops.pipeline.local_runs`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from visionops.errors import ConfigError, VisionOpsError

log = logging.getLogger(__name__)

#: Where a projected ServiceAccount token for the KFP API is mounted (kfp's own default, too).
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
#: The env variable that names another token file (kfp.client.KF_PIPELINES_SA_TOKEN_PATH).
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
#: The audience the KFP API server's authenticator accepts for ServiceAccount tokens.
TOKEN_AUDIENCE = "pipelines.kubeflow.org"
#: The namespace of the KFP installation: kfp.Client's "not given" value (its in-cluster Service lives there).
KFP_SYSTEM_NAMESPACE = "kubeflow"


class KfpError(VisionOpsError):
    """The Kubeflow Pipelines API refused a request or could not be reached."""


def read_token(token_path: str | None = None) -> str | None:
    """The bearer token from ``token_path``, else ``$KF_PIPELINES_SA_TOKEN_PATH``, else the projected-token path.

    A ``token_path`` that was asked for but does not exist is a configuration error (a missing volume), never
    silently replaced by another token; the other two are optional.
    """
    if token_path and not Path(token_path).is_file():
        raise ConfigError(
            f"KFP token file {token_path} does not exist (is the projected token volume with audience "
            f"{TOKEN_AUDIENCE} mounted there?)"
        )
    for path in (token_path, os.environ.get(TOKEN_PATH_ENV), DEFAULT_TOKEN_PATH):
        if path and Path(path).is_file():
            return Path(path).read_text().strip() or None
    return None


def connect(
    host: str | None,
    *,
    token: str | None = None,
    token_path: str | None = None,
    cookies: str | None = None,
    ssl_ca_cert: str | None = None,
    verify_ssl: bool | None = None,
):
    """A ``kfp.Client`` for ``host`` (e.g. ``http://ml-pipeline.kubeflow:8888``), authenticated as the module
    docstring says. The profile namespace is passed to each call that takes one (see :func:`create_run`)."""
    import kfp

    token = token or read_token(token_path)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
            # kfp.Client's `namespace` is the KFP system namespace of its in-cluster URL, and "kubeflow" is
            # its "not given" value (the kfp context's namespace applies): never pass the profile here.
            return kfp.Client(
                host=host or None,
                existing_token=token,
                cookies=cookies,
                namespace=KFP_SYSTEM_NAMESPACE,
                ssl_ca_cert=ssl_ca_cert,
                verify_ssl=verify_ssl,
            )
    except Exception as exc:  # urllib3 errors from the healthz call, ValueError from a bad host
        raise api_error(exc, host, "cannot be reached") from exc


def api_error(exc: Exception, host: str | None, what: str) -> KfpError:
    """A :class:`KfpError` from a kfp_server_api / urllib3 exception: status, the server's reason, a hint."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "body", None) or getattr(exc, "reason", None) or exc
    where = host or "the in-cluster KFP API"
    detail = f"{status} {reason}" if status else str(reason)
    advice = " (check --token / --cookies or the projected token file)" if status in (401, 403) else ""
    return KfpError(f"Kubeflow Pipelines at {where} {what}: {detail}{advice}")


def latest_version_id(client, pipeline_id: str) -> str:
    """The id of the most recently created version of a pipeline."""
    response = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
    versions = response.pipeline_versions or []
    if not versions:
        raise KfpError(f"pipeline {pipeline_id} has no versions; upload one first")
    return versions[0].pipeline_version_id


def _start(client, pipeline_name: str, params: dict, experiment: str, run_name: str, namespace, host):
    """Create the experiment when missing and start a run of the pipeline's latest version: (run, exp id)."""
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        raise KfpError(
            f"no pipeline named {pipeline_name!r} at {host}; upload it (visionops pipeline submit) or set "
            "--kfp-pipeline to an existing pipeline's name"
        )
    version_id = latest_version_id(client, pipeline_id)
    # kfp prints "Experiment details: <link>" to stdout; the sidecar logs instead.
    with contextlib.redirect_stdout(io.StringIO()):
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=run_name,
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
        )
    log.info(
        "started KFP run %s of %s (version %s) in experiment %s",
        run.run_id,
        pipeline_name,
        version_id,
        experiment,
    )
    return run, exp.experiment_id


def episode_runs(client, experiment_id: str, episode: str, since: float) -> list:
    """The runs of ``experiment_id`` whose name starts with ``episode`` created at or after ``since`` (epoch
    seconds), oldest first (ties by run id): what every replica sees the same way."""
    predicate = {"operation": "IS_SUBSTRING", "key": "display_name", "stringValue": episode}
    response = client.list_runs(
        experiment_id=experiment_id,
        filter=json.dumps({"predicates": [predicate]}),
        sort_by="created_at desc",
        page_size=100,
    )
    runs = [
        run
        for run in response.runs or []
        if (run.display_name or "").startswith(episode) and _epoch(run.created_at) >= since
    ]
    return sorted(runs, key=lambda run: (_epoch(run.created_at), run.run_id))


def _epoch(created_at) -> float:
    if isinstance(created_at, dt.datetime):
        return created_at.timestamp()
    if isinstance(created_at, str) and created_at:
        return dt.datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    return 0.0


def create_run_once(
    host: str,
    *,
    pipeline_name: str,
    params: dict[str, Any],
    experiment: str,
    run_name: str,
    episode: str,
    window_s: float,
    token: str | None = None,
    token_path: str | None = None,
    namespace: str | None = None,
    clock=None,
) -> tuple[str, bool]:
    """Start the run of a drift episode for the whole fleet at most once: ``(run id, created by this call)``.

    Every replica's sidecar names its runs ``<episode>-...`` (``episode`` = ``retrain-<model version>``). Before
    creating, a run of the episode created within ``window_s`` seconds (the cooldown) is looked up and
    joined. Two replicas that create at the same moment both see both runs afterwards; the oldest (ties: the
    smaller run id) stays and the other creator deletes its own, so one run survives. ``local://`` hosts
    start the run directly (one process, one trigger).
    """
    if host.startswith("local://"):
        run_id = create_run(
            host, pipeline_name=pipeline_name, params=params, experiment=experiment, run_name=run_name
        )
        return run_id, True
    now = (clock or dt.datetime.now(dt.UTC).timestamp)()
    since = now - window_s if window_s > 0 else now
    client = connect(host, token=token, token_path=token_path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        existing = episode_runs(client, experiment_id, episode, since)
        if existing:
            log.info("episode %s already has run %s: joining it", episode, existing[0].run_id)
            return existing[0].run_id, False
        run, experiment_id = _start(client, pipeline_name, params, experiment, run_name, namespace, host)
        runs = episode_runs(client, experiment_id, episode, since)
        winner = runs[0].run_id if runs else run.run_id
        if winner != run.run_id:  # another replica created the episode's run at the same moment
            client.delete_run(run.run_id)
            log.info("episode %s: run %s was first; deleted this replica's %s", episode, winner, run.run_id)
            return winner, False
    except VisionOpsError:
        raise
    except Exception as exc:
        raise api_error(exc, host, f"refused to start {pipeline_name!r}") from exc
    return run.run_id, True


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
        from visionops.pipeline.local_runs import launch_local_run, runs_dir_of

        return launch_local_run(
            runs_dir_of(host),
            pipeline_name=pipeline_name,
            params=params,
            experiment=experiment,
            run_name=run_name,
        )
    client = connect(host, token=token, token_path=token_path)
    try:
        run, _ = _start(
            client, pipeline_name, params, experiment, run_name or f"{pipeline_name}-run", namespace, host
        )
    except VisionOpsError:
        raise
    except Exception as exc:
        raise api_error(exc, host, f"refused to start {pipeline_name!r}") from exc
    return run.run_id
