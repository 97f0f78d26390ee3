"""Stream a source tree: filter by extension and exclude patterns, never hold all paths.

Two walkers yield the same entries. `find` (GNU findutils) is the fast native path on Linux;
`os.scandir` is the portable one. Both can yield in key order (see projects/walking.py),
which the planner needs to merge the scan with a remote listing; `find` then goes through
`sort`, which spills to disk rather than memory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from itertools import islice
from typing import BinaryIO
from dataclasses import dataclass, field
from functools import cached_property

from projects.walking import UNREADABLE_FOLDER, Entry, Problem, signed64, walk_sorted


@dataclass
class ScanFilter:
    extensions: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @cached_property
    def _ext(self) -> frozenset[str]:
        return frozenset(e.lower() for e in self.extensions)

    @cached_property
    def _exclude_re(self) -> re.Pattern[str] | None:
        if not self.exclude:
            return None
        return re.compile("|".join(f"(?:{glob_to_regex(p)})" for p in self.exclude))

    def accepts(self, relative_path: str) -> bool:
        if self._ext and os.path.splitext(relative_path)[1].lower() not in self._ext:
            return False
        return not (self._exclude_re and self._exclude_re.fullmatch(relative_path))

    def refusal(self, relative_path: str) -> str:
        """Why accepts() refuses a path, naming the rule; "" when it accepts it."""
        ext = os.path.splitext(relative_path)[1].lower()
        if self._ext and ext not in self._ext:
            return f"excluded by the project's extensions: {ext or '(no extension)'}"
        for pattern in self.exclude:
            if re.fullmatch(glob_to_regex(pattern), relative_path):
                return f"excluded by pattern {pattern}"
        return ""


def glob_to_regex(pattern: str) -> str:
    """Glob with `**` over the relative path. A pattern without "/" matches a name at any depth
    (as in .gitignore); "**/" matches zero or more folders; "*" and "?" never cross "/"."""
    if "/" not in pattern.rstrip("/"):
        pattern = "**/" + pattern
    if pattern.endswith("/"):
        pattern += "**"
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def find_available() -> bool:
    return os.name == "posix" and shutil.which("find") is not None and _is_gnu_find()


def _is_gnu_find() -> bool:
    try:
        out = subprocess.run(["find", "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GNU findutils" in out


def scan(
    root: str,
    flt: ScanFilter,
    *,
    method: str = "auto",
    sort: bool = True,
    follow_symlinks: bool = False,
    on_problem: Problem | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10000,
) -> Iterator[Entry]:
    """Yield the accepted files under root; `sort` puts them in key order."""
    report = on_problem or (lambda path, msg: None)
    if method == "auto":
        method = "find" if find_available() and not follow_symlinks else "scandir"
    if method == "find":
        entries = find_walk(root, sort=sort, on_problem=report)
    else:
        entries = walk_sorted(root, follow_symlinks=follow_symlinks, on_problem=report)
    seen = 0
    for entry in entries:
        seen += 1
        if on_progress and seen % progress_every == 0:
            on_progress(seen)
        if flt.accepts(entry.relative_path):
            yield entry
    if on_progress:
        on_progress(seen)


# Every entry but folders (FIFOs, sockets and devices are reported, not read).
# %D, %i: device and inode; %y: type; %Y: type of the link target ("N" when it does not exist,
# "L" for a loop); tab-separated, NUL-ended.
# The path comes first so that sorting whole records sorts by path (tab sorts below any name char).
_FIND_FORMAT = "%P\t%s\t%T@\t%D\t%i\t%y%Y\\0"


def find_walk(root: str, sort: bool = True, on_problem: Problem | None = None) -> Iterator[Entry]:
    report = on_problem or (lambda path, msg: None)
    errors = tempfile.TemporaryFile()  # a file, not a pipe: thousands of errors must not block find
    slices = _slices(root) if sort else None
    try:
        if slices is None:
            # "root/": a root that is a symlink to a folder is walked, as by scandir and by the slices.
            procs = _find(["find", os.path.join(root, ""), "-mindepth", "1"], _FIND_FORMAT, None, sort, errors)
            try:
                yield from _parse_find(procs[-1].stdout, report)
            finally:
                _stop(procs)
        else:
            yield from _parse_slices(root, slices, errors, report)
    finally:
        _report_find_errors(errors, root, report, printed=None if slices is None else ".")


# A sorted walk of a root with several entries runs one `find | sort` per slice of them (in key
# order), a few slices ahead of the parser: the parse of one slice overlaps the walk of the next.
# One `find | sort` over the whole tree gave the parser nothing until the whole tree was walked and
# sorted (0.9 s of a 200,000-file no-op re-sync). Each slice's records sort among themselves only:
# a slice's top-level names all sort before the next slice's, so the slices come out in key order.
SLICES = 16
SLICES_AHEAD = 2
MAX_TOP_LEVEL = 4096  # more entries than this in the root (names on one command line): one find


def _slices(root: str) -> list[list[str]] | None:
    """The root's entries in slices, each in key order as sort orders records ("./" + name, the
    path find prints relative to the root), or None for a single find."""
    try:
        with os.scandir(root) as it:
            keys = [(os.fsencode(e.name) + (b"/" if e.is_dir(follow_symlinks=False) else b"\t"), e.name) for e in it]
    except OSError:
        return None  # the single find reports what stops the walk
    if not 2 <= len(keys) <= MAX_TOP_LEVEL:
        return None
    names = ["./" + name for _, name in sorted(keys)]
    size = -(-len(names) // SLICES)
    return [names[i:i + size] for i in range(0, len(names), size)]


def _parse_slices(root: str, slices: list[list[str]], errors: BinaryIO, report: Problem) -> Iterator[Entry]:
    fmt = _FIND_FORMAT.replace("%P", "%p")  # "./name/…" from the root: the parser drops the "./"
    todo = iter(slices)
    running = [_find(["find", *names], fmt, root, True, errors) for names in islice(todo, SLICES_AHEAD)]
    try:
        while running:
            procs = running[0]
            if (names := next(todo, None)) is not None:
                running.append(_find(["find", *names], fmt, root, True, errors))
            yield from _parse_find(procs[-1].stdout, report, skip=2)
            _stop(running.pop(0))
    finally:
        for procs in running:
            _stop(procs)


def _find(start: list[str], fmt: str, cwd: str | None, sort: bool, errors: BinaryIO) -> list[subprocess.Popen]:
    """find (and sort) over `start`, running; the last process's stdout gives the records."""
    env = {**os.environ, "LC_ALL": "C"}
    find = subprocess.Popen([*start, "!", "-type", "d", "-printf", fmt], stdout=subprocess.PIPE, stderr=errors,
                            cwd=cwd, env=env)
    if not sort:
        return [find]
    sorter = subprocess.Popen(["sort", "-z", "-S", "64M"], stdin=find.stdout, stdout=subprocess.PIPE, env=env)
    find.stdout.close()  # so find gets SIGPIPE if sort dies
    return [find, sorter]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stdout:
            p.stdout.close()


