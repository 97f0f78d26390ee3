"""A Roboflow project as a source: the images an import fetches (sessions_app/importing.py).
Its image ids come from Roboflow's search API a page at a time; each image's details and
original file are fetched on demand, the original streamed, never held whole."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import requests
from roboflow.adapters import rfapi
from roboflow.core.project import Project as SDKProject

from projects.errors import ConfigError, SourceError
from projects.secrets import check_env_name
from projects.roboflow_sdk import (
    DEFAULT_TIMEOUT,
    SLUG,
    WELL_KNOWN_SECRETS,
    EnvironmentOnceSession,
    RoboflowAPI,
    retry_after,
    scrub,
)
from projects.sources.base import Source

DEFAULT_API_KEY_ENV = "ROBOFLOW_API_KEY"
PAGE_SIZE = 100  # the SDK's own search page
SEARCH_FIELDS = ["id", "name", "split"]


class RoboflowSource(Source):
    kind = "roboflow"

    def __init__(self, workspace: str | None, project: str | None, *, api_key_env: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        for name, value in (("workspace", workspace), ("project", project)):
            if not value:
                raise ConfigError(f"{name}: required")
            if not isinstance(value, str) or not SLUG.match(value):
                raise ConfigError(f"{name}: must be a Roboflow url slug (letters, digits, - _ .)")
        api_key_env = api_key_env or DEFAULT_API_KEY_ENV
        check_env_name(api_key_env, "api_key_env", WELL_KNOWN_SECRETS)
        self.workspace, self.project, self.api_key_env = workspace, project, api_key_env
        self.timeout = float(timeout)
        self.api = RoboflowAPI(api_key_env, timeout, SourceError)
        self._project_info: dict[str, Any] | None = None
        self._http = threading.local()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RoboflowSource:
        """From an import session's params (which name the API key's variable, never hold the key)."""
        return cls(params.get("workspace"), params.get("project"), api_key_env=params.get("api_key_env"))

    @property
    def where(self) -> str:
        return f"{self.workspace}/{self.project}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "workspace": self.workspace, "project": self.project}

    def check(self) -> None:
        api_key = self.api.check_key(self.workspace)
        self.api.call(rfapi.get_workspace, api_key, self.workspace, what=f"workspace {self.workspace!r}",
                      lookup=True)
        self.api.call(rfapi.get_project, api_key, self.workspace, self.project, what=f"project {self.where}",
                      lookup=True)

    def pages(self, page_size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
        """Search hits (id, name, split), a page at a time, by offset."""
        api_key = self.api.api_key()
        project = self._sdk_project(api_key)
        offset = 0
        while True:
            hits = self.api.call(_keyless(project.search), api_key, offset=offset, limit=page_size,
                                 fields=SEARCH_FIELDS, what=f"search of {self.where} at offset {offset}")
            yield hits
            if len(hits) < page_size:
                return
            offset += page_size

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every image (id, name, split), in the search's order."""
        for page in self.pages():
            yield from page

    def details(self, image_id: str) -> dict[str, Any]:
        api_key = self.api.api_key()
        project = self._sdk_project(api_key)
        return self.api.call(_keyless(project.image), api_key, image_id, what=f"image {image_id}", lookup=True)

    def open(self, key: str) -> BinaryIO:
        return self.open_original(self.details(key)).raw

    def open_original(self, details: dict[str, Any]) -> requests.Response:
        """The original image file, streaming: nothing is read before the caller reads."""
        image_id = details.get("id", "?")
        url = (details.get("urls") or {}).get("original")
        if not url:
            raise SourceError(f"Roboflow image {image_id} has no original file URL", permanent=True)
        try:
            response = self._session().get(url, stream=True, timeout=self.timeout)
        except requests.Timeout:
            raise SourceError(f"download of Roboflow image {image_id}: no answer within {self.timeout:g} s") from None
        except requests.RequestException as exc:
            raise SourceError(scrub(f"download of Roboflow image {image_id}: connection failed: {exc}")) from None
        if response.status_code != 200:
            response.close()
            raise _download_error(image_id, response)
        response.raw.decode_content = True
        return response

    def _sdk_project(self, api_key: str) -> SDKProject:
        # The project's info is kept, the key is not: the SDK object is made again for each call.
        if self._project_info is None:
            answer = self.api.call(rfapi.get_project, api_key, self.workspace, self.project,
                                   what=f"project {self.where}", lookup=True)
            self._project_info = answer["project"]
        return SDKProject(api_key, self._project_info)

    def _session(self) -> requests.Session:
        # One per thread: connections are kept alive between a worker's downloads.
        session = getattr(self._http, "session", None)
        if session is None:
            session = self._http.session = EnvironmentOnceSession()
        return session


def _keyless(method: Callable[..., Any]) -> Callable[..., Any]:
    """An SDK object's method for RoboflowAPI.call, which passes the API key first."""
    return lambda _api_key, *args, **kwargs: method(*args, **kwargs)


def _download_error(image_id: str, response: requests.Response) -> SourceError:
    status = response.status_code
    what = f"download of Roboflow image {image_id}: HTTP {status}"
    if status in (408, 429) or status >= 500:
        return SourceError(what, permanent=False, retry_after=retry_after(response))
    if status in (404, 410):
        return SourceError(f"{what}: the image file is gone", permanent=True)
    return SourceError(what, permanent=True)
