"""Export a pre-labeled selection as review tasks.

* ``label-studio``: Label Studio's JSON import format: one task per image, ``data.image`` a URL Label Studio
  can show, ``data.request_id``/``sha256``/``reason`` kept for the way back, and ``predictions`` pre-filled
  with the model's choice (control ``label`` on ``image``, type ``choices``) and its confidence as ``score``,
  so reviewers only correct. Use :func:`labeling_config` for the matching labeling interface.
* ``csv``: ``request_id,image,sha256,predicted_label,confidence,label`` with ``label`` empty, for any other
  tool (or a spreadsheet): reviewers fill ``label``.

Image links: ``s3://`` images become presigned GET URLs (valid ``url_expiry``, 7 days at most with SigV4),
signed for ``presign_endpoint`` when reviewers reach the object store under another address than the
pipeline does (e.g. ``https://minio.example.com`` vs ``http://minio.kubeflow:9000``). Local images stay
paths, or become Label Studio local-files URLs (``/data/local-files/?d=...``) below ``local_files_root``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlparse

from visionops import storage
from visionops.errors import ConfigError, StorageError
from visionops.labeling.artifact import csv_bytes, load_selection
from visionops.reports import neutralise_frame

log = logging.getLogger(__name__)

FORMATS = ("label-studio", "csv")
FROM_NAME = "label"
TO_NAME = "image"
CSV_COLUMNS = ("request_id", "image", "sha256", "predicted_label", "confidence", "label")
MAX_PRESIGN_EXPIRY = timedelta(days=7)
DEFAULT_QUESTION = "Is this worker wearing safety glasses?"


def labeling_config(classes: list[str], *, question: str = DEFAULT_QUESTION) -> str:
    """The Label Studio labeling interface (XML) that matches the exported tasks: one single choice."""
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f"  <Header value={quoteattr(question)}/>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" showInline="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


class ImageLinker:
    """Turns image URIs into links reviewers can open (presigned for s3, paths or local-files URLs)."""

    def __init__(
        self,
        *,
        url_expiry: timedelta = MAX_PRESIGN_EXPIRY,
        presign_endpoint: str | None = None,
        local_files_root: str | None = None,
    ) -> None:
        if not timedelta(seconds=1) <= url_expiry <= MAX_PRESIGN_EXPIRY:
            raise ConfigError(f"URL expiry must be between 1 s and 7 days (SigV4 limit), got {url_expiry}")
        self.url_expiry = url_expiry
        self.presign_endpoint = presign_endpoint
        self.local_files_root = Path(local_files_root).resolve() if local_files_root else None
        self._client = None

    def _presigner(self):
        if self._client is None:
            settings = storage.S3Settings.from_env()
            if self.presign_endpoint:
                parsed = urlparse(self.presign_endpoint)
                if parsed.scheme not in ("http", "https") or not parsed.netloc:
                    raise ConfigError(
                        f"presign endpoint {self.presign_endpoint!r} is not an http(s) URL "
                        "(e.g. https://minio.example.com)"
                    )
                # Signing needs the region; without one minio would ask the (maybe unreachable) public endpoint.
                settings = replace(
                    settings,
                    endpoint_url=f"{parsed.scheme}://{parsed.netloc}",
                    region=settings.region or "us-east-1",
                )
            self._client = storage.S3Store(settings).client
        return self._client

    def __call__(self, uri: str) -> str:
        uri = str(uri)
        if storage.is_remote(uri):
            bucket, key = storage.split_s3(uri)
            try:
                return self._presigner().presigned_get_object(bucket, key, expires=self.url_expiry)
            except Exception as exc:
                raise StorageError(f"cannot presign a link for {uri}: {exc}") from exc
        if self.local_files_root is not None:
            path = Path(uri).resolve()
            try:
                rel = path.relative_to(self.local_files_root)
            except ValueError as exc:
                raise ConfigError(
                    f"image {uri} is not below --local-files-root {self.local_files_root} "
                    "(Label Studio's LOCAL_FILES_DOCUMENT_ROOT)"
                ) from exc
            return f"/data/local-files/?d={quote(rel.as_posix())}"
        return uri


def label_studio_tasks(selection, linker: ImageLinker) -> list[dict]:
    """Label Studio import tasks with the model's pre-label as a prediction."""
    tasks = []
    for row in selection.frame.to_dict("records"):
        tasks.append(
            {
                "data": {
                    "image": linker(row["image"]),
                    "request_id": row["request_id"],
                    "sha256": row["sha256"],
                    "reason": row.get("reason", ""),
                },
                "predictions": [
                    {
                        "model_version": row["prelabel_model"],
                        "score": float(row["confidence"]),
                        "result": [
                            {
                                "from_name": FROM_NAME,
                                "to_name": TO_NAME,
                                "type": "choices",
                                "value": {"choices": [row["predicted_label"]]},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks


def export(
    selection_uri: str,
    output: str,
    *,
    format: str = "label-studio",
    url_expiry: timedelta = MAX_PRESIGN_EXPIRY,
    presign_endpoint: str | None = None,
    local_files_root: str | None = None,
) -> str:
    """Write the review tasks of a pre-labeled selection to ``output`` (a file URI); returns it."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    selection = load_selection(selection_uri)
    selection.require_prelabels()
    linker = ImageLinker(
        url_expiry=url_expiry, presign_endpoint=presign_endpoint, local_files_root=local_files_root
    )
    if format == "label-studio":
        data = json.dumps(label_studio_tasks(selection, linker), indent=1).encode("utf-8")
    else:
        frame = selection.frame.copy()
        frame["image"] = [linker(u) for u in frame["image"]]
        frame["label"] = ""
        data = csv_bytes(neutralise_frame(frame[list(CSV_COLUMNS)]))  # opened in spreadsheets: no formulas
    storage.write_bytes(str(output), data)
    log.info("export: %d %s tasks -> %s", len(selection.frame), format, output)
    return str(output)
