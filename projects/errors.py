"""The one base of every error the product reports to a person: a message, and whether trying
again could help. Callers catch `UploaderError` and show `message`; retry loops read `permanent`."""

from __future__ import annotations

import errno

# What a write answers when its disk (or the writer's quota on it) is full.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class UploaderError(Exception):
    def __init__(self, message: str, permanent: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        # Seconds the remote asked us to wait (HTTP Retry-After), when it said so.
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class ConfigError(UploaderError, ValueError):
    """A config value is wrong; the message names the key."""


class RemoteError(UploaderError):
    """The other end of a transfer refused or failed; transient unless said otherwise.
    `throttled`: the remote said "too many requests" (S3 SlowDown, HTTP 429, an SFTP server
    refusing channels): the session slows down (sessions_app/pacing.py) and the attempt does not
    count against the file's retries. `full`: the destination has no space left (ENOSPC, EDQUOT):
    no other file can go either until space is freed there, so the session pauses rather than
    retry each file with backoff."""

    def __init__(self, message: str, permanent: bool = False, retry_after: float | None = None,
                 throttled: bool = False, full: bool = False):
        super().__init__(message, permanent and not throttled and not full, retry_after)
        self.throttled = throttled
        self.full = full


class DestinationError(RemoteError):
    """A destination refused or failed."""


class SourceError(RemoteError):
    """A source (the folder, a Roboflow project being imported) refused or failed."""


class FileChangedError(SourceError):
    """A local file changed while it was read: worth another try, but permanent once the tries
    are used up (a file that changes on every try is still being written)."""


class NotifyError(UploaderError):
    """A notification cannot be sent: no URL, an address the policy refuses (permanent), or the
    endpoint could not be reached or did not answer in time (transient)."""
