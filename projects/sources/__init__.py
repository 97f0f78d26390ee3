"""Where a session's files come from, beside where they go (projects/destinations): a local
folder (sync, `local.py`) or a Roboflow project (import, `roboflow.py`). Import the kind you use:
each pulls in its own client library."""

from projects.sources.base import Source, SourceError

__all__ = ["Source", "SourceError"]
