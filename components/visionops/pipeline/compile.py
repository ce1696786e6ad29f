"""Compile a pipeline to the IR YAML a user uploads in the Kubeflow UI (or submits with kfp.Client).

The output is deterministic (same code + settings -> the same bytes), so ``tests/golden/training_pipeline.yaml``
can be compared in tests and regenerated with ``make golden``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from visionops.errors import ConfigError
from visionops.pipeline.cluster import ClusterSettings

#: pipeline name -> "module:builder"; every builder takes the same ClusterSettings
BUILDERS = {
    "training": "visionops.pipeline.training:build_training_pipeline",
    "experiment-analysis": "visionops.pipeline.experiment_components:build_experiment_analysis_pipeline",
    "weekly-review": "visionops.pipeline.label_components:build_weekly_review_pipeline",
}


def build_pipeline(name: str, settings: ClusterSettings | None = None):
    """The pipeline called ``name`` (a key of :data:`BUILDERS`) built for ``settings``."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown pipeline {name!r}; valid: {', '.join(BUILDERS)}")
    module, builder = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), builder)(settings)


def compile_pipeline(
    output: str | Path, *, settings: ClusterSettings | None = None, pipeline: str = "training"
) -> Path:
    """Write the IR YAML of ``pipeline`` (default: training) to ``output`` (``.yaml``/``.yml``); returns it."""
    from kfp import compiler

    output = Path(output)
    if output.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"pipeline output {output} must end in .yaml or .yml (KFP IR YAML)")
    pipeline = build_pipeline(pipeline, settings)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(output))
    return output
