"""A Roboflow-compatible API on loopback, for the real roboflow SDK (pinned 1.7.3).

It speaks the part of the contract the SDK uses for uploads and imports (auth, workspace,
project, image upload with dedup by content, annotation save, search, image details, and the
file URLs image details point to), keeps what it receives, and injects failures on demand.

Fixtures (import them, or list this module in pytest_plugins):
- roboflow_server       session: the server; points the SDK at it (API_URL) for the session
- roboflow_api          function: the same server, state reset before the test and stalls released after
- roboflow_destination  function: a RoboflowDestination on workspace WORKSPACE / project PROJECT with
                        NEITHER_PROJECT, bound to session 7 of project "demo" over tmp_path/"source"

State: `api.project(ws, slug).images` (StoredImage: name, split, batch, tags, data, annotation),
`api.requests` (method, path, status), `api.fetches[image_id]` (downloads of the original),
`api.seed(ws, project, n)` and `api.add_image(ws, project, name, data)` for imports,
`api.fail_next(n, status, path_contains=..., retry_after=...)`, `api.stall_next(n, path_contains=...)`,
`api.throttle(first, rate, path_contains="/upload")` (429 bursts: the first `first` matching requests,
then all beyond `rate` per second; `api.throttled` counts them)
(never answer, until the test ends; `api.stalled` counts the requests held so far).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import roboflow.config
from PIL import Image, ImageDraw
from requests_toolbelt.multipart.decoder import MultipartDecoder

API_KEY = "rfTestKey9xq2LmZp7wVt"  # needs a lowercase letter, or the SDK never checks it
API_KEY_ENV = "UPLOADER_SECRET_ROBOFLOW_TEST_KEY"  # a name the secret rule allows
WORKSPACE = "acme"
PROJECT = "widgets"
NEITHER_PROJECT = "widgets-neither"
SEED_LABELMAP = {0: "cat", 1: "dog"}
SPLITS = ("train", "valid", "test")

log = logging.getLogger(__name__)


def make_image(seed: int = 0, fmt: str = "PNG", size: tuple[int, int] = (24, 16)) -> bytes:
    """A tiny real image whose bytes differ for every seed (the server dedups by content)."""
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed // 256 * 53) % 256))
    ImageDraw.Draw(image).point((seed % size[0], (seed // size[0]) % size[1]), fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@dataclass
class StoredAnnotation:
    name: str
    text: str
    labelmap: dict[str, str] | None
    job_name: str


@dataclass
class StoredImage:
    id: str
    name: str
    split: str
    batch: str
    tags: list[str]
    data: bytes
    width: int
    height: int
    created: int
    annotation: StoredAnnotation | None = None


@dataclass
class StoredProject:
    workspace: str
    slug: str
    type: str = "object-detection"
    images: dict[str, StoredImage] = field(default_factory=dict)  # by id, in upload order
    by_hash: dict[str, str] = field(default_factory=dict)  # sha256 -> image id

    def by_name(self, name: str) -> StoredImage:
        matches = [image for image in self.images.values() if image.name == name]
        assert len(matches) == 1, f"{len(matches)} images named {name!r} in {self.slug}"
        return matches[0]


@dataclass
class _Rule:
    remaining: int
    path_contains: str
    status: int = 0  # 0: stall
    retry_after: str | None = None
    body: Any = None
    arrived: threading.Event = field(default_factory=threading.Event)


class RoboflowAPI:
    """The server's state and controls. Thread-safe: the SDK uploads from many threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base_url = ""
        self.reset()

    def reset(self) -> None:
        if hasattr(self, "_release"):
            self._release.set()  # let go of requests stalled before the reset
        with self.lock:
            self.keys: dict[str, str] = {API_KEY: WORKSPACE}  # api key -> the workspace it belongs to
            self.workspaces: dict[str, dict[str, StoredProject]] = {WORKSPACE: {}}
            self.requests: list[tuple[str, str, int]] = []
            self.peers: list[tuple[str, int]] = []  # (path, the client's port) of each request
            self.fetches: Counter[str] = Counter()
            self.annotation_fetches: Counter[str] = Counter()
            self._rules: list[_Rule] = []
            self._throttle: tuple[str, float] | None = None  # (path_contains, rate)
            self._throttle_first = 0
            self._tokens, self._tokens_at = 0.0, time.monotonic()
            self.throttled = 0  # requests answered 429 by throttle()
            self.stalled = 0  # requests held by stall_next() rules so far
            self._release = threading.Event()
        self.add_project(WORKSPACE, PROJECT)
        self.add_project(WORKSPACE, NEITHER_PROJECT)

    def release_stalls(self) -> None:
        self._release.set()

    # -- set-up -------------------------------------------------------------------------------
    def add_workspace(self, workspace: str, api_key: str) -> None:
        with self.lock:
            self.workspaces.setdefault(workspace, {})
            self.keys[api_key] = workspace

    def add_project(self, workspace: str, slug: str, type: str = "object-detection") -> StoredProject:
        with self.lock:
            projects = self.workspaces.setdefault(workspace, {})
            return projects.setdefault(slug, StoredProject(workspace, slug, type))

    def project(self, workspace: str, slug: str) -> StoredProject:
        return self.workspaces[workspace][slug]

    def seed(
        self, workspace: str, project: str, n: int, *, annotated: bool = True, tags: tuple[str, ...] = ("seeded",)
    ) -> list[StoredImage]:
        """Add n generated JPEGs (splits train/valid/test in turn), each with a YOLO annotation."""
        stored = self.add_project(workspace, project)
        images = []
        for i in range(n):
            seed = 100_000 + len(stored.images)
            data = make_image(seed, "JPEG")
            label = f"{i % 2} 0.5 0.5 0.25 0.25\n"
            labelmap = {str(k): v for k, v in SEED_LABELMAP.items()}
            annotation = StoredAnnotation(f"seed-{seed}.txt", label, labelmap, "seed")
            with self.lock:
                image = self._store(stored, f"seed-{seed}.jpg", SPLITS[i % 3], "seed", list(tags), data)
                image.annotation = annotation if annotated else None
            images.append(image)
        return images

    def add_image(
        self, workspace: str, project: str, name: str, data: bytes, *, split: str = "train",
        annotation: StoredAnnotation | None = None,
    ) -> StoredImage:
        """Store one image as given (name, split, bytes), e.g. for name clashes or large files."""
        stored = self.add_project(workspace, project)
        with self.lock:
            image = self._store(stored, name, split, "added", [], data)
            image.annotation = annotation
        return image

    def fail_next(
        self, n: int, status: int, *, path_contains: str = "", retry_after: float | str | None = None, body: Any = None
    ) -> None:
        """Answer the next n requests whose path contains `path_contains` with `status`, an error
        object (or `body`), and a Retry-After header when given."""
        with self.lock:
            header = None if retry_after is None else str(retry_after)
            self._rules.append(_Rule(n, path_contains, status, header, body))

    def throttle(self, first: int, rate: float, *, path_contains: str = "/upload") -> None:
        """429 bursts, as Roboflow's rate limiter answers: the first `first` matching requests,
        then every one beyond `rate` per second (a bucket holding one second's worth)."""
        with self.lock:
            self._throttle, self._throttle_first = (path_contains, rate), first
            self._tokens, self._tokens_at = 0.0, time.monotonic()

    def _throttled(self, path: str) -> bool:
        with self.lock:
            if self._throttle is None or self._throttle[0] not in path:
                return False
            if self._throttle_first > 0:
                self._throttle_first -= 1
            else:
                now, rate = time.monotonic(), self._throttle[1]
                self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
                self._tokens_at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return False
            self.throttled += 1
            return True

    def stall_next(self, n: int, *, path_contains: str = "") -> threading.Event:
        """Never answer the next n matching requests (until release_stalls() or the test's end):
        for client timeouts. The event returned is set when the first of them arrives."""
        rule = _Rule(n, path_contains)
        with self.lock:
            self._rules.append(rule)
        return rule.arrived

    def connections(self, path_contains: str = "") -> int:
        """How many TCP connections the requests whose path contains `path_contains` came on."""
        with self.lock:
            return len({port for path, port in self.peers if path_contains in path})

    def count(self, path_contains: str = "", method: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, path, _ in self.requests if path_contains in path and method in (None, m))

    # -- internals ---------------------------------------------------------------------------
    def _store(
        self, project: StoredProject, name: str, split: str, batch: str, tags: list[str], data: bytes
    ) -> StoredImage:
        digest = hashlib.sha256(data).hexdigest()
        width, height = Image.open(io.BytesIO(data)).size
        image_id = digest[:20]
        image = StoredImage(image_id, name, split, batch, tags, data, width, height, int(time.time() * 1000))
        project.images[image_id] = image
        project.by_hash[digest] = image_id
        return image

    def _rule_for(self, path: str) -> _Rule | None:
        with self.lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.path_contains in path:
                    rule.remaining -= 1
                    return rule
        return None

    def _url(self, workspace: str, project: str, image_id: str, what: str) -> str:
        return f"{self.base_url}/files/{workspace}/{project}/{image_id}/{what}"

    def _image_details(self, workspace: str, project: str, image: StoredImage) -> dict[str, Any]:
        boxes = _boxes(image)
        return {
            "id": image.id,
            "name": image.name,
            "split": image.split,
            "tags": image.tags,
            "created": image.created,
            "labels": sorted({box["label"] for box in boxes}),
            "annotation": {"key": image.name, "width": image.width, "height": image.height, "boxes": boxes},
            "urls": {
                "original": self._url(workspace, project, image.id, "original"),
                "thumb": self._url(workspace, project, image.id, "thumb"),
                "annotation": self._url(workspace, project, image.id, "annotation"),
            },
        }



