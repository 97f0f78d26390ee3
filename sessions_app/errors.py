"""The errors sessions_app reports; all are `UploaderError`s (a message; permanent or not)."""

from __future__ import annotations

from projects.errors import UploaderError


class TransitionError(UploaderError):
    """A status change that the current status does not allow."""


class StartError(UploaderError):
    """A session cannot start: bad source folder, destination refused, broker unreachable, ..."""


class LeaseHeld(StartError):
    """Another session of the project is running to the same destination; `holder` is it."""

    def __init__(self, holder, message: str):
        super().__init__(message)
        self.holder = holder


class EnqueueError(UploaderError):
    """The broker refused or could not be reached."""

    def __init__(self, message: str):
        super().__init__(message, permanent=False)


class ResumeError(UploaderError):
    """A session cannot be resumed (not running, or still alive)."""


class RetryError(UploaderError):
    """A round cannot be queued for this session (still running, never fully scanned, ...)."""


class Refused(UploaderError):
    """The upload queue refuses a file; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message, permanent=status != 429)
        self.status = status
