"""Storage by URI: ``s3://bucket/prefix`` (MinIO or any S3-compatible store, via the ``minio`` client) and
local paths, behind one small interface.

Configuration comes from the environment (in a cluster: a Kubernetes Secret mapped to env vars):

==========================  =====================================================================
``S3_ENDPOINT_URL``         e.g. ``http://minio.kubeflow:9000`` (``AWS_ENDPOINT_URL_S3`` and
                            ``AWS_ENDPOINT_URL`` are read too). The scheme decides TLS. Default:
                            ``https://s3.amazonaws.com``.
``AWS_ACCESS_KEY_ID``       access key
``AWS_SECRET_ACCESS_KEY``   secret key
``AWS_SESSION_TOKEN``       optional session token
``AWS_REGION``              optional region (``AWS_DEFAULT_REGION`` is read too)
``S3_VERIFY_TLS``           ``false`` to skip certificate checks (self-signed MinIO); default true
``AWS_CA_BUNDLE``           optional CA bundle file for TLS
``S3_TIMEOUT_S``            connect and read timeout of one request in seconds (default 30)
``S3_DEADLINE_S``           the most one operation may take, retries included (default 120): a stalled
                            endpoint fails within it (:class:`~visionops.errors.StorageUnreachable`)
==========================  =====================================================================

A multi-file artifact (a dataset, a model bundle) is only visible when complete: :func:`publish_dir` removes
an existing marker file (``dataset.json``, ``bundle.json``) first and writes the new one last, and readers
check for the marker first (and then verify the content against the version it names).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar
from urllib.parse import urlparse

from visionops.errors import StorageError, StorageUnreachable
from visionops.settings import Settings, setting

T = TypeVar("T")

_TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}
_RETRIES = 4


def is_remote(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return str(uri).startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    uri = str(uri)
    if is_remote(uri):
        out = uri.rstrip("/")
        for part in parts:
            out = f"{out}/{str(part).strip('/')}"
        return out
    return str(Path(uri, *parts))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3 URI: {uri!r} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def _with_scheme(url: str) -> str:
    """``minio:9000`` -> ``https://minio:9000`` (a bare host means TLS, as before)."""
    return url if "://" in url else f"https://{url}"


def _is_http_url(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


@dataclass(frozen=True)
class S3Settings(Settings):
    """Where the object store is and how to log in; read from the environment by :meth:`from_env`
    (one settings dataclass, :mod:`visionops.settings`; in a cluster the variables come from a Secret)."""

    kind: ClassVar[str] = "object storage settings"

    endpoint_url: str = setting(
        "https://s3.amazonaws.com",
        "S3 endpoint; the scheme decides TLS.",
        env="S3_ENDPOINT_URL",
        aliases=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        parse=_with_scheme,
        check=_is_http_url,
        must="is not an http(s) URL (e.g. http://minio:9000)",
    )
    access_key: str | None = setting(None, "Access key.", env="AWS_ACCESS_KEY_ID")
    secret_key: str | None = setting(None, "Secret key.", env="AWS_SECRET_ACCESS_KEY", secret=True)
    session_token: str | None = setting(None, "Session token.", env="AWS_SESSION_TOKEN", secret=True)
    region: str | None = setting(None, "Region.", env="AWS_REGION", aliases=("AWS_DEFAULT_REGION",))
    verify_tls: bool = setting(
        True, "Check TLS certificates (false: self-signed MinIO).", env="S3_VERIFY_TLS"
    )
    ca_bundle: str | None = setting(None, "CA bundle file for TLS.", env="AWS_CA_BUNDLE")
    timeout_s: float = setting(
        30.0,
        "Connect and read timeout of one S3 request, seconds.",
        env="S3_TIMEOUT_S",
        check=lambda v: v > 0,
        must="must be > 0",
    )
    deadline_s: float = setting(
        120.0,
        "The most one S3 operation may take, retries included, seconds.",
        env="S3_DEADLINE_S",
        check=lambda v: v > 0,
        must="must be > 0",
    )

    @property
    def endpoint(self) -> str:
        """``host:port`` (what the minio client takes)."""
        return urlparse(self.endpoint_url).netloc

    @property
    def secure(self) -> bool:
        return urlparse(self.endpoint_url).scheme == "https"

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


def _minio_client(settings: S3Settings):
    """A ``minio.Minio`` client with bounded timeouts; retries are ours (with backoff), not urllib3's."""
    import certifi
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s),
        maxsize=16,
        retries=urllib3.Retry(total=0, connect=0, read=0, redirect=2),
        cert_reqs="CERT_REQUIRED" if settings.verify_tls else "CERT_NONE",
        ca_certs=settings.ca_bundle or certifi.where(),
    )
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        session_token=settings.session_token,
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )


