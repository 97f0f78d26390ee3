"""Import a Roboflow project's images, with their annotations, into a project's storage (S3, local).

An import is a session like any other, of kind "import", the Roboflow workspace and project in its
params; its Roboflow project is the source (projects/sources/roboflow.py). Its scan step lists the
image ids through the search API, a page at a time, as one FileUpload row per id (relative_path and
remote_id: the id; remote_key: `images/<split>/<name>`).
The row is the checkpoint: a resumed import fetches only what is missing, and failed ids are
retried like failed uploads. The upload tasks move import rows with `Fetcher` (the import
kind's transfer, kinds.py): the image's details through the SDK, its annotation written as JSON at
`annotations/<split>/<stem>.json`, then the original streamed from its URL into the destination
(Destination.upload_stream), never held whole in memory or on disk.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
from typing import Any

import requests
import urllib3
from django.utils import timezone

from projects.destinations import ConfigError, Destination
from projects.destinations.base import normalize_key
from projects.errors import SourceError
from projects.models import Project
from projects.roboflow_sdk import scrub
from projects.sources.roboflow import DEFAULT_API_KEY_ENV, PAGE_SIZE, RoboflowSource
from sessions_app import files, planning
from sessions_app.files import Outcome
from sessions_app.models import FileStatus, FileUpload, SyncSession
from sessions_app.planning import ScanStats
from sessions_app.transferring import already_there, with_retries

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 20
MAX_CONCURRENCY = 200
NO_SPLIT = "unassigned"  # images Roboflow has not put in train/valid/test
SKIP_EARLIER = "imported earlier"


# -- starting ---------------------------------------------------------------------------------
def import_params(project: Project, workspace: str, rf_project: str, *, api_key_env: str = DEFAULT_API_KEY_ENV,
                  concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, Any]:
    """The session params of an import, validated (ConfigError). Only the *name* of the API key's
    environment variable is kept. `concurrency` is shared out over the project's upload tasks."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"concurrency: must be between 1 and {MAX_CONCURRENCY}")
    params = {"workspace": workspace, "project": rf_project, "api_key_env": api_key_env}
    RoboflowSource.from_params(params)
    workers = math.ceil(concurrency / max(1, project.upload_tasks))
    return {**params, "concurrency": concurrency, "workers": workers}


# -- the scan step: listing ids -----------------------------------------------------------------
def list_into(session: SyncSession, dest: Destination, start_uploads: bool) -> ScanStats:
    source = RoboflowSource.from_params(session.params)
    batches = (rows_for(session, hits) for hits in source.pages(PAGE_SIZE))
    return planning.fill(session, batches, start_uploads)


def rows_for(session: SyncSession, hits: list[dict[str, Any]]) -> list[FileUpload]:
    """One row per image id of a search page; ids this project imported from the same Roboflow
    project in an earlier session are skipped."""
    ids = [str(hit["id"]) for hit in hits]
    earlier = _imported_earlier(session, ids)
    keys = [image_key(hit.get("name"), hit.get("split"), image_id) for hit, image_id in zip(hits, ids)]
    taken = set(session.files.filter(remote_key__in=keys).values_list("remote_key", flat=True))
    rows = []
    for image_id, key in zip(ids, keys):
        if key in taken:  # Roboflow names need not be unique
            stem, ext = posixpath.splitext(key)
            key = f"{stem}-{image_id}{ext}"
        taken.add(key)
        rows.append(files.planned_row(session, relative_path=image_id, remote_id=image_id, remote_key=key,
                                      skip_reason=SKIP_EARLIER if image_id in earlier else ""))
    return rows


def _imported_earlier(session: SyncSession, ids: list[str]) -> set[str]:
    rows = FileUpload.objects.filter(
        project_id=session.project_id, relative_path__in=ids, status=FileStatus.UPLOADED,
        session__kind=session.kind, session__params__workspace=session.params["workspace"],
        session__params__project=session.params["project"],
    ).exclude(session_id=session.pk)
    return set(rows.values_list("relative_path", flat=True))


def image_key(name: str | None, split: str | None, image_id: str) -> str:
    safe = (name or "").replace("/", "_").replace("\\", "_").strip(". ") or image_id
    return normalize_key("images", split or NO_SPLIT, safe)


def annotation_key(key: str) -> str:
    """`images/<split>/<name>` -> `annotations/<split>/<stem>.json`."""
    return "annotations/" + posixpath.splitext(key.removeprefix("images/"))[0] + ".json"


def annotation_document(details: dict[str, Any], params: dict[str, Any]) -> bytes:
    """What is stored beside the image: Roboflow's annotation of it, and where it came from."""
    document = {
        "source": {"workspace": params["workspace"], "project": params["project"], "image_id": details.get("id")},
        "name": details.get("name"),
        "split": details.get("split"),
        "tags": details.get("tags") or [],
        "labels": details.get("labels") or [],
        "annotation": details.get("annotation"),
    }
    return json.dumps(document, indent=2, ensure_ascii=False).encode()


# -- the transfer: fetching one image -----------------------------------------------------------
class Fetcher:
    """The transfer of import rows: same contract as transferring.transfer, retries and backoff
    included; never raises."""

    def __init__(self, session: SyncSession):
        self.params = session.params
        self.source = RoboflowSource.from_params(session.params)

    def __call__(self, dest: Destination, row: FileUpload, source_dir: str, max_tries: int) -> Outcome:
        # The image is written last and atomically: its presence means the row was done.
        if row.verify_remote and already_there(dest, row):
            return Outcome(row, FileStatus.UPLOADED)
        return with_retries(row, max_tries, lambda: self._fetch_once(dest, row),
                            f"importing Roboflow image {row.remote_id}")

    def _fetch_once(self, dest: Destination, row: FileUpload) -> Outcome:
        size = self.fetch(dest, row)
        row.size, row.uploaded_at = size, timezone.now()
        row.last_error, row.error_permanent = "", False
        return Outcome(row, FileStatus.UPLOADED)

    def fetch(self, dest: Destination, row: FileUpload) -> int:
        """Annotation, then image: the image at the destination means the row is complete."""
        details = self.source.details(row.remote_id)
        document = annotation_document(details, self.params)
        dest.upload_stream(io.BytesIO(document), annotation_key(row.remote_key), len(document))
        with self.source.open_original(details) as response:
            try:
                return dest.upload_stream(response.raw, row.remote_key, content_length(response)).size
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise SourceError(
                    scrub(f"download of Roboflow image {row.remote_id} broke off: {type(exc).__name__}: {exc}")
                ) from None


def content_length(response: requests.Response) -> int | None:
    """The length the streamed body will have, when the server said and did not compress it."""
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None
