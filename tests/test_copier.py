"""The copier process (projects/copier.py): a part of small files copied into a local folder in a
child process, with the checks of an upload, answered in order; a child gone is an error, not a hang."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

from projects.copier import Copier, CopierError
from tests.conftest import wait_for, write_files


@pytest.fixture
def copier():
    c = Copier()
    yield c
    c.close()


def items(source, *names: str) -> list[tuple]:
    out = []
    for name in names:
        st = (source / name).stat()
        out.append((name, name, st.st_dev, st.st_ino))
    return out


def options(dest) -> dict:
    return {"path": str(dest), "prefix": "", "create": True}


def test_it_copies_each_file_and_says_what_became_of_it(copier, source, tmp_path):
    write_files(source, {"a.txt": "alpha", "sub/b.txt": "bravo!"})
    dest = tmp_path / "dest"

    copier.submit(options(dest), str(source), False, items(source, "a.txt", "sub/b.txt"))
    answer = copier.result()

    mtime = round((source / "a.txt").stat().st_mtime, 6)
    assert answer == [(5, 5, mtime, "", False), (6, 6, round((source / "sub/b.txt").stat().st_mtime, 6), "", False)]
    assert (dest / "a.txt").read_text() == "alpha" and (dest / "sub" / "b.txt").read_text() == "bravo!"
    assert os.listdir(dest / ".uploader-tmp") == []  # no temporary file left behind


def test_files_in_more_folders_than_it_holds_open_are_all_copied_and_no_descriptor_is_left_open(
        copier, source, tmp_path):
    names = [f"f{i:02d}/x.bin" for i in range(40)]  # more target folders than local._Held.KEEP
    write_files(source, {name: name for name in names})
    dest = tmp_path / "dest"
    copier.submit(options(dest), str(source), False, items(source, names[0]))
    copier.result()
    open_before = len(os.listdir(f"/proc/{copier.pid}/fd"))

    copier.submit(options(dest), str(source), False, items(source, *names[1:]))
    answer = copier.result()

    assert [a[0] for a in answer] == [len(name) for name in names[1:]]
    assert all((dest / name).read_text() == name for name in names)
    assert len(os.listdir(f"/proc/{copier.pid}/fd")) == open_before


def test_files_it_cannot_copy_are_refused_one_by_one_with_the_reason(copier, source, tmp_path):
    write_files(source, {"gone.txt": "x", "swapped.txt": "old", "ok.txt": "fine", "a/b.txt": "b"})
    dest = tmp_path / "dest"
    write_files(dest, {"a": "a file where the key needs a folder"})
    asked = items(source, "gone.txt", "swapped.txt", "ok.txt", "a/b.txt")
    (source / "gone.txt").unlink()
    write_files(source, {"swapped.new": "another file in its place"})
    os.replace(source / "swapped.new", source / "swapped.txt")  # both existed at once: another inode

    copier.submit(options(dest), str(source), False, asked)
    gone, swapped, ok, blocked = copier.result()

    assert (gone[0], gone[4]) == (None, True) and "file not found" in gone[3]
    assert (swapped[0], swapped[4]) == (None, True) and "replaced by another file" in swapped[3]
    assert ok[:2] == (4, 4)
    assert (blocked[0], blocked[4]) == (None, True) and "cannot write" in blocked[3]
    assert not (dest / "swapped.txt").exists()


def test_once_the_destination_is_full_the_files_left_are_not_tried(copier, source, tiny_disk):
    write_files(source, {"a.bin": "x" * 200_000, "b.txt": "", "c.txt": "c"})  # b and c would fit

    copier.submit(options(tiny_disk), str(source), False, items(source, "a.bin", "b.txt", "c.txt"))
    answer = copier.result()

    assert [a[0] for a in answer] == [None, None, None]
    assert answer[1] == answer[2] == answer[0]  # not permanent: the upload that meets it pauses the session
    _, _, _, error, permanent = answer[0]
    assert "destination is full" in error and "No space left on device" in error and permanent is False
    assert sorted(os.listdir(tiny_disk)) == [".uploader-tmp"] and os.listdir(tiny_disk / ".uploader-tmp") == []


def test_a_symlink_swapped_in_for_a_folder_is_not_followed(copier, source, tmp_path):
    write_files(source, {"sub/a.txt": "a"})
    asked = items(source, "sub/a.txt")
    outside = tmp_path / "outside"
    write_files(outside, {"a.txt": "secret"})
    (source / "sub" / "a.txt").unlink()
    (source / "sub").rmdir()
    (source / "sub").symlink_to(outside)

    copier.submit(options(tmp_path / "dest"), str(source), False, asked)
    [refused] = copier.result()

    written, _, _, error, permanent = refused
    assert written is None and permanent and "is now a symlink" in error
    assert not (tmp_path / "dest" / "sub" / "a.txt").exists()


def test_requests_sent_ahead_are_answered_in_order_without_blocking_either_side(copier, source, tmp_path):
    # Each request and answer is bigger than a pipe's buffer (64 KiB): sent back to back, before
    # any answer is read, they would block both processes if the child read only between parts.
    names = [f"{'n' * 100}-{i:04d}.txt" for i in range(1500)]
    write_files(source, {name: name[-8:] for name in names})
    dest = tmp_path / "dest"

    for part in (names[:750], names[750:]):
        copier.submit(options(dest), str(source), False, items(source, *part))
    first, second = copier.result(), copier.result()

    assert [written for written, *_ in first + second] == [8] * 1500
    assert (dest / names[-1]).read_text() == names[-1][-8:]
    assert copier.asked == 0


def test_a_copier_gone_is_an_error_for_the_parent_not_a_hang(copier, source, tmp_path):
    write_files(source, {"a.txt": "a"})
    os.kill(copier.pid, signal.SIGKILL)
    wait_for(lambda: copier._proc.poll() is not None, timeout=10, what="the copier to die")

    with pytest.raises(CopierError, match="the copier process ended"):
        copier.submit(options(tmp_path / "dest"), str(source), False, items(source, "a.txt"))
        copier.result()


def test_closing_its_input_ends_the_child(source, tmp_path):
    copier = Copier()
    copier.close()
    assert copier._proc.returncode == 0


def test_a_request_cut_off_by_a_dying_parent_ends_the_child_instead_of_leaving_it_waiting(source, tmp_path):
    copier = Copier()
    whole = pickle.dumps((options(tmp_path / "dest"), str(source), False, []))
    copier._proc.stdin.write(whole[: len(whole) // 2])  # the parent died halfway through a request
    copier._proc.stdin.close()

    wait_for(lambda: copier._proc.poll() is not None, timeout=30, what="the copier to end")
    copier.close()
    assert copier._proc.returncode == 0