class S3Store:
    """Object storage through the ``minio`` client. Keys are relative to nothing: pass full ``s3://`` URIs."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.settings = settings or S3Settings.from_env()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = _minio_client(self.settings)
        return self._client

    # -- error handling -------------------------------------------------------------------------------------
    def _call(self, what: str, uri: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient failures; map failures to a StorageError that says what to do.

        Retries stop at the operation's deadline (``S3_DEADLINE_S``): a stalled endpoint costs at most the
        deadline plus one request timeout, then :class:`StorageUnreachable`.
        """
        import urllib3.exceptions
        from minio.error import S3Error

        delay, started = 0.2, time.monotonic()
        for attempt in range(_RETRIES + 1):
            retry = attempt < _RETRIES and time.monotonic() - started + delay < self.settings.deadline_s
            try:
                return fn()
            except S3Error as exc:
                if exc.code in _TRANSIENT_S3_CODES and retry:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise StorageError(self._explain(what, uri, exc.code, exc.message)) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if retry and time.monotonic() - started + delay < self.settings.deadline_s:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise StorageUnreachable(
                    f"cannot {what} {uri}: the S3 endpoint {self.settings.url} is unreachable or stalled "
                    f"({exc.__class__.__name__}) after {time.monotonic() - started:.1f}s and {attempt + 1} "
                    f"attempt(s). Check S3_ENDPOINT_URL and that the server is up (deadline S3_DEADLINE_S="
                    f"{self.settings.deadline_s:g}s, timeout S3_TIMEOUT_S={self.settings.timeout_s:g}s)."
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _explain(self, what: str, uri: str, code: str, message: str) -> str:
        bucket = split_s3(uri)[0]
        if code == "NoSuchBucket":
            return f"cannot {what} {uri}: bucket {bucket!r} does not exist at {self.settings.url}"
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken"):
            return (
                f"cannot {what} {uri}: the S3 server at {self.settings.url} rejected the credentials ({code}). "
                "Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (in a cluster: the object-storage Secret)."
            )
        if code in ("NoSuchKey", "NoSuchObject"):
            return f"cannot {what} {uri}: no such object"
        return f"cannot {what} {uri}: {code}: {message}"

    # -- the interface --------------------------------------------------------------------------------------
    def list(self, uri: str) -> Iterator[str]:
        """All object URIs under ``uri`` (recursive, paginated by the server; streamed)."""
        bucket, prefix = split_s3(uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        # The first page is fetched inside _call so that a missing bucket or bad credentials raise clearly.
        objects = self._call(
            "list", uri, lambda: iter(self.client.list_objects(bucket, prefix, recursive=True))
        )
        first = self._call("list", uri, lambda: next(objects, None))
        if first is None:
            return
        yield f"s3://{bucket}/{first.object_name}"
        for obj in objects:
            yield f"s3://{bucket}/{obj.object_name}"

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)

        def get() -> bytes:
            response = self.client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("read", uri, get)

    def read_limited(self, uri: str, max_bytes: int) -> bytes:
        """The object's bytes, refused from its size (a HEAD) before reading when over ``max_bytes``."""
        bucket, key = split_s3(uri)
        size = self._call("check", uri, lambda: self.client.stat_object(bucket, key)).size
        _check_size(uri, size, max_bytes)

        def get() -> bytes:
            response = self.client.get_object(bucket, key)
            try:
                return response.read(max_bytes + 1)
            finally:
                response.close()
                response.release_conn()

        data = self._call("read", uri, get)
        _check_size(uri, len(data), max_bytes)  # the object changed between the HEAD and the GET
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        self._call("write", uri, lambda: self.client.put_object(bucket, key, io.BytesIO(data), len(data)))

    def download_file(self, uri: str, path: Path) -> None:
        bucket, key = split_s3(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call("download", uri, lambda: self.client.fget_object(bucket, key, str(path)))

    def upload_file(self, path: Path, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._call("upload", uri, lambda: self.client.fput_object(bucket, key, str(path)))

    def exists(self, uri: str) -> bool:
        from minio.error import S3Error

        bucket, key = split_s3(uri)
        try:
            self._call("check", uri, lambda: self.client.stat_object(bucket, key))
            return True
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._call("delete", uri, lambda: self.client.remove_object(bucket, key))

    def delete_many(self, uris: list[str]) -> None:
        """Delete objects in multi-object requests (1,000 keys each): a clean-up costs a few requests."""
        from minio.deleteobjects import DeleteObject

        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            bucket, key = split_s3(uri)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                batch = [DeleteObject(k) for k in keys[start : start + 1000]]
                where = f"s3://{bucket}/{keys[start]}"
                errors = self._call(
                    "delete", where, lambda k=bucket, b=batch: list(self.client.remove_objects(k, b))
                )
                if errors:
                    raise StorageError(f"cannot delete {len(errors)} object(s) in {bucket}: {errors[0]}")


class LocalStore:
    """Local files with the same interface; writes are atomic (temp file + rename)."""

    def list(self, uri: str) -> Iterator[str]:
        root = Path(uri)
        if not root.exists():
            raise StorageError(f"cannot list {uri}: no such directory")
        if root.is_file():
            yield str(root)
            return
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield str(path)

    def read_bytes(self, uri: str) -> bytes:
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"cannot read {uri}: no such file") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc.strerror}") from exc

    def read_limited(self, uri: str, max_bytes: int) -> bytes:
        """The file's bytes, refused before reading when it is not a regular file or is over ``max_bytes``
        (``/dev/zero``, a FIFO, a 1 GB sparse file: a clear error, never a MemoryError)."""
        try:
            info = os.stat(uri)
            if not stat.S_ISREG(info.st_mode):
                raise StorageError(f"cannot read {uri}: not a regular file (a device, FIFO or directory)")
            _check_size(uri, info.st_size, max_bytes)
            with open(uri, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError as exc:
            raise StorageError(f"cannot read {uri}: no such file") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc.strerror}") from exc
        _check_size(uri, len(data), max_bytes)  # the file grew between the stat and the read
        return data

    def delete_many(self, uris: list[str]) -> None:
        for uri in uris:
            self.delete(uri)

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = Path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc.strerror}") from exc

    def download_file(self, uri: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(uri, path)
        except FileNotFoundError as exc:
            raise StorageError(f"cannot read {uri}: no such file") from exc

    def upload_file(self, path: Path, uri: str) -> None:
        self.write_bytes(uri, Path(path).read_bytes())

    def exists(self, uri: str) -> bool:
        return Path(uri).exists()

    def delete(self, uri: str) -> None:
        Path(uri).unlink(missing_ok=True)


_S3_STORES: dict[S3Settings, S3Store] = {}


def store_for(uri: str) -> S3Store | LocalStore:
    """The store that serves ``uri`` (one S3 client per settings, created on first use)."""
    if is_remote(uri):
        settings = S3Settings.from_env()
        if settings not in _S3_STORES:
            _S3_STORES[settings] = S3Store(settings)
        return _S3_STORES[settings]
    return LocalStore()


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise StorageError(f"cannot read {uri}: too large: {size} bytes > limit {max_bytes}")


# -- module-level helpers: what the rest of the library calls ------------------------------------------------
def read_bytes(uri: str) -> bytes:
    return store_for(uri).read_bytes(str(uri))


def read_limited(uri: str, max_bytes: int) -> bytes:
    """The bytes at ``uri``, refused from its size (stat / HEAD) and type before reading when over
    ``max_bytes`` or not a regular file; never reads more than ``max_bytes + 1``."""
    return store_for(uri).read_limited(str(uri), int(max_bytes))


def delete_many(uris: list[str]) -> None:
    """Delete every URI (in multi-object requests on S3)."""
    uris = [str(u) for u in uris]
    if uris:
        store_for(uris[0]).delete_many(uris)


def write_bytes(uri: str, data: bytes) -> None:
    store_for(uri).write_bytes(str(uri), data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    return store_for(uri).exists(str(uri))


def list_uris(uri: str) -> Iterator[str]:
    """Every file/object under ``uri``, recursively (streamed)."""
    return store_for(uri).list(str(uri))


def relative(uri: str, root: str) -> str:
    """The part of ``uri`` below ``root`` (``/``-separated)."""
    uri, root = str(uri), str(root).rstrip("/")
    if is_remote(uri):
        return uri[len(root) :].lstrip("/")
    return Path(uri).relative_to(root).as_posix()


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy everything under ``uri`` into ``local_dir`` (keeping the relative layout)."""
    local_dir = Path(local_dir)
    store = store_for(uri)
    for item in store.list(str(uri)):
        store.download_file(item, local_dir / relative(item, uri))
    return local_dir


def publish_dir(local_dir: str | Path, uri: str, marker: str) -> str:
    """Publish a finished local directory at ``uri`` so that readers never see half of it.

    Local targets are renamed into place. S3 targets cannot be swapped atomically, so an existing ``marker``
    is deleted first, every file is uploaded, and the new ``marker`` goes last: an overwrite interrupted
    anywhere leaves no marker (readers refuse it, :func:`require_marker`), never the old marker beside new
    content. A first publish that fails removes what it uploaded (no orphans).
    """
    local_dir = Path(local_dir)
    if not (local_dir / marker).is_file():
        raise StorageError(f"cannot publish {local_dir}: its marker file {marker!r} is missing")
    if is_remote(uri):
        return _publish_s3(local_dir, uri, marker)
    target = Path(uri)
    if target.resolve() == local_dir.resolve():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    shutil.copytree(local_dir, staging)
    staging.chmod(0o755)  # the source is often a private temporary directory (0700)
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    return str(target)


def _publish_s3(local_dir: Path, uri: str, marker: str) -> str:
    """The S3 half of :func:`publish_dir`: marker removed first, files, marker last; clean-up on failure."""
    store = store_for(uri)
    overwrite = store.exists(join(uri, marker))
    if overwrite:
        store.delete(join(uri, marker))
    written: list[str] = []
    try:
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            if rel != marker:
                store.upload_file(path, join(uri, rel))
                written.append(join(uri, rel))
        store.upload_file(local_dir / marker, join(uri, marker))
    except StorageError as exc:
        if not overwrite:
            with contextlib.suppress(StorageError):
                store.delete_many(written)
        raise StorageError(
            f"publishing {uri} failed, so it has no {marker} and reads as incomplete"
            f"{'' if overwrite else ' (the files uploaded so far were removed)'}: {exc}"
        ) from exc
    return uri


def require_marker(uri: str, marker: str, what: str) -> str:
    """Raise a clear error unless the artifact at ``uri`` is complete (its marker exists)."""
    path = join(uri, marker)
    if not exists(path):
        raise StorageError(
            f"{what} at {uri} is missing or incomplete: {marker} not found "
            "(it is written last, so a half-written artifact never looks complete)"
        )
    return path


@contextlib.contextmanager
def local_dir_for(uri: str, marker: str | None = None, what: str = "artifact") -> Iterator[Path]:
    """A local directory holding the artifact at ``uri``: the directory itself, or a temporary download."""
    if marker:
        require_marker(uri, marker, what)
    if not is_remote(uri):
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="visionops-") as tmp:
        yield download_dir(uri, tmp)