class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the records are in api.requests
        log.debug("roboflow_api: " + format, *[re.sub(r"api_key=[^&\s]+", "api_key=***", str(a)) for a in args])

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        self.query = {k: v for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        rule = api._rule_for(url.path)
        if rule is not None and rule.status == 0:
            with api.lock:
                api.stalled += 1
            rule.arrived.set()
            api._release.wait()
            self.close_connection = True
            return
        if rule is None and api._throttled(url.path):
            return self._send(url.path, 429, {"error": {"message": "rate limit exceeded"}})
        if rule is not None:
            headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else {}
            payload = rule.body if rule.body is not None else {"error": {"message": f"injected HTTP {rule.status}"}}
            return self._send(url.path, rule.status, payload, headers)
        parts = [p for p in url.path.split("/") if p]
        try:
            status, payload, content_type = self._route(parts, body)
        except _HTTPError as exc:
            status, payload, content_type = exc.status, {"error": {"message": exc.message}}, "application/json"
        self._send(url.path, status, payload, content_type=content_type)

    def _route(self, parts: list[str], body: bytes) -> tuple[int, Any, str]:
        method, api = self.command, self.server.api
        if parts and parts[0] == "files" and method == "GET" and len(parts) == 5:
            return self._file(*parts[1:])
        workspace = self._authorised_workspace()
        if method == "POST" and not parts:
            return 200, {"welcome": "Welcome to the Roboflow API.", "workspace": workspace}, "application/json"
        if method == "POST" and len(parts) == 3 and parts[0] == "dataset" and parts[2] == "upload":
            return 200, self._upload(self._project(workspace, parts[1]), body), "application/json"
        if method == "POST" and len(parts) == 4 and parts[0] == "dataset" and parts[2] == "annotate":
            return 200, self._annotate(self._project(workspace, parts[1]), parts[3], body), "application/json"
        if method == "GET" and len(parts) == 1:
            info = self._workspace_info(parts[0], self._workspace(workspace, parts[0]))
            return 200, {"workspace": info}, "application/json"
        if method == "GET" and len(parts) == 2:
            self._workspace(workspace, parts[0])
            info = _project_info(self._project(parts[0], parts[1]))
            return 200, {"project": info, "versions": []}, "application/json"
        if method == "POST" and len(parts) == 3 and parts[2] == "search":
            self._workspace(workspace, parts[0])
            return 200, self._search(self._project(parts[0], parts[1]), body), "application/json"
        if method == "GET" and len(parts) == 4 and parts[2] == "images":
            self._workspace(workspace, parts[0])
            project = self._project(parts[0], parts[1])
            with api.lock:
                image = project.images.get(parts[3])
            if image is None:
                raise _HTTPError(404, f"image {parts[3]} not found")
            return 200, {"image": api._image_details(parts[0], parts[1], image)}, "application/json"
        raise _HTTPError(404, f"no route for {method} /{'/'.join(parts)}")

    # -- routes -------------------------------------------------------------------------------
    def _authorised_workspace(self) -> str:
        api_key = self.query.get("api_key", [""])[0]
        workspace = self.server.api.keys.get(api_key)
        if workspace is None:
            # Echoes the key, as careless servers do: the client must scrub what it repeats.
            raise _HTTPError(401, f"This API key does not exist (or has been revoked): {api_key}")
        return workspace

    def _workspace(self, authorised: str, workspace: str) -> dict[str, StoredProject]:
        projects = self.server.api.workspaces.get(workspace)
        if projects is None:
            raise _HTTPError(404, f"workspace {workspace} not found")
        if workspace != authorised:
            raise _HTTPError(403, f"this API key has no access to workspace {workspace}")
        return projects

    def _workspace_info(self, workspace: str, projects: dict[str, StoredProject]) -> dict[str, Any]:
        with self.server.api.lock:
            infos = [_project_info(p) for p in projects.values()]
        return {"name": workspace, "url": workspace, "projects": infos, "members": []}

    def _project(self, workspace: str, slug: str) -> StoredProject:
        project = self.server.api.workspaces.get(workspace, {}).get(slug)
        if project is None:
            raise _HTTPError(404, f"project {workspace}/{slug} not found")
        return project

    def _upload(self, project: StoredProject, body: bytes) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for part in MultipartDecoder(body, self.headers.get("Content-Type", "")).parts:
            disposition = part.headers.get(b"Content-Disposition", b"").decode()
            name = re.search(r'name="([^"]*)"', disposition)
            if name:
                fields[name.group(1)] = part.content
        data = fields.get("file", b"")
        try:
            Image.open(io.BytesIO(data)).verify()
        except Exception:
            raise _HTTPError(400, "Invalid image: the file could not be decoded") from None
        api = self.server.api
        with api.lock:
            existing = project.by_hash.get(hashlib.sha256(data).hexdigest())
            if existing:
                return {"duplicate": True, "id": existing}
            image = api._store(
                project,
                fields.get("name", b"").decode(),
                fields.get("split", b"train").decode(),
                self.query.get("batch", [""])[0],
                self.query.get("tag", []),
                data,
            )
        return {"success": True, "id": image.id}

    def _annotate(self, project: StoredProject, image_id: str, body: bytes) -> dict[str, Any]:
        payload = json.loads(body or b"{}")
        api = self.server.api
        with api.lock:
            image = project.images.get(image_id)
            if image is None:
                raise _HTTPError(404, f"image {image_id} not found")
            if image.annotation is not None and self.query.get("overwrite", [""])[0] != "true":
                raise _HTTPError(409, "image already annotated")
            labelmap = payload.get("labelmap")
            image.annotation = StoredAnnotation(
                self.query.get("name", [""])[0], payload["annotationFile"], labelmap, self.query.get("jobName", [""])[0]
            )
        return {"success": True}

    def _search(self, project: StoredProject, body: bytes) -> dict[str, Any]:
        query = json.loads(body or b"{}")
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 50))
        fields = set(query.get("fields") or ["id", "created", "name", "labels"]) | {"id"}
        api = self.server.api
        with api.lock:
            images = [i for i in project.images.values() if not query.get("tag") or query["tag"] in i.tags]
            page = [api._image_details(project.workspace, project.slug, i) for i in images[offset : offset + limit]]
        return {"results": [{k: v for k, v in d.items() if k in fields} for d in page]}

    def _file(self, workspace: str, slug: str, image_id: str, what: str) -> tuple[int, Any, str]:
        api = self.server.api
        with api.lock:
            image = api.workspaces.get(workspace, {}).get(slug, StoredProject("", "")).images.get(image_id)
            if image is None:
                raise _HTTPError(404, f"image {image_id} not found")
            if what == "annotation":
                api.annotation_fetches[image_id] += 1
                return 200, api._image_details(workspace, slug, image)["annotation"], "application/json"
            if what == "original":
                api.fetches[image_id] += 1
        kind = Image.open(io.BytesIO(image.data)).format or "JPEG"
        return 200, image.data, f"image/{kind.lower()}"

    def _send(
        self, path: str, status: int, payload: Any, headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        with self.server.api.lock:
            self.server.api.requests.append((self.command, path, status))
            self.server.api.peers.append((path, self.client_address[1]))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: RoboflowAPI):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api


