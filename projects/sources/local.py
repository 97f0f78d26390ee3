"""A folder on this machine: the source of a sync session (projects/scanning.py walks it)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from projects import scanning
from projects.config import check_source_dir
from projects.errors import SourceError
from projects.models import Project
from projects.sources.base import Source
from projects.walking import Entry, Problem


class LocalSource(Source):
    kind = "local"

    def __init__(self, root: str, extensions: list[str], exclude: list[str], *, follow_symlinks: bool = False):
        self.root = root
        self.filter = scanning.ScanFilter(extensions, exclude)
        self.follow_symlinks = follow_symlinks

    @classmethod
    def of(cls, project: Project, default_extensions: tuple[str, ...] = ()) -> LocalSource:
        """A project's source folder; extensions default to what its destination takes."""
        return cls(project.source_dir, project.extensions or list(default_extensions), project.exclude,
                   follow_symlinks=project.follow_symlinks)

    def check(self) -> None:
        check_source_dir(self.root)

    def entries(self, *, sort: bool = True, method: str = "auto", on_problem: Problem | None = None,
                on_progress: Callable[[int], None] | None = None, progress_every: int = 10000) -> Iterator[Entry]:
        """The accepted files; `sort` puts them in key order (for merging with a remote listing)."""
        return scanning.scan(self.root, self.filter, method=method, sort=sort, follow_symlinks=self.follow_symlinks,
                             on_problem=on_problem, on_progress=on_progress, progress_every=progress_every)

    def path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except OSError as exc:
            raise SourceError(f"cannot read {key}: {exc.strerror or exc}", permanent=True) from None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.root}
