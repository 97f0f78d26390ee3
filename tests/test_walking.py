"""walk_sorted: global str order of relative paths, symlinks, and problems that are reported,
not fatal."""

from __future__ import annotations

import os
import shutil

import pytest

from projects.walking import Entry, walk_sorted
from tests.test_destination_local import run_unprivileged


def make_tree(root, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def paths(entries) -> list[str]:
    return [e.relative_path for e in entries]


class Problems:
    """An on_problem callback that remembers what it was told."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, path: str, message: str) -> None:
        self.seen.append((path, message))


# The folder "a" must sort as "a/": after "a-b/..." and "a.txt", before "a0" and "ab".
TRICKY = [
    "A",
    "a b",
    "a-b/x",
    "a.txt",
    "a/b-c",
    "a/b.d",
    "a/b/c",
    "a/b0",
    "a0",
    "ab",
    "z/y/x/w",
    "é/ß",
    "日本.txt",
]


def test_entries_come_in_the_sorted_order_of_their_relative_paths(tmp_path):
    make_tree(tmp_path, {rel: rel.encode() for rel in reversed(TRICKY)})

    entries = list(walk_sorted(str(tmp_path)))

    assert paths(entries) == sorted(TRICKY)
    assert paths(entries) != sorted(TRICKY, key=lambda p: p.split("/"))  # not a per-component sort
    assert all(e.size == len(e.relative_path.encode()) for e in entries)


def test_entries_carry_size_and_mtime(tmp_path):
    make_tree(tmp_path, {"d/f.bin": b"12345"})
    os.utime(tmp_path / "d/f.bin", (1_600_000_000, 1_600_000_000.5))

    assert list(walk_sorted(str(tmp_path))) == [Entry("d/f.bin", 5, 1_600_000_000.5)]


def test_empty_folders_yield_nothing(tmp_path):
    (tmp_path / "empty/deeper").mkdir(parents=True)

    assert list(walk_sorted(str(tmp_path))) == []


def test_broken_symlink_is_reported_and_the_walk_goes_on(tmp_path):
    make_tree(tmp_path, {"a.txt": b"a", "z.txt": b"z"})
    os.symlink(tmp_path / "nowhere", tmp_path / "m-dangling")
    problems = Problems()

    entries = list(walk_sorted(str(tmp_path), on_problem=problems))

    assert paths(entries) == ["a.txt", "z.txt"]
    assert problems.seen == [("m-dangling", "broken symlink")]


def test_broken_symlink_is_reported_when_following_symlinks_too(tmp_path):
    make_tree(tmp_path, {"a.txt": b"a"})
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    problems = Problems()

    entries = list(walk_sorted(str(tmp_path), follow_symlinks=True, on_problem=problems))

    assert paths(entries) == ["a.txt"]
    assert problems.seen == [("dangling", "broken symlink")]


def test_problems_without_a_handler_are_not_fatal(tmp_path):
    make_tree(tmp_path, {"a.txt": b"a"})
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")

    assert paths(walk_sorted(str(tmp_path))) == ["a.txt"]


@pytest.fixture
def linked_tree(tmp_path):
    outside = tmp_path / "outside"
    make_tree(outside, {"o1.txt": b"o1", "sub/o2.txt": b"o2"})
    root = tmp_path / "root"
    make_tree(root, {"real.txt": b"real"})
    os.symlink(root / "real.txt", root / "file-link.txt")
    os.symlink(outside, root / "dir-link")
    return root


def test_symlinks_are_not_followed_by_default(linked_tree):
    problems = Problems()

    assert paths(walk_sorted(str(linked_tree), on_problem=problems)) == ["real.txt"]
    assert problems.seen == []


def test_symlinks_are_followed_when_asked(linked_tree):
    entries = list(walk_sorted(str(linked_tree), follow_symlinks=True))

    assert paths(entries) == ["dir-link/o1.txt", "dir-link/sub/o2.txt", "file-link.txt", "real.txt"]
    assert [e.size for e in entries] == [2, 2, 4, 4]


def test_symlink_loops_end_and_each_folder_is_walked_once(tmp_path):
    make_tree(tmp_path, {"top.txt": b"t", "a/in-a.txt": b"a", "a/b/in-b.txt": b"b"})
    os.symlink("..", tmp_path / "a/b/up")  # -> a
    os.symlink(".", tmp_path / "a/self")  # -> a
    os.symlink(str(tmp_path), tmp_path / "a/b/root")  # -> the root of the walk
    problems = Problems()

    entries = list(walk_sorted(str(tmp_path), follow_symlinks=True, on_problem=problems))

    assert paths(entries) == ["a/b/in-b.txt", "a/in-a.txt", "top.txt"]


def test_a_folder_that_vanishes_during_the_walk_is_reported(tmp_path):
    make_tree(tmp_path, {"a.txt": b"a", "b/x.txt": b"x", "c.txt": b"c"})
    problems = Problems()

    walk = walk_sorted(str(tmp_path), on_problem=problems)
    first = next(walk)  # the root is listed; "b" is entered only after "a.txt" is handed out
    shutil.rmtree(tmp_path / "b")
    rest = list(walk)

    assert [first.relative_path] + paths(rest) == ["a.txt", "c.txt"]
    assert len(problems.seen) == 1
    assert problems.seen[0][0] == "b/"
    assert problems.seen[0][1].startswith("cannot list folder")


def test_a_file_that_vanishes_during_the_walk_is_reported(tmp_path):
    make_tree(tmp_path, {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    problems = Problems()

    walk = walk_sorted(str(tmp_path), on_problem=problems)
    first = next(walk)
    (tmp_path / "b.txt").unlink()
    rest = list(walk)

    assert [first.relative_path] + paths(rest) == ["a.txt", "c.txt"]
    assert problems.seen == [("b.txt", "vanished during scan")]


def test_an_unreadable_folder_is_reported_and_the_rest_is_walked(tmp_path):
    import tempfile

    root = tempfile.mkdtemp(prefix="uploader-walk-")
    try:
        os.chmod(root, 0o755)
        for rel in ("a.txt", "locked/secret.txt", "z.txt"):
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("x")
            os.chmod(path, 0o644)
        os.chmod(os.path.join(root, "locked"), 0o700)

        def walk():
            problems = Problems()
            return paths(walk_sorted(root, on_problem=problems)), problems.seen

        outcome, value = run_unprivileged(walk)

        assert outcome == "ok", value
        found, problems = value
        assert found == ["a.txt", "z.txt"]
        assert problems == [("locked/", "cannot list folder: Permission denied")]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_missing_root_is_reported_not_raised(tmp_path):
    problems = Problems()

    assert list(walk_sorted(str(tmp_path / "absent"), on_problem=problems)) == []
    assert problems.seen == [(".", "cannot list folder: No such file or directory")]