def _project_info(project: StoredProject) -> dict[str, Any]:
    images = list(project.images.values())
    classes = Counter(box["label"] for image in images for box in _boxes(image))
    return {
        "id": f"{project.workspace}/{project.slug}",
        "type": project.type,
        "name": project.slug,
        "created": 1_700_000_000,
        "updated": 1_700_000_000,
        "images": len(images),
        "unannotated": sum(1 for image in images if image.annotation is None),
        "annotation": "objects",
        "public": False,
        "splits": dict(Counter(image.split for image in images)),
        "colors": {},
        "classes": dict(classes),
    }


def _boxes(image: StoredImage) -> list[dict[str, Any]]:
    """The stored annotation as Roboflow's image details show it (centre x/y, width, height in px);
    [] for what this little server cannot read."""
    annotation = image.annotation
    if annotation is None:
        return []
    try:
        if annotation.name.endswith(".txt"):
            labelmap = annotation.labelmap or {}
            boxes = []
            for line in annotation.text.splitlines():
                if line.strip():
                    c, x, y, w, h = line.split()[:5]
                    boxes.append(_box(labelmap.get(c, c), float(x) * image.width, float(y) * image.height,
                                      float(w) * image.width, float(h) * image.height))
            return boxes
        if annotation.name.endswith(".xml"):
            boxes = []
            for obj in ET.fromstring(annotation.text).iter("object"):
                b = {k: float(obj.findtext(f"bndbox/{k}") or 0) for k in ("xmin", "ymin", "xmax", "ymax")}
                boxes.append(_box(obj.findtext("name") or "", (b["xmin"] + b["xmax"]) / 2, (b["ymin"] + b["ymax"]) / 2,
                                  b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]))
            return boxes
        if annotation.name.endswith(".json"):
            coco = json.loads(annotation.text)
            names = {c["id"]: c["name"] for c in coco.get("categories", [])}
            ids = {i["id"] for i in coco.get("images", [])}
            return [
                _box(names.get(a["category_id"], ""), a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2,
                     a["bbox"][2], a["bbox"][3])
                for a in coco.get("annotations", []) if a.get("image_id") in ids and a.get("bbox")
            ]
    except (ValueError, KeyError, TypeError, ET.ParseError):
        pass
    return []


