"""``python -m visionops`` = the ``visionops`` command."""

from visionops.cli import run

run()
