"""VisionOps: image classification from object storage to a gated, served and drift-monitored model.

All logic lives in this package; the KFP components, the BentoML service, the drift sidecar and the CLI are
thin adapters over it. Importing it does no work: no clients, no env vars, no model loading.
"""

__version__ = "0.1.0"

#: The one container image every role runs (pipeline steps, serving, sidecar). The tag is the package
#: version; override with VISIONOPS_IMAGE at compile time (see visionops.pipeline.image).
IMAGE_REPOSITORY = "ghcr.io/visionops/visionops"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
