"""The scanner: both walkers agree, filters and exclude patterns, progress, problems."""

from __future__ import annotations

import os

import pytest

from projects.scanning import ScanFilter, glob_to_regex, scan
from tests.conftest import write_files

TREE = {
    "a.wav": "1", "a-b/x.wav": "22", "a/b.wav": "333", "ab.WAV": "4", "a.txt": "5",
    "deep/er/still/file.jpg": "66", "tmp/skip.wav": "7", "x/tmp/skip.wav": "8", "café.wav": "9",
    "name with space #?%&+.wav": "10", "empty.wav": "",
}


@pytest.mark.parametrize("method", ["find", "scandir"])
def test_both_walkers_yield_every_file_in_key_order(tmp_path, method):
    write_files(tmp_path, TREE)
    entries = list(scan(str(tmp_path), ScanFilter(), method=method, sort=True))
    paths = [e.relative_path for e in entries]
    assert paths == sorted(TREE)
    sizes = {e.relative_path: e.size for e in entries}
    assert sizes["name with space #?%&+.wav"] == 2 and sizes["empty.wav"] == 0


def test_find_and_scandir_agree_on_size_and_mtime(tmp_path):
    write_files(tmp_path, TREE)
    by_find = list(scan(str(tmp_path), ScanFilter(), method="find"))
    by_scandir = list(scan(str(tmp_path), ScanFilter(), method="scandir"))
    assert by_find == by_scandir


@pytest.mark.parametrize("method", ["find", "scandir"])
def test_entries_carry_the_files_device_and_inode(tmp_path, method):
    write_files(tmp_path, {"a.wav": "1", "d/b.wav": "2"})
    entries = list(scan(str(tmp_path), ScanFilter(), method=method))
    for entry in entries:
        st = os.stat(tmp_path / entry.relative_path)
        assert (entry.device, entry.inode) == (st.st_dev, st.st_ino)


def test_the_filter_names_the_rule_that_refuses_a_path():
    flt = ScanFilter(extensions=[".wav"], exclude=["tmp/", "*.bak.wav"])
    assert flt.refusal("a.txt") == "excluded by the project's extensions: .txt"
    assert flt.refusal("README") == "excluded by the project's extensions: (no extension)"
    assert flt.refusal("tmp/a.wav") == "excluded by pattern tmp/"
    assert flt.refusal("x/a.bak.wav") == "excluded by pattern *.bak.wav"
    assert flt.refusal("x/a.wav") == ""


def test_extensions_are_case_insensitive_and_excludes_prune_folders(tmp_path):
    write_files(tmp_path, TREE)
    flt = ScanFilter(extensions=[".wav"], exclude=["**/tmp/**"])
    paths = [e.relative_path for e in scan(str(tmp_path), flt)]
    assert "ab.WAV" in paths and "a.txt" not in paths and "deep/er/still/file.jpg" not in paths
    assert not [p for p in paths if "tmp/" in p]


@pytest.mark.parametrize(
    "pattern, path, matches",
    [
        ("**/tmp/**", "tmp/a.wav", True),
        ("**/tmp/**", "x/y/tmp/a.wav", True),
        ("**/tmp/**", "tmpx/a.wav", False),
        ("*.bak", "deep/file.bak", True),  # no slash: any depth, like .gitignore
        ("raw/*.wav", "raw/a.wav", True),
        ("raw/*.wav", "raw/sub/a.wav", False),
        ("raw/", "raw/sub/a.wav", True),
        ("file?.wav", "file1.wav", True),
        ("file?.wav", "file10.wav", False),
    ],
)
def test_exclude_glob_semantics(pattern, path, matches):
    import re

    assert bool(re.fullmatch(glob_to_regex(pattern), path)) is matches


@pytest.mark.parametrize("method", ["find", "scandir"])
def test_broken_symlinks_are_reported_and_links_not_followed(tmp_path, method):
    write_files(tmp_path / "src", {"real.wav": "r"})
    write_files(tmp_path / "elsewhere", {"outside.wav": "o"})
    os.symlink(tmp_path / "src" / "nope.wav", tmp_path / "src" / "broken.wav")
    os.symlink(tmp_path / "elsewhere", tmp_path / "src" / "linked-dir")
    os.symlink(tmp_path / "elsewhere" / "outside.wav", tmp_path / "src" / "linked.wav")
    problems: list[tuple[str, str]] = []

    paths = [e.relative_path for e in scan(str(tmp_path / "src"), ScanFilter(), method=method,
                                           on_problem=lambda p, m: problems.append((p, m)))]

    assert paths == ["real.wav"]
    assert problems == [("broken.wav", "broken symlink")]


def test_follow_symlinks_uses_the_portable_walker_and_survives_loops(tmp_path):
    write_files(tmp_path / "src", {"d/real.wav": "r"})
    os.symlink(tmp_path / "src", tmp_path / "src" / "d" / "loop")
    paths = [e.relative_path for e in scan(str(tmp_path / "src"), ScanFilter(), follow_symlinks=True)]
    assert paths == ["d/real.wav"]


def test_progress_is_reported_every_n_files_and_at_the_end(tmp_path):
    write_files(tmp_path, {f"{i}.wav": "" for i in range(25)})
    seen: list[int] = []
    list(scan(str(tmp_path), ScanFilter(), on_progress=seen.append, progress_every=10))
    assert seen == [10, 20, 25]


def test_unsorted_find_yields_the_same_set(tmp_path):
    write_files(tmp_path, TREE)
    unsorted = {e.relative_path for e in scan(str(tmp_path), ScanFilter(), method="find", sort=False)}
    assert unsorted == set(TREE)


def test_a_root_of_many_entries_is_walked_in_slices_in_the_same_key_order_as_scandir(tmp_path):
    # More top-level entries than slices: files and folders whose names sort around each other
    # ("a", "a.b", "a-b/", "a0", "ab/"), names find could take for options or operators, and the rest.
    tree = {"a": "1", "a.b": "2", "a-b/x": "3", "a0": "4", "ab/c/d": "5", "-name": "6", "(": "7", "!/x": "8",
            "-type/d": "9", "sp ace/f": "10", **{f"d{i:02d}/f{j}": str(j) for i in range(40) for j in range(3)}}
    write_files(tmp_path, tree)

    by_find = list(scan(str(tmp_path), ScanFilter(), method="find"))

    assert [e.relative_path for e in by_find] == sorted(tree)
    assert by_find == list(scan(str(tmp_path), ScanFilter(), method="scandir"))


@pytest.mark.parametrize("method", ["find", "scandir"])
@pytest.mark.parametrize("tree", [{"only/one.wav": "1"}, {"a.wav": "1", "b/c.wav": "2", "d.wav": "3"}],
                         ids=["one entry: one find", "several: in slices"])
def test_a_source_folder_that_is_a_symlink_to_a_folder_is_walked(tmp_path, method, tree):
    write_files(tmp_path / "real", tree)
    (tmp_path / "link").symlink_to(tmp_path / "real")

    entries = list(scan(str(tmp_path / "link"), ScanFilter(), method=method))

    assert [e.relative_path for e in entries] == sorted(tree)
