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


class RequestError(VisionOpsError):
    """A client's request is refused. ``http_status`` is the 4xx status a service answers with, chosen by
    the error's type (never by its message)."""

    http_status = 400


class LengthRequired(RequestError):
    """A body sent without a Content-Length where the service needs one before reading it."""

    http_status = 411


class MalformedRequest(RequestError):
    """A well-formed HTTP request whose JSON body does not have the documented shape."""

    http_status = 422


class RequestTimeout(RequestError):
    """A request body that did not arrive within the service's socket timeout (shorter than its Content-Length)."""

    http_status = 408


class PayloadTooLarge(RequestError):
    """A request or one of its parts is over a size limit (bytes, images per request, pixels)."""

    http_status = 413


class UnsupportedMediaType(RequestError):
    """A request or one of its parts is not of a content type or format we accept."""

    http_status = 415


class ImageError(RequestError):
    """An image could not be decoded or breaks a limit (bytes, pixels, format).

    The base class means "unprocessable" (corrupt, truncated, absurd dimensions: HTTP 422); the subclasses
    below say more.
    """

    http_status = 422


class EmptyImage(ImageError):
    """The image has no bytes at all."""

    http_status = 400


class ImageTooLarge(ImageError, PayloadTooLarge):
    """The image has too many bytes or pixels."""

    http_status = 413


class UnsupportedImage(ImageError, UnsupportedMediaType):
    """The bytes are no image, or one in a format we do not decode."""

    http_status = 415


class GateError(VisionOpsError):
    """Evaluation or promotion could not be decided (e.g. golden set versions differ)."""


class StorageUnreachable(StorageError):
    """The storage endpoint did not answer within its deadline (down, stalled, unreachable): retrying the
    next object would only wait again, so whole jobs (an ingest) stop at the first one."""
