"""The one small interface every source implements, beside Destination: where a session's
files come from.

A source is built from its options, `check()`ed before a session starts (open/validate),
asked for its entries (`entries()`, in key order where the source has one), asked to open one
entry for reading, `describe()`d for summaries, and `close()`d. Bad options are ConfigErrors;
every failure of the other end is a SourceError that says whether retrying can help.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, ClassVar

from projects.errors import SourceError

__all__ = ["Source", "SourceError"]


class Source:
    kind: ClassVar[str] = ""

    def check(self) -> None:
        """Raise ConfigError / SourceError unless the source can be read now."""

    def entries(self) -> Iterator[Any]:
        """What the source holds, one entry at a time, never all in memory."""
        raise NotImplementedError

    def open(self, key: str) -> BinaryIO:
        """One entry's bytes, for reading (a file object; close it)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Where files come from, for summaries (no secrets)."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Release connections; the source may not be used afterwards."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
