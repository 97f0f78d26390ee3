"""A folder on this machine (or a NAS mount): the embedded demo's destination."""

from __future__ import annotations

import errno
import functools
import itertools
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from projects.destinations.base import (
    ConfigError,
    Destination,
    DestinationError,
    TEMP_FOLDER,
    RemoteObject,
    UploadResult,
    check_no_dot_segments,
    name_too_long,
    normalize_key,
    temp_prefix,
)
from projects.errors import NO_SPACE, RemoteError
from projects.localfile import FILE_FLAGS, LocalFile, folder_under, folders_kept, open_under
from projects.walking import identity_of, mtime_of, walk_sorted

CHUNK = 1024 * 1024
INLINE_BELOW = 256 * 1024
# Mounted file systems whose files live across a network (or in a user-space process): see inline_below.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs", "gpfs", "beegfs")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_temp_names = itertools.count()  # with the process id, a temporary name no other writer uses
_pid = os.getpid()  # of this process: a forked worker reads its own (below)


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


# What became of one file of copy_files: (bytes written, size and mtime of the file as opened) if
# it was copied, else (None, None, None, the error, whether no other try can help). A plain tuple:
# they cross between processes by the thousand, and a named tuple cost ten times as much to make,
# pickle and unpickle.
Copied = tuple[int | None, int | None, float | None, str, bool]


