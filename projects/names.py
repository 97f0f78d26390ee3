"""Source file names that cannot become a key as they are.

- A name that is not valid UTF-8 (`os.fsdecode` keeps each undecodable byte as a lone surrogate)
  cannot be stored as text (PostgreSQL and SQLite refuse surrogates) nor sent as a key. It gets a
  row of its own that fails permanently, stored under its *escaped* form: each undecodable byte
  written `\\xHH` (b"caf\\xe9.wav" is stored as "caf\\\\xe9.wav"); the error message quotes the
  exact bytes, so `os.fsencode` of the name round-trips and nothing about it is lost.
- Two names that map to one key (NFC and NFD spellings of one name; names differing only in case
  on a destination whose keys fold case) collide: the name that is its key as it is wins (or, when
  neither is, the first in scan order); the other fails with "key collision with <path>".
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from projects.walking import Entry


def stored_form(path: str) -> str:
    """The path as text a database accepts: undecodable bytes as `\\xHH`."""
    if path.isascii():
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def not_utf8(path: str) -> str:
    """Why a scanned name cannot be synced ("" when it can)."""
    if path.isascii():
        return ""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return (f"file name is not valid UTF-8 ({os.fsencode(path)!r}): it cannot be stored or given a key; "
                f"rename it to UTF-8 to upload it")
    return ""


class Refused(NamedTuple):
    entry: Entry
    path: str  # stored_form
    key: str
    reason: str


class KeyCollisions:
    """Remembers, during one scan, which path claimed each key that was not its path as it is.
    Memory stays with the rare names: a name whose key is itself is checked against the source
    folder (does the key exist there as a file of its own?), not remembered; only on a destination
    whose keys fold case is every key remembered (folded)."""

    def __init__(self, root: str, accepts: Callable[[str], bool], key_for: Callable[[str], str], *,
                 fold_case: bool = False):
        self.root, self.accepts, self.key_for, self.fold_case = root, accepts, key_for, fold_case
        self.claimed: dict[str, str] = {}

    def split(self, batch: list[Entry]) -> tuple[list[Entry], list[str], list[Refused]]:
        """The entries that may take their keys (and those keys), and those that fail."""
        entries, keys, refused = [], [], []
        for e in batch:
            reason = not_utf8(e.relative_path)
            key = "" if reason else self.key_for(e.relative_path)
            reason = reason or self.check(e, key)
            if reason:
                refused.append(Refused(e, stored_form(e.relative_path), stored_form(key), reason))
            else:
                entries.append(e)
                keys.append(key)
        return entries, keys, refused

    def check(self, entry: Entry, key: str) -> str:
        """"" when the entry may take `key`; else the reason it fails."""
        path = entry.relative_path
        if self.fold_case:
            return self._claim(key.casefold(), path)
        if key == path:
            return ""
        if self._exists_apart(key, entry):
            return f"key collision with {key}"
        return self._claim(key, path)

    def _claim(self, key: str, path: str) -> str:
        first = self.claimed.setdefault(key, path)
        return "" if first == path else f"key collision with {stored_form(first)}"

    def _exists_apart(self, key: str, entry: Entry) -> bool:
        """A file named exactly `key` is in the source, accepted, and is not `entry` itself (a
        folder that normalises names could show the entry under its key's spelling)."""
        try:
            st = os.lstat(os.path.join(self.root, key))
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or not self.accepts(key):
            return False
        return entry.inode is None or (st.st_ino, st.st_dev) != (_unsigned(entry.inode), _unsigned(entry.device))


def _unsigned(n: int | None) -> int | None:
    return n + (1 << 64) if n is not None and n < 0 else n