def _parse_find(stream, report: Problem, skip: int = 0) -> Iterator[Entry]:
    """Entries of find's records; `skip`: bytes of each path before the relative path."""
    buf = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        buf += chunk
        records = buf.split(b"\0")
        buf = records.pop()
        # Regular files, nearly every record, are parsed right here: a call per record was a
        # third of a no-op re-sync's scan.
        for rec in records:
            path_b, size, mtime, device, inode, kinds = rec.rsplit(b"\t", 5)
            if kinds == b"ff":
                dev, ino = int(device), int(inode)
                yield Entry(path_b[skip:].decode(_FS_ENCODING, _FS_ERRORS), int(size), round(float(mtime), 6),
                            dev - _2_64 if dev >= _2_63 else dev, ino - _2_64 if ino >= _2_63 else ino)
            elif (entry := _parse_record(rec[skip:], report)) is not None:
                yield entry


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsdecode's
_2_63, _2_64 = 1 << 63, 1 << 64  # signed64(), inline


def _parse_record(rec: bytes, report: Problem) -> Entry | None:
    path_b, size, mtime, device, inode, kinds = rec.rsplit(b"\t", 5)
    path = os.fsdecode(path_b)
    if kinds[:1] == b"f":
        return Entry(path, int(size), round(float(mtime), 6), signed64(int(device)), signed64(int(inode)))
    if kinds[:1] == b"l":
        if kinds[1:2] == b"N":
            report(path, "broken symlink")
        elif kinds[1:2] == b"L":
            report(path, "symlink loop")
        return None  # symlinks are not followed on this path
    report(path, "skipped: " + _FIND_TYPES.get(kinds[:1], "not a regular file"))
    return None


_FIND_TYPES = {b"p": "a FIFO (named pipe)", b"s": "a socket", b"b": "a block device", b"c": "a character device"}
_FIND_ERROR = re.compile(rb"^find: '(.*)': ([^:]+)$")


def _report_find_errors(errors: BinaryIO, root: str, report: Problem, printed: str | None = None) -> None:
    """Every line find wrote to stderr is a problem of the scan, with its path. `printed`: the
    folder find's paths start from (None: the root itself; ".": run from the root)."""
    errors.seek(0)
    prefix = os.fsencode((printed or root).rstrip("/")) + b"/"
    for line in errors.read().splitlines():
        m = _FIND_ERROR.match(line)
        if m is None:
            report(".", "find: " + os.fsdecode(line))
            continue
        printed_path, reason = m.group(1), m.group(2).decode(errors="replace")
        rel = os.fsdecode(printed_path[len(prefix):] if printed_path.startswith(prefix) else printed_path) or "."
        full = os.path.join(root, rel)
        if reason == "No such file or directory":
            report(rel, "vanished during scan")
        elif os.path.isdir(full) and not os.path.islink(full):
            report(rel + "/", f"{UNREADABLE_FOLDER}: {reason}")
        else:
            report(rel, f"cannot stat: {reason}")
    errors.close()