class LocalDestination(Destination):
    kind = "local"
    supports_stream_upload = True

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self._folders: set[str] = set()  # made or found already
        self._inline_below: int | None = None
        self._root: str | None = None  # normalised, with a separator at the end (see _target)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_no_dot_segments("path", options["path"])
        check_no_dot_segments("prefix", options["prefix"])
        base = _folder(options["path"])
        root = os.path.normpath(os.path.join(base, normalize_key(options["prefix"] or "")))
        if os.path.commonpath([base, root]) != base:
            raise ConfigError("destination.prefix: must stay inside destination.path")

    @property
    def root(self) -> str:
        return os.path.join(_folder(self.options["path"]), self.prefix)

    @property
    def prefix(self) -> str:
        return normalize_key(self.options["prefix"] or "")

    def identity(self) -> str:
        return "file://" + os.path.normpath(self.root)

    @property
    def inline_below(self) -> int:  # type: ignore[override]
        """Small files are copied by the upload task's own thread, unless the folder is on a network
        file system, where each file waits for round trips and parallel transfers pay."""
        if self._inline_below is None:
            self._inline_below = 0 if _on_network_fs(self.root) else INLINE_BELOW
        return self._inline_below

    @property
    def keys_fold_case(self) -> bool:  # type: ignore[override]
        """On a case-insensitive file system (macOS, Windows shares) A.wav and a.wav are one file."""
        return _folds_case(self.root)

    @classmethod
    def describe_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"kind": cls.kind, "path": options.get("path"), "prefix": normalize_key(options.get("prefix") or "")}

    def check(self) -> None:
        """The folder exists and is writable, or (with `create`) could be created: checking
        changes nothing, so a dry run leaves no folder behind."""
        base = _folder(self.options["path"])
        target = base
        if not os.path.isdir(base):
            if not self.options["create"]:
                raise DestinationError(f"destination folder not found: {base}", permanent=True)
            while not os.path.exists(target):
                target = os.path.dirname(target)
            if not os.path.isdir(target):
                raise DestinationError(f"cannot create destination folder {base}: {target} is a file", permanent=True)
        if not os.access(target, os.W_OK | os.X_OK):
            raise DestinationError(f"destination folder is not writable: {target}", permanent=True)

    def list_existing(self) -> Iterator[RemoteObject]:
        if not os.path.isdir(self.root):
            return
        for entry in walk_sorted(self.root):
            if entry.relative_path.startswith(TEMP_FOLDER + "/") or ".uploading-" in entry.relative_path:
                continue
            yield RemoteObject(entry.relative_path, entry.size)

    def stat(self, key: str) -> RemoteObject | None:
        try:
            return RemoteObject(key, os.stat(self._target(key)).st_size)
        except OSError:
            return None

    def put_file(self, local: LocalFile, key: str) -> UploadResult:
        # sendfile from the open file's descriptor, not copyfileobj: for a small file that halves
        # the system calls (no 1 MiB buffer allocated per read).
        return UploadResult(size=self._write(key, functools.partial(_send, local.fd, size=local.size)))

    def copy_files(self, source_dir: str, items: list[tuple[str, str, int | None, int | None]], *,
                   follow_symlinks: bool) -> list[Copied]:
        """Copy files of a source folder, each (relative path, key, device, inode as scanned), with
        the checks of an upload (transferring._upload_once): the file opened is the one scanned, and
        unchanged until copied. What became of each, in order; never raises for one file. A file
        the quick way (_copy_quick) does not copy is copied the upload's way, whose checks and
        errors say why. Once the destination is full, the files left are not tried: each is
        answered with that error (not permanent), and the upload that meets it pauses the session."""
        out: list[Copied] = []
        with folders_kept(), _Held(self) as held:
            for i, item in enumerate(items):
                try:
                    out.append((not follow_symlinks and self._copy_quick(held, source_dir, *item))
                               or self._copy_checked(source_dir, item, follow_symlinks))
                except RemoteError as full:
                    out.extend([(None, None, None, full.message, False)] * (len(items) - i))
                    break
        return out

    def _copy_quick(self, held: _Held, source_dir: str, path: str, key: str, device: int | None,
                    inode: int | None) -> Copied | None:
        """A regular file, the one scanned, unchanged while copied and still at its name, copied with
        few system calls and little Python (a first sync's copies took three times the CPU of a bare
        loop of the same calls); None for anything else (an error, a check that fails)."""
        folder, _, name = path.rpartition("/")
        try:
            folder_fd = folder_under(source_dir, folder, path)
            src = os.open(name, FILE_FLAGS, dir_fd=folder_fd)
        except (OSError, RemoteError):
            return None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode) or (inode is not None and identity_of(st) != (device, inode)):
                return None
            written = held.write(key, src, st.st_size)
            if written is None:
                return None
            now = os.fstat(src)
            try:
                there = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            except FileNotFoundError:  # gone from its name since: what was copied is the file as it was
                there = st
            changed = (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns)
            if changed or (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
                return None
            return written, st.st_size, mtime_of(st), "", False
        except (OSError, RemoteError):
            return None
        finally:
            os.close(src)

    def _copy_checked(self, source_dir: str, item: tuple[str, str, int | None, int | None],
                      follow_symlinks: bool) -> Copied:
        path, key, device, inode = item
        try:
            with open_under(source_dir, path, follow_symlinks=follow_symlinks) as local:
                local.check_identity(device, inode)
                written = self._write(key, functools.partial(_send, local.fd, size=local.size))
                local.check_unchanged()
            return written, local.size, local.mtime, "", False
        except RemoteError as exc:
            if exc.full:
                raise  # copy_files answers the files left with it
            return None, None, None, exc.message, exc.permanent

    def upload_stream(self, fileobj: BinaryIO, key: str, size: int | None = None) -> UploadResult:
        def copy(dst: int) -> int:
            with open(dst, "wb", closefd=False) as out:
                shutil.copyfileobj(fileobj, out, CHUNK)
                written = out.tell()
            if size is not None and written != size:
                raise DestinationError(f"{key}: the stream ended after {written} of {size} bytes", permanent=False)
            return written

        return UploadResult(size=self._write(key, copy))

    def remove_unfinished(self, keys: list[str]) -> int:
        folder = os.path.join(self.root, TEMP_FOLDER)
        prefixes = tuple(temp_prefix(key) for key in keys)
        try:
            names = [name for name in os.listdir(folder) if name.startswith(prefixes)]
        except OSError:
            return 0
        for name in names:
            _remove_quietly(os.path.join(folder, name))
        return len(names)

    def _write(self, key: str, copy: Callable[[int], int]) -> int:
        """copy() fills a temporary file with a short name in the temporary folder, which then takes
        the target's name: readers never see a half-written file, and a name the target's folder
        takes is never too long as a temporary name. Returns the bytes written."""
        target = self._target(key)
        folder = self._root + TEMP_FOLDER
        tmp = f"{folder}/{self._temp_name(key)}"
        try:
            dst = self._create(tmp, folder)
            try:
                written = copy(dst)
            finally:
                os.close(dst)
            self._make_folder(target.rpartition(os.sep)[0])  # os.path.dirname of a normal path, quicker
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # the target's folder went away since: make it again
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(tmp, target)
        except OSError as exc:
            _remove_quietly(tmp)
            if exc.errno == errno.ENAMETOOLONG:
                raise name_too_long(target) from exc
            if exc.errno in NO_SPACE:
                raise DestinationError(f"destination is full: cannot write {target}: {exc.strerror or exc}",
                                       full=True) from exc
            if exc.errno == errno.EXDEV:
                raise DestinationError(f"cannot write {target}: its folder is on another file system than "
                                       f"{self.root}", permanent=True) from exc
            # FileExistsError: a file stands where a folder of the key should be (makedirs).
            permanent = isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError))
            raise DestinationError(f"cannot write {target}: {exc.strerror or exc}", permanent=permanent) from exc
        except BaseException:
            _remove_quietly(tmp)
            raise
        return written

    def _temp_name(self, key: str) -> str:
        return f"{temp_prefix(key)}{_pid:x}-{next(_temp_names):x}"

    def _create(self, tmp: str, folder: str) -> int:
        self._make_folder(folder)
        try:
            return os.open(tmp, _CREATE, 0o666)
        except FileNotFoundError:  # the folder went away since: make it again
            os.makedirs(folder, exist_ok=True)
            return os.open(tmp, _CREATE, 0o666)

    def _make_folder(self, folder: str) -> None:
        if folder not in self._folders:  # made (or found) once per folder, not once per file
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)

    def _target(self, key: str) -> str:
        if self._root is None:  # options are settled by now: worked out once, not once per file
            self._root = os.path.normpath(self.root) + os.sep
        if key and "//" not in key and "/." not in key and key[0] not in "/." and key[-1] != "/":
            return self._root + key  # normal already (a scan's key): normpath would change nothing
        target = os.path.normpath(os.path.join(self._root, key))
        if not (target + os.sep).startswith(self._root):
            raise DestinationError(f"key escapes the destination folder: {key}", permanent=True)
        return target


