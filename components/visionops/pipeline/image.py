"""The one container image every pipeline step runs.

The tag is the package version (``visionops.DEFAULT_IMAGE``); set ``VISIONOPS_IMAGE`` before compiling (or pass
``visionops pipeline compile --image``) to point the steps at your own registry. Reading an optional variable is
the only thing this module does on import.
"""

from __future__ import annotations

from visionops import DEFAULT_IMAGE
from visionops.settings import ProcessSettings

#: The image baked into every component at import time of ``visionops.pipeline.components`` (only the image
#: variable is read: a bad log level must not break compiling).
IMAGE: str = ProcessSettings.env_values().get("image") or DEFAULT_IMAGE

__all__ = ["DEFAULT_IMAGE", "IMAGE"]
