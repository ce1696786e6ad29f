"""The one container image every pipeline step runs.

The tag is the package version (``visionops.DEFAULT_IMAGE``); set ``VISIONOPS_IMAGE`` before compiling (or pass
``visionops pipeline compile --image``) to point the steps at your own registry. Reading an optional variable is
the only thing this module does on import.
"""

from __future__ import annotations

import os

from visionops import DEFAULT_IMAGE

#: The image baked into every component at import time of ``visionops.pipeline.components``.
IMAGE: str = os.environ.get("VISIONOPS_IMAGE") or DEFAULT_IMAGE

__all__ = ["DEFAULT_IMAGE", "IMAGE"]
