"""Start a training-pipeline run on this machine, the way the KFP API starts one on a cluster.

:func:`launch_local_run` is what :func:`visionops.pipeline.client.create_run` does for a host of the form
``local://<runs_dir>``: the drift sidecar's retraining trigger (``--kfp-host local://DIR``) then starts local
runs through the same code path that starts cluster runs. Each run is a detached subprocess
(``visionops pipeline run --local``) with the run parameters mapped to its options; it lives in
``<runs_dir>/<run_id>/`` (``request.json``, ``run.log``, the pipeline outputs, and ``status.json`` once it
finished). :func:`read_status` and :func:`wait_for_run` follow a run.

``python -m visionops.pipeline.local_runs exec RUN_DIR`` is the wrapper that runs the pipeline and writes the status
(the detached process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from visionops.errors import ConfigError, VisionOpsError

LOCAL_SCHEME = "local://"
REQUEST_FILE = "request.json"
STATUS_FILE = "status.json"
LOG_FILE = "run.log"
#: ``visionops`` in this interpreter (``visionops.cli`` has no ``__main__`` block)
CLI = (sys.executable, "-m", "visionops")
#: pipeline parameters that have their own option in ``visionops pipeline run --local``
_OPTIONS = {"data_uri": "--data", "golden_uri": "--golden", "champion_uri": "--champion"}


class LocalRunError(VisionOpsError):
    """A local pipeline run could not be started or did not finish."""


def runs_dir_of(host: str) -> str:
    """``local:///abs/dir`` or ``local://rel/dir`` -> the directory."""
    if not host.startswith(LOCAL_SCHEME):
        raise ConfigError(f"{host!r} is not a local pipeline host; expected local://<directory>")
    path = host[len(LOCAL_SCHEME) :]
    if not path:
        raise ConfigError("local:// needs a directory, e.g. local:///tmp/visionops-runs")
    return path


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def pipeline_command(output: Path, params: dict[str, Any]) -> list[str]:
    """The ``visionops pipeline run --local`` command line for these run parameters."""
    argv = [*CLI, "pipeline", "run", "--local", "--output", str(output)]
    for name, value in sorted(params.items()):
        if value is None or value == "":
            continue
        if name in _OPTIONS:
            argv += [_OPTIONS[name], str(value)]
        else:
            argv += ["--param", f"{name}={_param_value(value)}"]
    return argv


def launch_local_run(
    runs_dir: str,
    *,
    pipeline_name: str,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None = None,
) -> str:
    """Start the training pipeline locally in ``runs_dir/<run_id>`` (detached) and return the run id.

    Returns at once; the run writes ``status.json`` when it ends (see :func:`read_status`).
    """
    from visionops.pipeline.training import PIPELINE_NAME

    if pipeline_name != PIPELINE_NAME:
        raise ConfigError(
            f"no pipeline named {pipeline_name!r} runs locally; the local runner knows {PIPELINE_NAME!r}"
        )
    if not isinstance(params, dict):
        raise ConfigError("run parameters must be a dict of pipeline parameter names to values")
    run_id = f"local-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    run_dir = Path(runs_dir).resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    argv = pipeline_command(run_dir / "output", params)
    request = {
        "run_id": run_id,
        "run_name": run_name or f"{pipeline_name}-run",
        "pipeline_name": pipeline_name,
        "experiment": experiment,
        "params": params,
        "command": argv,
        "created_at": time.time(),
    }
    (run_dir / REQUEST_FILE).write_text(json.dumps(request, indent=2, default=str))
    with (run_dir / LOG_FILE).open("ab") as log:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "visionops.pipeline.local_runs", "exec", str(run_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the process that started it, like a cluster run
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            raise LocalRunError(f"cannot start the local pipeline run in {run_dir}: {exc}") from exc
    request["pid"] = proc.pid
    (run_dir / REQUEST_FILE).write_text(json.dumps(request, indent=2, default=str))
    return run_id


def read_status(runs_dir: str | Path, run_id: str) -> dict[str, Any]:
    """``{"state": "running" | "succeeded" | "failed", ...}`` of a local run."""
    run_dir = Path(runs_dir) / run_id
    if not (run_dir / REQUEST_FILE).is_file():
        raise LocalRunError(f"no local run {run_id} under {runs_dir}")
    status_path = run_dir / STATUS_FILE
    if status_path.is_file():
        return json.loads(status_path.read_text())
    return {"state": "running", "run_id": run_id}


def wait_for_run(runs_dir: str | Path, run_id: str, *, timeout: float = 900.0, poll: float = 1.0) -> dict:
    """Block until the run finished (its status), or raise :class:`LocalRunError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(runs_dir, run_id)
        if status["state"] != "running":
            return status
        if time.monotonic() > deadline:
            raise LocalRunError(
                f"local run {run_id} still running after {timeout:.0f}s; see {Path(runs_dir) / run_id / LOG_FILE}"
            )
        time.sleep(poll)


def _exec(run_dir: Path) -> int:
    """Run the pipeline of ``run_dir/request.json`` and write ``status.json`` (the detached process)."""
    request = json.loads((run_dir / REQUEST_FILE).read_text())
    started = time.time()
    try:
        code = subprocess.call(request["command"], stdin=subprocess.DEVNULL)
    except OSError as exc:  # still write a status: whoever waits for the run must learn that it failed
        print(f"cannot run {request['command'][0]}: {exc}", flush=True)
        code = 127
    status = {
        "run_id": request["run_id"],
        "state": "succeeded" if code == 0 else "failed",
        "returncode": code,
        "started_at": started,
        "finished_at": time.time(),
        "output": str(run_dir / "output"),
        "log": str(run_dir / LOG_FILE),
    }
    tmp = run_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(run_dir / STATUS_FILE)
    return code


def main(argv: list[str]) -> int:
    """``exec RUN_DIR``: run one local run and write its status (the detached process)."""
    if len(argv) == 2 and argv[0] == "exec":
        return _exec(Path(argv[1]))
    print("usage: python -m visionops.pipeline.local_runs exec RUN_DIR")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
