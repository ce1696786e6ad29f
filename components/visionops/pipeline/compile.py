"""Compile the training pipeline to the IR YAML a user uploads in the Kubeflow UI (or submits with kfp.Client).

The output is deterministic (same code + settings -> the same bytes), so ``tests/golden/training_pipeline.yaml``
can be compared in tests and regenerated with ``make golden``.
"""

from __future__ import annotations

from pathlib import Path

from visionops.errors import ConfigError
from visionops.pipeline.training import ClusterSettings, build_training_pipeline


def compile_pipeline(output: str | Path, *, settings: ClusterSettings | None = None) -> Path:
    """Write the training pipeline's IR YAML to ``output`` (a ``.yaml``/``.yml`` file) and return its path."""
    from kfp import compiler

    output = Path(output)
    if output.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"pipeline output {output} must end in .yaml or .yml (KFP IR YAML)")
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_training_pipeline(settings)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(output))
    return output
