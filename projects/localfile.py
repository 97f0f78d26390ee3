"""A local file opened once for upload: destinations read the open file, never the path again,
so what is uploaded is the file that was checked (no symlink swapped in after the scan).

`open_under()` opens a file of a source folder without following symlinks, neither in the
file's name nor in the folders above it (one `openat` per component from the source folder),
unless the project follows symlinks. The caller compares the opened file's identity
(device, inode) with what the scan or the upload queue recorded.
"""

from __future__ import annotations

import errno
import io
import os
import stat as stat_mod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import BinaryIO

from projects.errors import DestinationError, FileChangedError, SourceError
from projects.walking import identity_of, mtime_of

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in must not hang the open; regular files ignore it.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
BUFFER = io.DEFAULT_BUFFER_SIZE


@dataclass
class LocalFile:
    """An open local file: `fd` (and `file`, a buffered reader over it) to read, its size and
    identity when opened, its name (the remote name) and original path (for messages and for files
    found beside it)."""

    fd: int
    size: int
    name: str
    path: str
    mtime: float = 0
    device: int = 0
    inode: int = 0
    _file: BinaryIO | None = field(default=None, repr=False)

    @property
    def file(self) -> BinaryIO:
        """Made on first use: a destination that copies by descriptor (local) needs none."""
        if self._file is None:
            # A buffer size given: no isatty() system call to choose one.
            self._file = open(self.fd, "rb", buffering=BUFFER)
        return self._file

    @classmethod
    def open(cls, path: str) -> LocalFile:
        """Open by path, following symlinks (for callers with a path of their own choosing)."""
        try:
            return cls.of_fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC), path)
        except OSError as exc:
            raise local_file_error(exc, path) from exc

    @classmethod
    def of_fd(cls, fd: int, path: str, name: str | None = None) -> LocalFile:
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise local_file_error(IsADirectoryError(), path)
            if not stat_mod.S_ISREG(st.st_mode):
                raise SourceError(f"not a regular file: {path}", permanent=True)
            # A regular file: O_NONBLOCK (see FILE_FLAGS) changes nothing for it, so it stays set.
        except BaseException:
            os.close(fd)
            raise
        device, inode = identity_of(st)
        return cls(fd, st.st_size, name or os.path.basename(path), path, mtime_of(st), device, inode)

    @property
    def fd_path(self) -> str:
        """A path that opens this very file (for libraries that only take a path)."""
        return f"/proc/self/fd/{self.fd}"

    def changes(self) -> str:
        """What changed since it was opened (size, mtime; another file put at its path), or "":
        the bytes read from it may then be neither the old content nor the new."""
        st = os.fstat(self.fd)
        if st.st_size != self.size:
            return f"size {self.size} -> {st.st_size} bytes"
        if mtime_of(st) != self.mtime:
            return "modified"
        try:
            now = os.stat(self.path)
        except OSError:  # gone from its path: what was read is the file as it was
            return ""
        if identity_of(now) != (self.device, self.inode):
            return "replaced by another file"
        return ""

    def check_identity(self, device: int | None, inode: int | None) -> None:
        """Refuse another file put in the place of the one scanned or queued (rows recorded before
        identities were kept have none). The same file, grown or shrunk, is uploaded."""
        if inode is None or (self.device, self.inode) == (device, inode):
            return
        raise SourceError(f"changed since it was scanned: replaced by another file (inode {self.inode}, "
                          f"was {inode}): {self.path}", permanent=True)

    def check_unchanged(self) -> None:
        """After reading it: raise FileChangedError (worth another try) if it changed meanwhile."""
        if changed := self.changes():
            raise FileChangedError(f"file changed during upload ({changed}): {self.path}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closes fd too
        else:
            os.close(self.fd)

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_under(root: str, relative_path: str, *, follow_symlinks: bool) -> LocalFile:
    """Open root/relative_path for reading. Without follow_symlinks, a symlink anywhere below
    root is refused (permanently: it was no symlink when the file was scanned or queued)."""
    path = os.path.join(root, relative_path)
    if follow_symlinks:
        return LocalFile.open(path)
    folder, _, name = relative_path.rpartition("/")
    kept = _kept_folders.get()
    fd = folder_under(root, folder, path) if kept is not None else _open_folder(root, folder, path)
    try:
        return LocalFile.of_fd(_step(fd, name, FILE_FLAGS, path, "the file"), path, name)
    finally:
        if kept is None:
            os.close(fd)


def folder_under(root: str, folder: str, path: str) -> int:
    """Within folders_kept(): a descriptor of root/folder, reached without following symlinks, kept
    open (and closed) by folders_kept(). `path`: the file wanted in it, for messages."""
    kept = _kept_folders.get()
    fd = kept.get((root, folder))
    if fd is None:
        fd = kept[(root, folder)] = _open_folder(root, folder, path)
    return fd


@contextmanager
def folders_kept() -> Iterator[None]:
    """Within, open_under() keeps each folder it walked to open for the next file in it: a batch
    of small files of one folder costs one walk, not one per file. As safe as a walk per file:
    the folder was reached without symlinks when it was opened, moments before (a folder swapped
    after a file was opened changes nothing for that file either). Closed at the end."""
    kept: dict[tuple[str, str], int] = {}
    token = _kept_folders.set(kept)
    try:
        yield
    finally:
        _kept_folders.reset(token)
        for fd in kept.values():
            os.close(fd)


_kept_folders: ContextVar[dict[tuple[str, str], int] | None] = ContextVar("kept_folders", default=None)


def _open_folder(root: str, folder: str, path: str) -> int:
    """A descriptor of root/folder, reached one component at a time without following symlinks."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise local_file_error(exc, path) from exc
    if not folder:
        return fd
    parts = folder.split("/")
    for i, part in enumerate(parts):
        try:
            next_fd = _step(fd, part, _DIR_FLAGS, path, "folder " + "/".join(parts[: i + 1]))
        finally:
            os.close(fd)
        fd = next_fd
    return fd


def _step(dir_fd: int, name: str, flags: int, path: str, what: str) -> int:
    """Open name in dir_fd (which stays open)."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if os.path.islink(os.path.join(f"/proc/self/fd/{dir_fd}", name)) or exc.errno == errno.ELOOP:
            raise SourceError(f"changed since it was scanned: {what} is now a symlink: {path}",
                              permanent=True) from None
        if isinstance(exc, NotADirectoryError):
            raise SourceError(f"changed since it was scanned: {what} is no longer a folder: {path}",
                              permanent=True) from None
        raise local_file_error(exc, path) from exc


def local_file_error(exc: OSError, path: str) -> DestinationError:
    """The DestinationError for a local file we could not read."""
    if isinstance(exc, FileNotFoundError):
        return DestinationError(f"file not found: {path}", permanent=True)
    if isinstance(exc, IsADirectoryError):
        return DestinationError(f"is a directory, not a file: {path}", permanent=True)
    if isinstance(exc, PermissionError):
        return DestinationError(f"permission denied reading {path}", permanent=True)
    return DestinationError(f"cannot read {path}: {exc.strerror or exc}", permanent=False)
