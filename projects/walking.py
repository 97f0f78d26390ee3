"""A portable, streaming, sorted walk of a folder tree.

Entries come out in the order of their relative path as a string ("/" separated), the order
S3 lists keys in, so a scan and a remote listing can be merged without holding either.
A folder sorts as its name plus "/", which is what makes the per-folder sort a global one.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Entry:
    relative_path: str
    size: int
    mtime: float  # rounded to microseconds: find's text and os.stat's float agree to that
    # identity_of(): what the upload checks it opens. Carried, not compared: entries are paths.
    device: int | None = field(default=None, compare=False)
    inode: int | None = field(default=None, compare=False)


def mtime_of(st: os.stat_result) -> float:
    return round(st.st_mtime, 6)


def identity_of(st: os.stat_result) -> tuple[int, int]:
    """(device, inode), each folded into a signed 64-bit integer (a database bigint)."""
    return signed64(st.st_dev), signed64(st.st_ino)


def signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


Problem = Callable[[str, str], None]  # (relative path, message)


def walk_sorted(root: str, follow_symlinks: bool = False, on_problem: Problem | None = None) -> Iterator[Entry]:
    report = on_problem or (lambda path, msg: None)
    seen_dirs: set[tuple[int, int]] = set()
    if follow_symlinks:
        try:
            st = os.stat(root)
            seen_dirs.add((st.st_dev, st.st_ino))  # a link back to the root is a loop too
        except OSError:
            pass  # reported by _walk
    yield from _walk(root, "", follow_symlinks, report, seen_dirs)


def _walk(top: str, rel: str, follow: bool, report: Problem, seen: set[tuple[int, int]]) -> Iterator[Entry]:
    try:
        with os.scandir(top) as it:
            children = [(e.name + "/" if _is_dir(e, follow) else e.name, e) for e in it]
    except OSError as exc:
        report(rel or ".", f"cannot list folder: {exc.strerror or exc}")
        return
    children.sort(key=lambda c: c[0])
    for sort_name, entry in children:
        child_rel = rel + entry.name
        if sort_name.endswith("/"):
            if follow:
                st = _stat(entry, True, child_rel, report)
                if st is None or (st.st_dev, st.st_ino) in seen:
                    continue  # a symlink loop, reported by nothing worse than a skip
                seen.add((st.st_dev, st.st_ino))
            yield from _walk(entry.path, child_rel + "/", follow, report, seen)
            continue
        if entry.is_symlink() and not follow:
            if not os.path.exists(entry.path):
                report(child_rel, "broken symlink")
            continue
        st = _stat(entry, follow, child_rel, report)
        if st is not None and stat_mod.S_ISREG(st.st_mode):
            yield Entry(child_rel, st.st_size, mtime_of(st), *identity_of(st))


def _is_dir(entry: os.DirEntry, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _stat(entry: os.DirEntry, follow: bool, rel: str, report: Problem) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=follow)
    except FileNotFoundError:
        report(rel, "broken symlink" if entry.is_symlink() else "vanished during scan")
    except OSError as exc:
        report(rel, f"cannot stat: {exc.strerror or exc}")
    return None