class _Held:
    """Within copy_files: the temporary folder and the last target folders held open, so that a
    file is created and renamed by names relative to them (openat, renameat) rather than by paths
    walked from the root each time: a quarter of a bare copy loop's system time. The way of _write
    with its checks and messages left out: None for a file it could not write, which the caller
    then copies the path way (_copy_checked), whose errors say why."""

    KEEP = 16  # target folders held open: keys come in order, so a folder's files come together

    def __init__(self, dest: LocalDestination):
        self.dest = dest
        self.temp: int | None = None
        self.fds: dict[str, int] = {}  # target folders, oldest first

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in [self.temp, *self.fds.values()]:
            if fd is not None:
                os.close(fd)
        self.temp = None
        self.fds.clear()

    def write(self, key: str, src: int, size: int) -> int | None:
        """Copy `size` bytes of `src` to `key` (a temporary file renamed into place); None if a
        call failed (nothing is left behind)."""
        dest = self.dest
        try:
            folder, _, name = dest._target(key).rpartition(os.sep)
            if self.temp is None:
                self.temp = _open_folder(dest._root + TEMP_FOLDER)
            if (into := self.fds.get(folder)) is None:
                into = self._folder(folder)
            temp = self.temp
        except (OSError, DestinationError):
            return None
        tmp = dest._temp_name(key)
        try:
            dst = os.open(tmp, _CREATE, 0o666, dir_fd=temp)
        except OSError:
            return None
        try:
            try:
                written = _send(src, dst, size)
            finally:
                os.close(dst)
            os.replace(tmp, name, src_dir_fd=temp, dst_dir_fd=into)
            return written
        except OSError:
            try:
                os.unlink(tmp, dir_fd=temp)
            except OSError:
                pass
            return None

    def _folder(self, path: str) -> int:
        if len(self.fds) >= self.KEEP:
            os.close(self.fds.pop(next(iter(self.fds))))
        fd = self.fds[path] = _open_folder(path)
        return fd


def _open_folder(path: str) -> int:
    """A descriptor of the folder, made first if need be."""
    try:
        return os.open(path, _FOLDER)
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)
        return os.open(path, _FOLDER)


def _folds_case(path: str) -> bool:
    """Does the file system of `path` (its nearest existing folder with a cased name) fold case?"""
    path = os.path.abspath(path)
    while path != os.path.dirname(path):
        name = os.path.basename(path)
        if os.path.isdir(path) and name.swapcase() != name:
            other = os.path.join(os.path.dirname(path), name.swapcase())
            try:
                return os.path.samefile(path, other)
            except OSError:
                return False
        path = os.path.dirname(path)
    return False


def _folder(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _send(src: int, dst: int, size: int) -> int:
    """Send the file as it was opened (`size` bytes; fewer if it shrank): a file that grew since
    is caught after the copy (LocalFile.changes). Stopping at `size` saves the last, empty call."""
    sent = 0
    while sent < size and (n := os.sendfile(dst, src, sent, min(CHUNK, size - sent))):
        sent += n
    return sent


def _on_network_fs(path: str) -> bool:
    """Is `path` (or its nearest existing folder) on a network or user-space file system?"""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:  # not Linux: no way to tell, so no inline copies
        return True
    return kind in NETWORK_FS or kind.startswith("fuse")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
