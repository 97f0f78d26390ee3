"""The one small interface every destination implements.

A destination is built from its validated options, `check()`ed before a session starts,
asked what already exists under the project's prefix (`list_existing`, an optional
capability), handed files one by one (`upload`, called from many threads at once) and
`close()`d. Every failure is a DestinationError that says whether retrying can help.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

from projects.errors import ConfigError, DestinationError
from projects.localfile import LocalFile, local_file_error
from projects.schema import KINDS, Option


DEFAULT_CHECK_TIMEOUT = 10.0


@dataclass(frozen=True)
class RemoteObject:
    key: str  # relative to the destination's prefix / remote folder, with "/" separators
    size: int


@dataclass
class UploadResult:
    size: int  # bytes actually sent
    checksum: str = ""  # ETag, sha256, ... whatever the remote vouches for
    remote_id: str = ""  # an id the remote gave the file (Roboflow image id)
    duplicate: bool = False  # the remote already had it: recorded as skipped, not failed
    note: str = ""  # a warning worth keeping on the row (e.g. "no annotation")


def normalize_key(*parts: str) -> str:
    """Join key parts with "/" (no doubled or edge slashes), NFC-normalised."""
    joined = "/".join(seg for p in parts if p for seg in p.split("/") if seg)
    return unicodedata.normalize("NFC", joined)


def check_no_dot_segments(name: str, value: str | None) -> None:
    """Refuse a remote folder or prefix with "." or ".." segments: keys must stay where they are put."""
    if value and any(seg in (".", "..") for seg in re.split(r"[/\\]", value)):
        raise ConfigError(f"destination.{name}: must not contain . or .. segments")


# Uploads are written under a short temporary name in this folder (under the destination's root)
# and renamed into place: a temporary name never exceeds the destination's name limit, and one a
# crash left is found by its key (temp_prefix) when the key's row is taken back.
TEMP_FOLDER = ".uploader-tmp"
NAME_MAX = 255  # bytes in one path segment: Linux, the BSDs, macOS, and so most SFTP servers


def temp_prefix(key: str) -> str:
    """The start of every temporary name an upload of `key` uses."""
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:16] + "-"


def longest_segment(path: str) -> int:
    """The length in bytes of the longest name in `path`."""
    return max(len(seg.encode("utf-8", "surrogateescape")) for seg in path.split("/"))


def name_too_long(target: str) -> DestinationError:
    """Permanent: no retry makes a name shorter."""
    return DestinationError(f"file name too long for the destination (its longest name has "
                            f"{longest_segment(target)} bytes, the usual limit is {NAME_MAX}): {target}",
                            permanent=True)


class Destination:
    kind: ClassVar[str] = ""
    # Both from the kind's declaration in projects/schema.py.
    label: ClassVar[str] = ""
    options_schema: ClassVar[dict[str, Option]] = {}
    # Whether list_existing() is available; the planner skips the remote check otherwise.
    supports_listing: ClassVar[bool] = True
    # Default include-extensions when a project names none (e.g. images for Roboflow).
    default_extensions: ClassVar[tuple[str, ...]] = ()
    # Whether upload_stream() is available; imports write only into such destinations.
    supports_stream_upload: ClassVar[bool] = False
    # Whether keys differing only in case name one object (a case-insensitive file system).
    keys_fold_case: bool = False
    # Whether browser uploads send their thumbnails too (not where every file becomes a dataset image).
    stores_thumbnails: ClassVar[bool] = True
    # Files smaller than this many bytes are sent by the upload task's own thread, one after the
    # other: where a transfer is a few system calls (a local disk), handing it to a pool thread
    # costs more than the transfer. 0: every file goes through the pool (network destinations).
    inline_below: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.label, cls.options_schema = KINDS[cls.kind].label, KINDS[cls.kind].options

    def __init__(self, options: dict[str, Any]):
        self.options = self.validate_options(options)
        self._local = threading.local()
        self.project_name: str | None = None
        self.session_id: int | None = None
        self.source_dir: str | None = None
        # Seconds check() waits to connect and for each answer (the project's preflight_timeout).
        self.check_timeout: float = DEFAULT_CHECK_TIMEOUT

    # -- options -------------------------------------------------------------------------
    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(options, dict):
            raise ConfigError("destination: must be an object")
        unknown = sorted(set(options) - set(cls.options_schema) - {"type"})
        if unknown:
            raise ConfigError(f"destination.{unknown[0]}: unknown option for type {cls.kind!r}")
        clean: dict[str, Any] = {}
        for name, opt in cls.options_schema.items():
            value = options.get(name, opt.default_value())
            if value is None and opt.required:
                raise ConfigError(f"destination.{name}: required for type {cls.kind!r}")
            clean[name] = None if value is None else opt.check(f"destination.{name}", value)
        cls.check_options(clean)
        return clean

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Cross-field checks of a kind; raise ConfigError."""

    # -- what the rest of the product asks ---------------------------------------------------
    @property
    def prefix(self) -> str:
        """The remote folder / key prefix every key lives under ("" for none)."""
        return ""

    def key_for(self, relative_path: str) -> str:
        """The remote key of a file, relative to `prefix`."""
        if relative_path.isascii() and "//" not in relative_path and relative_path[:1] != "/" != relative_path[-1:]:
            return relative_path  # already a key: the common case, on the plan's path for every file
        return normalize_key(relative_path)

    def describe(self) -> dict[str, Any]:
        return self.describe_options(self.options)

    @classmethod
    def describe_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Where files go, for pages, summaries and notifications (no secrets), from stored
        options alone: describing builds no client and may meet options of an older version."""
        return {"kind": cls.kind}

    def identity(self) -> str:
        """Which place this is, as one string (`s3://bucket/prefix`): what the catalog of objects
        known to be there is kept under. Another bucket, prefix, host, folder or kind is another
        place, and starts a catalog of its own."""
        return f"{self.kind}://{self.prefix}"

    def redacted_options(self) -> dict[str, Any]:
        return self.redact_options(self.options)

    @classmethod
    def redact_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options as stored in ConfigHistory. Options only ever *name* secrets, so this is
        the options themselves; kinds that could carry more override it."""
        return dict(options)

    # -- the contract ----------------------------------------------------------------------
    def bind(self, *, project: str, session_id: int, source_dir: str) -> None:
        """Called once before uploads with the context of the session (batch names, labelmaps)."""
        self.project_name = project
        self.session_id = session_id
        self.source_dir = source_dir

    def health(self) -> tuple[bool, str]:
        """Does the destination answer right now? (ok, message) for the admin and stats."""
        try:
            self.check()
        except DestinationError as exc:
            return False, exc.message
        return True, "ok"

    def check(self) -> None:
        """Connect and verify credentials and the target (bucket, folder, project)."""
        raise NotImplementedError

    def list_existing(self) -> Iterator[RemoteObject]:
        """Stream what exists under `prefix`, sorted by key (str order = UTF-8 byte order),
        keys relative to the prefix. Only when supports_listing."""
        raise NotImplementedError

    def upload(self, local: LocalFile | str, key: str) -> UploadResult:
        """Upload one local file to `key` (relative to prefix): an open LocalFile (what uploads pass:
        the file they checked), or a path of the caller's own choosing, opened here."""
        if isinstance(local, LocalFile):
            return self.put_file(local, key)
        with LocalFile.open(local) as opened:
            return self.put_file(opened, key)

    def put_file(self, local: LocalFile, key: str) -> UploadResult:
        """Upload an open local file, reading `local.file` and never its path. Thread-safe: called
        from many threads at once; keep per-thread connections in self._local if needed. Raises
        DestinationError."""
        raise NotImplementedError

    def upload_stream(self, fileobj: BinaryIO, key: str, size: int | None = None) -> UploadResult:
        """Write what `fileobj` yields to `key`, reading it in chunks (never whole), so that the
        key appears complete or not at all. `size`, when known, is the length the stream must
        have. Thread-safe like upload(). Only when supports_stream_upload. Raises DestinationError;
        errors raised by fileobj.read() may come out as they are."""
        raise NotImplementedError

    def stat(self, key: str) -> RemoteObject | None:
        """The remote object at key, or None. Used to verify uploads cut off by a crash."""
        return None

    def remove_unfinished(self, keys: list[str]) -> int:
        """Remove what uploads of these keys cut off by a crash left behind (temporary files):
        called when their rows are taken back. Returns how many were removed."""
        return 0

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

