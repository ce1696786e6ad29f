"""One base exception; every error a user can hit says what was wrong and what to do about it."""


class VisionOpsError(Exception):
    """Base class: the CLI prints its message (no traceback) and exits with status 2."""


class ConfigError(VisionOpsError):
    """A setting or argument has a bad value."""


class StorageError(VisionOpsError):
    """Object storage or a local path could not be read or written."""


class DataError(VisionOpsError):
    """Input data is unusable (bad manifest, no images, leakage, conflicting labels...)."""


class ValidationFailed(DataError):
    """A dataset failed one of the hard validation checks."""


class BundleError(VisionOpsError):
    """A model bundle is missing, incomplete or inconsistent."""


class ImageError(VisionOpsError):
    """An image could not be decoded or breaks a limit (bytes, pixels, format)."""


class GateError(VisionOpsError):
    """Evaluation or promotion could not be decided (e.g. golden set versions differ)."""


class StorageUnreachable(StorageError):
    """The storage endpoint did not answer within its deadline (down, stalled, unreachable): retrying the
    next object would only wait again, so whole jobs (an ingest) stop at the first one."""
