"""Roboflow: images, with their annotations, into a Roboflow project through the roboflow SDK
(made safe for worker threads in projects/roboflow_sdk.py: timeouts, stdout, key masking, errors).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import filetype
from roboflow.adapters import rfapi
from roboflow.core.project import ACCEPTED_IMAGE_FORMATS

from projects.annotations import Annotation, AnnotationError, AnnotationFinder, in_neither, split_for
from projects.destinations.base import (
    ConfigError,
    Destination,
    DestinationError,
    UploadResult,
    local_file_error,
)
from projects.localfile import LocalFile
from projects.roboflow_sdk import DEFAULT_TIMEOUT, SLUG, WELL_KNOWN_SECRETS, RoboflowAPI

log = logging.getLogger(__name__)
from projects.secrets import check_secret_options


class RoboflowDestination(Destination):
    kind = "roboflow"
    supports_listing = False  # planning relies on our database
    well_known_secrets = WELL_KNOWN_SECRETS
    default_extensions = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".avif", ".heic")
    stores_thumbnails = False  # each would become an image of the dataset

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self._finder = AnnotationFinder()
        self.api = RoboflowAPI(self.options["api_key_env"], self.options["timeout"], DestinationError)
        self._names = _NamedPaths()

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        for name in ("workspace", "project", "neither_project"):
            value = options[name]
            if value is not None and not SLUG.match(value):
                raise ConfigError(f"destination.{name}: must be a Roboflow url slug (letters, digits, - _ .)")
        check_secret_options(options, "destination.", cls.well_known_secrets)
        if options["neither_project"] == options["project"]:
            raise ConfigError("destination.neither_project: must differ from destination.project")
        if not all(isinstance(tag, str) and tag.strip() for tag in options["tags"]):
            raise ConfigError("destination.tags: must be a list of non-empty strings")
        options["tags"] = [tag.strip() for tag in options["tags"]]
        if options["timeout"] <= 0:
            raise ConfigError("destination.timeout: must be a positive number of seconds")

    def bind(self, *, project: str, session_id: int, source_dir: str) -> None:
        super().bind(project=project, session_id=session_id, source_dir=source_dir)
        # Labelmaps are searched upward from each image, but not above the source folder.
        self._finder = AnnotationFinder(source_dir)

    @property
    def batch_name(self) -> str:
        name = self.options["batch_name"]
        if not name:
            project = getattr(self, "project_name", "")
            name = f"{project}-session-{self.session_id}" if project else "data-uploader"
        return url_safe(name)

    @classmethod
    def describe_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"kind": cls.kind, "workspace": options.get("workspace"), "project": options.get("project")}

    def identity(self) -> str:
        where = f"roboflow://{self.options['workspace']}/{self.options['project']}"
        return f"{where}+{self.options['neither_project']}" if self.options["neither_project"] else where

    # -- check ------------------------------------------------------------------------------
    def check(self) -> None:
        workspace = self.options["workspace"]
        api = RoboflowAPI(self.api.key_env, min(self.api.timeout, self.check_timeout), DestinationError)
        api_key = api.check_key(workspace)
        api.call(rfapi.get_workspace, api_key, workspace, what=f"workspace {workspace!r}", lookup=True)
        for project in filter(None, (self.options["project"], self.options["neither_project"])):
            what = f"project {workspace}/{project}"
            api.call(rfapi.get_project, api_key, workspace, project, what=what, lookup=True)

    # -- upload -----------------------------------------------------------------------------
    def put_file(self, local: LocalFile, key: str) -> UploadResult:
        api_key = self.api.api_key()
        project = self._project_for(key)
        size = check_image(local)
        try:
            annotation = self._finder.find(local.path)
        except AnnotationError as exc:
            raise DestinationError(str(exc), permanent=True) from None
        with self._names.path_for(local) as image_path:
            image = self.api.call(
                rfapi.upload_image,
                api_key,
                project,
                image_path,
                split=split_for(key, self.options["split"]),
                batch_name=self.batch_name,
                tag_names=list(self.options["tags"]),
                what=f"upload of {local.name}",
                local_path=local.path,
            )
        image_id = str(image.get("id") or "")
        if not image_id:
            raise DestinationError(f"Roboflow answered the upload of {key} without an image id", permanent=False)
        duplicate = bool(image.get("duplicate"))
        log.debug("roboflow: %s -> %s image %s%s", key, project, image_id, " (duplicate)" if duplicate else "")
        notes = ["no annotation"] if annotation is None else self._annotate(api_key, project, image_id, annotation)
        return UploadResult(size=size, remote_id=image_id, duplicate=duplicate, note="; ".join(notes))

    def _annotate(self, api_key: str, project: str, image_id: str, annotation: Annotation) -> list[str]:
        notes = []
        if annotation.format == "yolo" and annotation.labelmap is None:
            notes.append("YOLO annotation without data.yaml or classes.txt: classes named by number")
        answer = self.api.call(
            rfapi.save_annotation,
            api_key,
            project,
            annotation_file_name(annotation.name),
            annotation.text,
            image_id,
            job_name=self.batch_name,
            annotation_labelmap=annotation.labelmap,
            what=f"annotation {os.path.basename(annotation.source)} of image {image_id}",
        )
        if answer.get("warn"):  # "already annotated": a re-upload keeps the annotation it has
            notes.append(f"annotation not replaced: {answer['warn']}")
        return notes

    def _project_for(self, key: str) -> str:
        if not in_neither(key):
            return self.options["project"]
        if not self.options["neither_project"]:
            raise DestinationError(
                f"{key} is in a neither/ folder but destination.neither_project is not set", permanent=True
            )
        return self.options["neither_project"]

    def close(self) -> None:
        self._names.close()
        super().close()


# -- helpers ------------------------------------------------------------------------------------
class _NamedPaths:
    """Paths that open an open file under its own name: the SDK reads the image by path and names
    it (and guesses its type) after the path's last part, so /proc/self/fd/N alone won't do.
    Each thread has a private (0700) folder of its own for the destination's life, where the link
    is made and removed around each upload: a folder made and removed per image cost a quarter
    of the upload's CPU (mkdtemp + rmtree's scandir, stats and unlinks)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._root: str | None = None

    @contextmanager
    def path_for(self, local: LocalFile) -> Iterator[str]:
        path = os.path.join(self._folder(), local.name)
        try:
            os.symlink(local.fd_path, path)
        except FileNotFoundError:  # the folder is gone (a temporary files cleaner): a new one
            self._local.folder = None
            path = os.path.join(self._folder(), local.name)
            os.symlink(local.fd_path, path)
        try:
            yield path
        finally:
            os.unlink(path)

    def _folder(self) -> str:
        folder = getattr(self._local, "folder", None)
        if folder is None:
            with self._lock:
                if self._root is None or not os.path.isdir(self._root):
                    self._root = tempfile.mkdtemp(prefix="roboflow-upload-")  # private (0700)
                folder = self._local.folder = tempfile.mkdtemp(dir=self._root)
        return folder

    def close(self) -> None:
        with self._lock:
            root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def check_image(local: LocalFile) -> int:
    """The size of an image Roboflow accepts (judged by its content, not its name)."""
    try:
        local.file.seek(0)
        head = local.file.read(8192)
        local.file.seek(0)
    except OSError as exc:
        raise local_file_error(exc, local.path) from exc
    size, path = local.size, local.path
    kind = filetype.guess(head)
    if kind is None or kind.mime not in ACCEPTED_IMAGE_FORMATS:
        accepted = ", ".join(sorted(mime.split("/")[1] for mime in ACCEPTED_IMAGE_FORMATS))
        found = kind.mime if kind else "not a recognised file type"
        raise DestinationError(
            f"not an image Roboflow accepts: {os.path.basename(path)} ({found}; accepted: {accepted})", permanent=True
        )
    return size


def url_safe(text: str, limit: int = 100) -> str:
    """ASCII letters, digits and - _ . only: the SDK pastes batch and annotation file names into
    the annotation request's query string without encoding them."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_text).strip("-.")[:limit] or "upload"


def annotation_file_name(name: str) -> str:
    """`name` made url_safe, keeping its extension: it tells Roboflow the annotation format."""
    stem, ext = os.path.splitext(name)
    return f"{url_safe(stem)}.{url_safe(ext)}" if ext else url_safe(stem)


