"""``python -m visionops.serving.launch serve ...``: ``bentoml serve`` with a metrics directory of its own.

BentoML keeps its Prometheus multiprocess files in ``$BENTOML_HOME/prometheus_multiproc_dir`` and empties that
directory when a server starts, so two servers on one host share counters (the first reports the second's) and
the second wipes the first's. ``visionops serve`` runs this launcher instead of ``bentoml serve``: it points
BentoML at a fresh directory for this instance (``VISIONOPS_METRICS_DIR`` when set, else a new temporary one,
removed on exit) and then runs BentoML's own command line.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile


def metrics_dir() -> str:
    """This instance's Prometheus multiprocess directory: the configured one (emptied) or a new one."""
    from visionops.serving.settings import ServingSettings

    configured = ServingSettings.from_env().metrics_dir
    if not configured:
        path = tempfile.mkdtemp(prefix="visionops-metrics-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        return path
    shutil.rmtree(configured, ignore_errors=True)  # files of an earlier run would count twice
    os.makedirs(configured)
    return configured


def main(argv: list[str] | None = None) -> None:
    """Run ``bentoml`` with ``argv`` after giving this instance its own metrics directory."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    BentoMLContainer.prometheus_multiproc_dir.set(metrics_dir())
    from bentoml_cli.cli import cli

    cli(args=sys.argv[1:] if argv is None else argv, prog_name="bentoml")


if __name__ == "__main__":
    main()