def _box(label: str, x: float, y: float, width: float, height: float) -> dict[str, Any]:
    return {"label": label, "x": x, "y": y, "width": width, "height": height}


def point_sdk_at(url: str | None) -> None:
    """Send the SDK's requests to `url` (None: its default, api.roboflow.com)."""
    if url is None:
        os.environ.pop("API_URL", None)
    else:
        os.environ["API_URL"] = url
    # The SDK binds API_URL into each of its modules at import time; this rebinds them all.
    roboflow.config.refresh_region_urls()


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def roboflow_server() -> Iterator[RoboflowAPI]:
    api = RoboflowAPI()
    server = _Server(api)
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="roboflow-api", daemon=True)
    thread.start()
    previous = os.environ.get("API_URL")
    mp = pytest.MonkeyPatch()
    for name in ("NO_PROXY", "no_proxy"):
        mp.setenv(name, ",".join(filter(None, [os.environ.get(name, ""), "127.0.0.1", "localhost"])))
    point_sdk_at(api.base_url)
    try:
        yield api
    finally:
        api.release_stalls()
        server.shutdown()
        server.server_close()
        point_sdk_at(previous)
        mp.undo()


@pytest.fixture
def roboflow_api(roboflow_server: RoboflowAPI) -> Iterator[RoboflowAPI]:
    roboflow_server.reset()
    try:
        yield roboflow_server
    finally:
        roboflow_server.release_stalls()


@pytest.fixture
def roboflow_destination(roboflow_api: RoboflowAPI, monkeypatch: pytest.MonkeyPatch, tmp_path):
    from projects.destinations.roboflow import RoboflowDestination

    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    source = tmp_path / "source"
    source.mkdir()
    destination = RoboflowDestination(
        {"workspace": WORKSPACE, "project": PROJECT, "neither_project": NEITHER_PROJECT, "api_key_env": API_KEY_ENV}
    )
    destination.bind(project="demo", session_id=7, source_dir=str(source))
    try:
        yield destination
    finally:
        destination.close()
