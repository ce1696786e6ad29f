"""Constants that are product policy, defined once: the flagship task's positive class, the precision the
gate must prove, and the Kubernetes Secret that holds the object-storage credentials.

Every default elsewhere refers to these names; change a policy here, not at its call sites.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The class whose precision is the safety constraint ("the model says glasses, none are worn" can cost a
#: worker's health).
POSITIVE_CLASS = "glasses"
NEGATIVE_CLASS = "no_glasses"

#: Of the images called POSITIVE_CLASS at most 5% may be without glasses: precision >= 0.95, proven on the
#: lower bound of an interval at this confidence.
TARGET_PRECISION = 0.95
CONFIDENCE = 0.95

#: The Kubernetes Secret with the object-storage credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
S3_SECRET_NAME = "visionops-s3"


def default_positive_class(classes: Sequence[str]) -> str:
    """The positive class for a task that names none: POSITIVE_CLASS when present, else the last class."""
    if POSITIVE_CLASS in classes or not classes:
        return POSITIVE_CLASS
    return classes[-1]
