"""Compile the VisionOps training pipeline to KFP IR YAML (the file you upload in the Kubeflow UI).

    python pipelines/training_pipeline.py                      # -> pipelines/training_pipeline.yaml
    python pipelines/training_pipeline.py --output my.yaml --image registry.example.com/visionops:0.1.0

The pipeline itself lives in the library (``visionops.pipeline.training``); this script only compiles it.
From Python you can also use it directly::

    import kfp
    from visionops.pipeline.training import training_pipeline

    kfp.Client(host="http://localhost:8080").create_run_from_pipeline_func(
        training_pipeline, arguments={"data_uri": "s3://datasets/glasses/raw"}, experiment_name="visionops"
    )
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visionops.pipeline.compile import compile_pipeline
from visionops.pipeline.training import ClusterSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", default=str(Path(__file__).with_suffix(".yaml")), help="IR YAML to write."
    )
    parser.add_argument(
        "--image", default="", help="Image of every step (default: the package version's image)."
    )
    parser.add_argument("--secret", default="visionops-s3", help="Kubernetes Secret with the S3 credentials.")
    args = parser.parse_args()
    path = compile_pipeline(args.output, settings=ClusterSettings(image=args.image, s3_secret=args.secret))
    print(f"compiled pipeline: {path}")


if __name__ == "__main__":
    main()
