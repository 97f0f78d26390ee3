"""Import a Roboflow project's images, with their annotations, into a project's storage (S3, local).

An import is a session like any other, of kind "import", the Roboflow workspace and project in its
params. Its scan step lists the image ids through Roboflow's search API, a page at a time, as one
FileUpload row per id (relative_path and remote_id: the id; remote_key: `images/<split>/<name>`).
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
import threading
from collections.abc import Callable, Iterator
from typing import Any

import requests
import urllib3
from django.utils import timezone
from roboflow.adapters import rfapi
from roboflow.core.project import Project as SDKProject

from projects.destinations import ConfigError, Destination, DestinationError
from projects.destinations.base import normalize_key
from projects.destinations.roboflow import RoboflowDestination, retry_after, scrub
from projects.models import Project
from sessions_app import files, planning
from sessions_app.errors import StartError
from sessions_app.files import Outcome
from sessions_app.models import FileStatus, FileUpload, SyncSession
from sessions_app.planning import ScanStats
from sessions_app.transferring import already_there, with_retries

log = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "ROBOFLOW_API_KEY"
DEFAULT_CONCURRENCY = 20
MAX_CONCURRENCY = 200
PAGE_SIZE = 100  # the SDK's own search page
SEARCH_FIELDS = ["id", "name", "split"]
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


def preflight(project: Project, params: dict[str, Any]) -> Destination:
    """Both ends answer: the project's destination can take streams, the Roboflow project exists
    and the key opens it. Returns the destination, open."""
    try:
        dest = project.destination()
        source = RoboflowSource.from_params(params)
    except ConfigError as exc:
        raise StartError(str(exc)) from exc
    if not dest.supports_stream_upload:
        raise StartError(f"project {project.name}: a {project.destination_kind} destination cannot receive "
                         f"imports; import into a project with an S3 or local destination")
    for end, what in ((dest, f"destination {project.destination_kind}"), (source, "Roboflow")):
        try:
            end.check()
        except DestinationError as exc:
            dest.close()
            raise StartError(f"{what}: {exc.message}") from None
    return dest


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
                raise DestinationError(
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


# -- the Roboflow end ---------------------------------------------------------------------------
class RoboflowSource(RoboflowDestination):
    """The Roboflow project an import reads: the destination's option checks, SDK hooks (timeouts,
    stdout to logging), key handling and error mapping, used the other way round."""

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self._project_info: dict[str, Any] | None = None
        self._http = threading.local()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RoboflowSource:
        options = {name: params[name] for name in ("workspace", "project", "api_key_env") if params.get(name)}
        try:
            return cls(options)
        except ConfigError as exc:
            raise ConfigError(str(exc).removeprefix("destination.")) from None

    @property
    def where(self) -> str:
        return f"{self.options['workspace']}/{self.options['project']}"

    def pages(self, page_size: int) -> Iterator[list[dict[str, Any]]]:
        """Search hits (id, name, split), a page at a time, by offset."""
        api_key = self._api_key()
        project = self._sdk_project(api_key)
        offset = 0
        while True:
            hits = self._sdk(_keyless(project.search), api_key, offset=offset, limit=page_size, fields=SEARCH_FIELDS,
                             what=f"search of {self.where} at offset {offset}")
            yield hits
            if len(hits) < page_size:
                return
            offset += page_size

    def details(self, image_id: str) -> dict[str, Any]:
        api_key = self._api_key()
        project = self._sdk_project(api_key)
        return self._sdk(_keyless(project.image), api_key, image_id, what=f"image {image_id}", lookup=True)

    def open_original(self, details: dict[str, Any]) -> requests.Response:
        """The original image file, streaming: nothing is read before the caller reads."""
        image_id = details.get("id", "?")
        url = (details.get("urls") or {}).get("original")
        if not url:
            raise DestinationError(f"Roboflow image {image_id} has no original file URL", permanent=True)
        timeout = float(self.options["timeout"])
        try:
            response = self._session().get(url, stream=True, timeout=timeout)
        except requests.Timeout:
            raise DestinationError(f"download of Roboflow image {image_id}: no answer within {timeout:g} s") from None
        except requests.RequestException as exc:
            raise DestinationError(scrub(f"download of Roboflow image {image_id}: connection failed: {exc}")) from None
        if response.status_code != 200:
            response.close()
            raise _download_error(image_id, response)
        response.raw.decode_content = True
        return response

    def _sdk_project(self, api_key: str) -> SDKProject:
        # The project's info is kept, the key is not: the SDK object is made again for each call.
        if self._project_info is None:
            workspace, project = self.options["workspace"], self.options["project"]
            answer = self._sdk(rfapi.get_project, api_key, workspace, project, what=f"project {self.where}",
                               lookup=True)
            self._project_info = answer["project"]
        return SDKProject(api_key, self._project_info)

    def _session(self) -> requests.Session:
        # One per thread: connections are kept alive between a worker's downloads.
        session = getattr(self._http, "session", None)
        if session is None:
            session = self._http.session = requests.Session()
        return session


def _keyless(method: Callable[..., Any]) -> Callable[..., Any]:
    """An SDK object's method for RoboflowDestination._sdk, which passes the API key first."""
    return lambda _api_key, *args, **kwargs: method(*args, **kwargs)


def _download_error(image_id: str, response: requests.Response) -> DestinationError:
    status = response.status_code
    what = f"download of Roboflow image {image_id}: HTTP {status}"
    if status in (408, 429) or status >= 500:
        return DestinationError(what, permanent=False, retry_after=retry_after(response))
    if status in (404, 410):
        return DestinationError(f"{what}: the image file is gone", permanent=True)
    return DestinationError(what, permanent=True)
