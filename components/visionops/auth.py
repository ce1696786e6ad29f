"""Authentication of the control endpoints, in one place for serving, the drift sidecar and the router.

Two secrets guard two kinds of control:

- **Bearer tokens** (``Authorization: Bearer <token>``): the *alert* token lets Alertmanager's webhook start a
  retraining run (the sidecar's ``/alerts``); the *reviewer* token lets a human-review tool post ground truth
  (``/feedback`` of serving, the sidecar and the router); the *ingest* token lets serving post its feature rows
  to the sidecar's ``/ingest`` (rows posted by anyone else could fake or hide drift). Tokens are compared in
  constant time.
- **Signed request ids**: serving signs every request id it issues with HMAC-SHA256 under the *feedback key*;
  the id carries its signature (``<id>.<signature>``). ``/feedback`` accepts only ids whose signature verifies,
  so nobody can label a request serving never answered.

Each secret comes from a Secret mounted as a file (``VISIONOPS_*_FILE``, preferred: it never shows in the
process environment) or from a variable. When a secret is not configured the endpoint it guards refuses every
request, unless ``VISIONOPS_INSECURE_CONTROL=true`` opts in for a local run (then that check is skipped, and
only that one: a configured secret is always enforced).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import ClassVar

from visionops.errors import ConfigError, VisionOpsError
from visionops.settings import Settings, setting

#: Signature length in characters: 16 bytes of HMAC-SHA256 (128 bits), base64url without padding.
SIGNATURE_CHARS = 22
#: Longest request id accepted anywhere (a signed id: up to 128 + 1 + 22 characters, plus ``-<index>``).
MAX_REQUEST_ID_CHARS = 200
#: The longest secret file read (a token or key is a few dozen bytes; a huge file is a mistake).
_MAX_SECRET_BYTES = 4096
_MIN_SECRET_CHARS = 16
_DOMAIN = b"visionops-request-id\x00"


class AuthError(VisionOpsError):
    """A control request refused: no or a wrong credential (401), or a check that cannot pass (403)."""

    def __init__(self, message: str, status: int = HTTPStatus.UNAUTHORIZED) -> None:
        super().__init__(message)
        self.http_status = int(status)


@dataclass(frozen=True)
class AuthSettings(Settings):
    """The control secrets of every role (env only: secrets are never CLI options, which ``ps`` shows)."""

    kind: ClassVar[str] = "auth settings"

    alert_token: str = setting(
        "", "Bearer token Alertmanager sends to /alerts.", env="VISIONOPS_ALERT_TOKEN", cli=False, secret=True
    )
    alert_token_file: str = setting(
        "", "File holding the alert token (a mounted Secret).", env="VISIONOPS_ALERT_TOKEN_FILE", cli=False
    )
    reviewer_token: str = setting(
        "",
        "Bearer token of the reviewer role (/feedback).",
        env="VISIONOPS_REVIEWER_TOKEN",
        cli=False,
        secret=True,
    )
    reviewer_token_file: str = setting(
        "", "File holding the reviewer token.", env="VISIONOPS_REVIEWER_TOKEN_FILE", cli=False
    )
    ingest_token: str = setting(
        "",
        "Bearer token serving sends to the sidecar's /ingest.",
        env="VISIONOPS_INGEST_TOKEN",
        cli=False,
        secret=True,
    )
    ingest_token_file: str = setting(
        "", "File holding the ingest token.", env="VISIONOPS_INGEST_TOKEN_FILE", cli=False
    )
    feedback_key: str = setting(
        "",
        "HMAC key that signs the request ids serving issues.",
        env="VISIONOPS_FEEDBACK_KEY",
        cli=False,
        secret=True,
    )
    feedback_key_file: str = setting(
        "", "File holding the feedback key.", env="VISIONOPS_FEEDBACK_KEY_FILE", cli=False
    )
    insecure_control: bool = setting(
        False,
        "Local runs only: skip the checks whose secret is not configured.",
        env="VISIONOPS_INSECURE_CONTROL",
        cli=False,
    )

    def resolved(self, name: str) -> str:
        """The secret ``name`` (alert_token, reviewer_token, ingest_token, feedback_key): its file wins over its
        variable."""
        path = getattr(self, f"{name}_file")
        if path:
            return read_secret_file(path, what=name)
        value = getattr(self, name).strip()
        if value and len(value) < _MIN_SECRET_CHARS:
            raise ConfigError(f"{name} is {len(value)} characters; use at least {_MIN_SECRET_CHARS}")
        return value


def read_secret_file(path: str, *, what: str) -> str:
    """A secret from a mounted file (surrounding whitespace removed); a clear error when it is unusable."""
    file = Path(path)
    try:
        if not file.is_file():
            raise ConfigError(f"the {what} file {path} does not exist or is not a regular file")
        if file.stat().st_size > _MAX_SECRET_BYTES:
            raise ConfigError(
                f"the {what} file {path} is over {_MAX_SECRET_BYTES} bytes; is it the right file?"
            )
        value = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc}") from exc
    if len(value) < _MIN_SECRET_CHARS:
        raise ConfigError(
            f"the {what} in {path} is {len(value)} characters; use at least {_MIN_SECRET_CHARS}"
        )
    return value


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or another scheme)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def tokens_equal(given: str, expected: str) -> bool:
    """Constant-time comparison (the time taken does not tell how many leading characters match)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class RequestIdSigner:
    """Signs request ids serving issues and verifies the ids ``/feedback`` receives."""

    def __init__(self, key: str) -> None:
        if len(key) < _MIN_SECRET_CHARS:
            raise ConfigError(f"the feedback key must have at least {_MIN_SECRET_CHARS} characters")
        self._key = key.encode("utf-8")

    def _signature(self, base: str) -> str:
        digest = hmac.new(self._key, _DOMAIN + base.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode("ascii").rstrip("=")

    def sign(self, base: str) -> str:
        """``<base>.<signature>``: the id a client gets back and later names in feedback."""
        return f"{base}.{self._signature(base)}"

    def verify(self, request_id: str) -> bool:
        """True when ``request_id`` is an id this key signed."""
        if not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS:
            return False
        base, dot, signature = request_id.rpartition(".")
        if not dot or not base or len(signature) != SIGNATURE_CHARS:
            return False
        return tokens_equal(signature, self._signature(base))


class ControlAuth:
    """The checks a role applies to its control endpoints (built once from :class:`AuthSettings`)."""

    def __init__(self, settings: AuthSettings | None = None) -> None:
        settings = settings if settings is not None else AuthSettings.from_env()
        self.insecure = settings.insecure_control
        self.tokens = {
            "alert": settings.resolved("alert_token"),
            "reviewer": settings.resolved("reviewer_token"),
            "ingest": settings.resolved("ingest_token"),
        }
        key = settings.resolved("feedback_key")
        self.signer = RequestIdSigner(key) if key else None

    def configured(self, role: str) -> bool:
        return bool(self.tokens[role])

    def require(self, role: str, authorization: str | None) -> None:
        """Refuse (:class:`AuthError`) unless ``authorization`` carries the ``role``'s bearer token."""
        expected = self.tokens[role]
        if not expected:
            if self.insecure:
                return
            variable = f"VISIONOPS_{role.upper()}_TOKEN_FILE"
            raise AuthError(
                f"{role} endpoints are disabled: no {role} token is configured (set {variable}, or "
                "VISIONOPS_INSECURE_CONTROL=true for a local run)",
                HTTPStatus.FORBIDDEN,
            )
        given = bearer_of(authorization)
        if given is None:
            raise AuthError(f"this endpoint needs the {role} token: send 'Authorization: Bearer <token>'")
        if not tokens_equal(given, expected):
            raise AuthError(f"the bearer token is not the {role} token")

    def issue(self, base: str) -> str:
        """The request id handed to a client: signed when a feedback key is configured."""
        return self.signer.sign(base) if self.signer is not None else base

    def check_request_id(self, request_id: object) -> str:
        """``request_id`` when serving issued it (its signature verifies), else :class:`AuthError` (403)."""
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
            raise AuthError(
                f"request_id must be a string of 1..{MAX_REQUEST_ID_CHARS} characters",
                HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        if self.signer is None:
            if self.insecure:
                return request_id
            raise AuthError(
                "feedback is disabled: no feedback key is configured to verify request ids (set "
                "VISIONOPS_FEEDBACK_KEY_FILE, or VISIONOPS_INSECURE_CONTROL=true for a local run)",
                HTTPStatus.FORBIDDEN,
            )
        if not self.signer.verify(request_id):
            raise AuthError(
                f"request_id {request_id[:80]!r} was not issued by this service (its signature does not verify)",
                HTTPStatus.FORBIDDEN,
            )
        return request_id

    def auth_header(self, role: str) -> dict[str, str]:
        """The header this process sends when it forwards a ``role`` request (serving -> sidecar)."""
        token = self.tokens[role]
        return {"Authorization": f"Bearer {token}"} if token else {}
