"""Pairing images with their annotation files, the way labelled datasets are laid out on disk.

Knows the common detection formats: YOLO (`.txt`, class names from `data.yaml` or `classes.txt`),
Pascal VOC (`.xml`) and COCO (`.json`, one per image, or the `_annotations.coco.json` of a
Roboflow export folder); the dataset split from `train/`, `valid/`, `test/` folders; and the
`neither/` folder of images that show none of the classes. Nothing here talks to a remote, so
uploaders and importers can share it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

SPLITS = ("train", "valid", "test")
NEITHER_FOLDER = "neither"
LABELMAP_FILES = ("data.yaml", "data.yml", "classes.txt")
COCO_FOLDER_FILE = "_annotations.coco.json"
ANNOTATION_EXTENSIONS = (".txt", ".xml", ".json")

LabelMap = dict[int, str]

_MISSING = object()
_YOLO_LINE = re.compile(r"^\d+(\s+[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?){4,}$")


class AnnotationError(ValueError):
    """An annotation or labelmap file that exists but cannot be used; the message names it."""


@dataclass(frozen=True)
class Annotation:
    name: str  # file name to send along: its extension tells the remote the format
    text: str  # the raw annotation, as the remote expects it
    format: str  # "yolo" | "voc" | "coco"
    source: str  # the local file it came from
    labelmap: LabelMap | None = None  # class id -> name (YOLO only)


def split_for(relative_path: str, default: str = "train") -> str:
    """The split named by the innermost train/valid/test folder of a path, else `default`."""
    for folder in reversed(PurePosixPath(relative_path).parts[:-1]):
        if folder.lower() in SPLITS:
            return folder.lower()
    return default


def in_neither(relative_path: str) -> bool:
    """Whether the file lives under a `neither/` folder (images with none of the classes)."""
    return any(folder.lower() == NEITHER_FOLDER for folder in PurePosixPath(relative_path).parts[:-1])


def load_labelmap(path: str) -> LabelMap:
    """Class id -> name from a YOLO `data.yaml` (`names` as list or mapping) or a `classes.txt`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read labelmap {path}: {exc}") from None
    if not path.lower().endswith((".yaml", ".yml")):
        return {i: line.strip() for i, line in enumerate(ln for ln in text.splitlines() if ln.strip())}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AnnotationError(f"labelmap {path} is not valid YAML: {exc}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return {i: str(name) for i, name in enumerate(names)}
    if isinstance(names, dict):
        try:
            return {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise AnnotationError(f"labelmap {path}: `names` keys must be class numbers") from None
    raise AnnotationError(f"labelmap {path} has no `names` list")


def candidate_paths(image_path: str) -> list[str]:
    """Where an image's annotation may live, best first: next to it, then in the sibling folder of
    the common layouts (`images/` -> `labels/` for YOLO, `JPEGImages/` -> `Annotations/` for VOC)."""
    folder, filename = os.path.split(image_path)
    stem = os.path.splitext(filename)[0]
    folders = [folder]
    for images_dir, labels_dir in (("images", "labels"), ("JPEGImages", "Annotations")):
        mapped = _swap_last(folder, images_dir, labels_dir)
        if mapped and mapped not in folders:
            folders.append(mapped)
    return [os.path.join(f, stem + ext) for f in folders for ext in ANNOTATION_EXTENSIONS]


def _swap_last(folder: str, old: str, new: str) -> str | None:
    parts = folder.split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == old:
            return os.sep.join(parts[:i] + [new] + parts[i + 1 :])
    return None


class AnnotationFinder:
    """Finds the annotation of each image under `root` (the source folder). Thread-safe; caches
    labelmaps per folder and the last few folder-wide COCO files, which may be large."""

    coco_cache_size = 4

    def __init__(self, root: str | None = None):
        self.root = os.path.abspath(os.path.expanduser(root)) if root else None
        self._lock = threading.Lock()
        self._labelmaps: dict[str, Any] = {}
        self._coco: OrderedDict[str, _CocoIndex] = OrderedDict()
        self._coco_locks: dict[str, threading.Lock] = {}

    def find(self, image_path: str) -> Annotation | None:
        """The image's annotation, or None when it has none. Raises AnnotationError for an
        annotation or labelmap file that is there but unreadable."""
        image_path = os.path.abspath(os.path.expanduser(image_path))
        for path in candidate_paths(image_path):
            if os.path.isfile(path):
                annotation = self._read(path, image_path)
                if annotation is not None:
                    return annotation
        folder_file = os.path.join(os.path.dirname(image_path), COCO_FOLDER_FILE)
        if os.path.isfile(folder_file):
            return self._coco_index(folder_file).annotation_for(image_path)
        return None

    def labelmap_for(self, *folders: str) -> LabelMap | None:
        """The nearest `data.yaml` / `classes.txt`, searched from each folder upward to the root."""
        for folder in folders:
            for directory in self._upward(folder):
                labelmap = self._labelmap_in(directory)
                if labelmap is not None:
                    return labelmap
        return None

    def _read(self, path: str, image_path: str) -> Annotation | None:
        text = _read_text(path)
        ext = os.path.splitext(path)[1].lower()
        name = os.path.basename(path)
        if ext == ".txt" and is_yolo(text):
            labelmap = self.labelmap_for(os.path.dirname(path), os.path.dirname(image_path))
            return Annotation(name, text, "yolo", path, labelmap)
        if ext == ".xml" and is_voc(text):
            return Annotation(name, text, "voc", path)
        if ext == ".json":
            coco = parse_coco(text)
            if coco is not None:
                return _CocoIndex(coco, path).annotation_for(image_path, whole_file_name=name)
        return None

    def _upward(self, folder: str) -> list[str]:
        folder = os.path.abspath(folder)
        if self.root is None or not (folder + os.sep).startswith(self.root.rstrip(os.sep) + os.sep):
            return [folder]
        chain = [folder]
        while chain[-1] != self.root and os.path.dirname(chain[-1]) != chain[-1]:
            chain.append(os.path.dirname(chain[-1]))
        return chain

    def _labelmap_in(self, directory: str) -> LabelMap | None:
        with self._lock:
            cached = self._labelmaps.get(directory, _MISSING)
        if cached is _MISSING:
            cached = None
            for filename in LABELMAP_FILES:
                path = os.path.join(directory, filename)
                if os.path.isfile(path):
                    try:
                        cached = load_labelmap(path)
                    except AnnotationError as exc:
                        cached = exc
                    break
            with self._lock:
                self._labelmaps[directory] = cached
        if isinstance(cached, AnnotationError):
            raise AnnotationError(str(cached))  # a fresh one: threads must not share a traceback
        return cached

    def _coco_index(self, path: str) -> _CocoIndex:
        with self._lock:
            if path in self._coco:
                self._coco.move_to_end(path)
                return self._coco[path]
            file_lock = self._coco_locks.setdefault(path, threading.Lock())
        # One thread parses a big file while the others for the same folder wait for it.
        with file_lock:
            with self._lock:
                if path in self._coco:
                    return self._coco[path]
            coco = parse_coco(_read_text(path))
            if coco is None:
                raise AnnotationError(f"{path} is not a COCO annotation file")
            index = _CocoIndex(coco, path)
            with self._lock:
                self._coco[path] = index
                while len(self._coco) > self.coco_cache_size:
                    evicted, _ = self._coco.popitem(last=False)
                    self._coco_locks.pop(evicted, None)
            return index


def is_yolo(text: str) -> bool:
    """YOLO detection/segmentation lines: a class number then at least 4 coordinates. An empty
    file is a valid YOLO annotation of an image with no objects."""
    return all(_YOLO_LINE.match(line.strip()) for line in text.splitlines() if line.strip())


def is_voc(text: str) -> bool:
    try:
        return ET.fromstring(text).tag == "annotation"
    except ET.ParseError:
        return False


def parse_coco(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list):
        return data
    return None


class _CocoIndex:
    """A COCO document indexed by image file name, to cut out one image's part of it."""

    def __init__(self, coco: dict[str, Any], source: str):
        self.coco = coco
        self.source = source
        self.images: dict[str, dict[str, Any]] = {}
        for image in coco["images"]:
            file_name = str(image.get("file_name", "")).replace("\\", "/")
            basename = file_name.rsplit("/", 1)[-1]
            for name in (basename, os.path.splitext(basename)[0]):
                self.images.setdefault(name, image)
        self.annotations: dict[Any, list[dict[str, Any]]] = {}
        for annotation in coco["annotations"]:
            self.annotations.setdefault(annotation.get("image_id"), []).append(annotation)

    def annotation_for(self, image_path: str, whole_file_name: str = "") -> Annotation | None:
        if whole_file_name and len(self.coco["images"]) == 1:
            return Annotation(whole_file_name, json.dumps(self.coco), "coco", self.source)
        basename = os.path.basename(image_path)
        image = self.images.get(basename) or self.images.get(os.path.splitext(basename)[0])
        if image is None:
            return None
        annotations = self.annotations.get(image.get("id"), [])
        if not annotations:
            # Like the roboflow SDK: Roboflow recognises a COCO file only by a non-empty
            # `annotations` list, so an image without objects gets one pointing at no image.
            annotations = [
                {"id": 999999999, "image_id": 999999999, "category_id": 0, "area": 1, "segmentation": [], "iscrowd": 0}
            ]
        document = {
            "info": self.coco.get("info", {}),
            "licenses": self.coco.get("licenses", []),
            "categories": self.coco.get("categories", []),
            "images": [image],
            "annotations": annotations,
        }
        return Annotation("annotation.coco.json", json.dumps(document), "coco", self.source)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise AnnotationError(f"annotation {path} is not UTF-8 text") from None
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation {path}: {exc.strerror or exc}") from None
