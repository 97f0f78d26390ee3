"""LocalDestination: atomic writes, keys kept inside the folder, unwritable folders, `create`."""

from __future__ import annotations

import os
import pickle
import select
import shutil
import stat
import tempfile

import pytest

from projects.destinations import ConfigError, DestinationError, RemoteObject, build_destination
from projects.destinations.local import LocalDestination
from projects.destinations.base import TEMP_FOLDER, temp_prefix

NOBODY = 65534


def run_unprivileged(fn, *args):
    """Run fn(*args) as an unprivileged user and return ("ok", value) or ("raised", exception).

    The tests run as root, for whom every folder is writable; a forked child that drops to
    `nobody` meets permissions the way a service account does. Not root: run it here."""
    if os.geteuid() != 0:
        try:
            return "ok", fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            return "raised", exc
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = ("ok", fn(*args))
            except Exception as exc:  # noqa: BLE001
                result = ("raised", exc)
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(result, out)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        ready, _, _ = select.select([inp], [], [], 30)
        assert ready, "unprivileged child did not answer within 30 s"
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "unprivileged child failed"
    return pickle.loads(data)


@pytest.fixture
def open_tmp():
    """A temporary folder that `nobody` can reach (pytest's tmp_path sits under a 0700 folder)."""
    path = tempfile.mkdtemp(prefix="uploader-local-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_source(tmp_path):
    def make(content: bytes, name: str = "src.bin") -> str:
        path = tmp_path / "source" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, 0o644)
        return str(path)

    return make


def all_files(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    )


# -- writing -----------------------------------------------------------------------------
def test_upload_leaves_only_the_target_file(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "out")})

    dest.upload(make_source(b"content"), "deep/er/file.txt")
    dest.upload(make_source(b"content, again"), "deep/er/file.txt")

    assert all_files(tmp_path / "out") == ["deep/er/file.txt"]
    assert (tmp_path / "out/deep/er/file.txt").read_bytes() == b"content, again"


def test_overwrite_replaces_the_file_instead_of_rewriting_it_in_place(tmp_path, make_source):
    # A reader holding the old file (here: a hard link to it) keeps seeing the whole old
    # content: the new content was written elsewhere and renamed over the name.
    dest = LocalDestination({"path": str(tmp_path / "out")})
    dest.upload(make_source(b"old content"), "doc.txt")
    os.link(tmp_path / "out/doc.txt", tmp_path / "reader-view")

    dest.upload(make_source(b"new"), "doc.txt")

    assert (tmp_path / "out/doc.txt").read_bytes() == b"new"
    assert (tmp_path / "reader-view").read_bytes() == b"old content"


def test_failed_write_leaves_no_temporary_file_and_is_permanent(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "out")})
    (tmp_path / "out/taken").mkdir(parents=True)
    (tmp_path / "out/taken/inside.txt").write_text("keep me")

    with pytest.raises(DestinationError) as info:
        dest.upload(make_source(b"data"), "taken")

    assert info.value.permanent is True
    assert all_files(tmp_path / "out") == ["taken/inside.txt"]
    assert (tmp_path / "out/taken/inside.txt").read_text() == "keep me"


def test_a_full_destination_is_a_full_error_that_leaves_nothing_behind(tiny_disk, make_source):
    dest = LocalDestination({"path": str(tiny_disk)})
    dest.upload(make_source(b"small"), "fits.txt")

    with pytest.raises(DestinationError) as info:
        dest.upload(make_source(b"x" * 200_000, "big.bin"), "big.bin")

    assert info.value.full and not info.value.permanent
    assert "destination is full" in info.value.message and "No space left on device" in info.value.message
    assert all_files(tiny_disk) == ["fits.txt"]  # no half-written temporary file


def test_a_file_where_a_folder_of_the_key_should_be_is_permanent(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "out")})
    dest.upload(make_source(b"i am a file"), "photos")

    for key in ("photos/a.jpg", "photos/2024/a.jpg"):
        with pytest.raises(DestinationError) as info:
            dest.upload(make_source(b"jpeg"), key)
        assert info.value.permanent is True, key
    assert all_files(tmp_path / "out") == ["photos"]


def test_listing_hides_files_still_being_written(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "out")})
    dest.upload(make_source(b"done"), "a/done.txt")
    (tmp_path / "out/a/next.txt.uploading-0123abcd").write_bytes(b"half")
    (tmp_path / "out" / TEMP_FOLDER / (temp_prefix("a/next.txt") + "1-2")).write_bytes(b"half")

    assert list(dest.list_existing()) == [RemoteObject("a/done.txt", 4)]


def test_a_name_of_250_bytes_uploads_under_a_short_temporary_name(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "out")})
    key = "deep/" + "n" * 246 + ".wav"  # 250 bytes: the name plus ".uploading-..." would not fit

    dest.upload(make_source(b"long name"), key)

    assert (tmp_path / "out" / key).read_bytes() == b"long name"
    assert list((tmp_path / "out" / TEMP_FOLDER).iterdir()) == []


def test_a_name_over_the_limit_is_a_permanent_error_that_says_so(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "out")})

    with pytest.raises(DestinationError, match="file name too long for the destination") as info:
        dest.upload(make_source(b"x"), "x" * 256 + ".wav")
    assert info.value.permanent
    assert list((tmp_path / "out" / TEMP_FOLDER).iterdir()) == []


def test_remove_unfinished_removes_the_temporary_files_of_those_keys_only(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "out")})
    dest.upload(make_source(b"done"), "a/done.txt")
    folder = tmp_path / "out" / TEMP_FOLDER
    (folder / (temp_prefix("a/cut.txt") + "1-2")).write_bytes(b"")
    (folder / (temp_prefix("a/other.txt") + "1-3")).write_bytes(b"in flight")

    assert dest.remove_unfinished(["a/cut.txt", "never/started.txt"]) == 1

    assert [p.name for p in folder.iterdir()] == [temp_prefix("a/other.txt") + "1-3"]


# -- keys and prefix -----------------------------------------------------------------------
@pytest.mark.parametrize("key", ["../outside.txt", "a/../../outside.txt", "/tmp/outside.txt", ".."])
def test_keys_escaping_the_folder_are_refused(tmp_path, make_source, key):
    dest = LocalDestination({"path": str(tmp_path / "out"), "prefix": "p"})
    src = make_source(b"x")
    before = all_files(tmp_path)

    with pytest.raises(DestinationError) as info:
        dest.upload(src, key)

    assert info.value.permanent is True
    assert "escapes" in info.value.message
    assert all_files(tmp_path) == before


def test_prefix_is_a_sub_folder_and_listing_stays_inside_it(tmp_path, make_source):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/beside.txt").write_text("not ours")
    dest = LocalDestination({"path": str(tmp_path / "out"), "prefix": "/sub//dir/"})

    dest.upload(make_source(b"abc"), "k/v.txt")

    assert (tmp_path / "out/sub/dir/k/v.txt").read_bytes() == b"abc"
    assert list(dest.list_existing()) == [RemoteObject("k/v.txt", 3)]
    assert dest.stat("k/v.txt") == RemoteObject("k/v.txt", 3)


# -- the folder -------------------------------------------------------------------------------
def test_with_create_a_missing_folder_passes_check_and_the_first_upload_makes_it(tmp_path, make_source):
    dest = LocalDestination({"path": str(tmp_path / "new/deeper")})

    dest.check()
    assert not (tmp_path / "new").exists()  # checking changes nothing (dry runs leave no folder)
    assert list(dest.list_existing()) == []

    dest.upload(make_source(b"abc"), "f.txt")
    assert (tmp_path / "new/deeper/f.txt").read_bytes() == b"abc"


def test_without_create_a_missing_folder_fails_check_permanently(tmp_path):
    dest = LocalDestination({"path": str(tmp_path / "absent"), "create": False})

    with pytest.raises(DestinationError) as info:
        dest.check()

    assert info.value.permanent is True
    assert "not found" in info.value.message
    assert not (tmp_path / "absent").exists()
    assert list(dest.list_existing()) == []


def test_a_folder_path_that_is_a_file_fails_check_permanently(tmp_path):
    (tmp_path / "plain-file").write_text("")
    dest = LocalDestination({"path": str(tmp_path / "plain-file/sub")})

    with pytest.raises(DestinationError) as info:
        dest.check()

    assert info.value.permanent is True
    assert "cannot create destination folder" in info.value.message


def test_unwritable_folder_fails_check_permanently(open_tmp):
    target = os.path.join(open_tmp, "readonly")
    os.mkdir(target, 0o555)
    os.chmod(target, 0o555)

    outcome, exc = run_unprivileged(lambda: LocalDestination({"path": target}).check())

    assert outcome == "raised"
    assert isinstance(exc, DestinationError)
    assert exc.permanent is True
    assert "not writable" in exc.message


def test_a_missing_folder_under_an_unwritable_one_fails_check_permanently(open_tmp):
    parent = os.path.join(open_tmp, "readonly")
    os.mkdir(parent)
    os.chmod(parent, 0o555)

    outcome, exc = run_unprivileged(lambda: LocalDestination({"path": os.path.join(parent, "a/b")}).check())

    assert outcome == "raised"
    assert isinstance(exc, DestinationError)
    assert exc.permanent is True
    assert "not writable" in exc.message


def test_upload_into_an_unwritable_folder_is_permanent_and_leaves_nothing(open_tmp):
    target = os.path.join(open_tmp, "readonly")
    os.mkdir(target)
    src = os.path.join(open_tmp, "src.bin")
    with open(src, "wb") as f:
        f.write(b"data")
    os.chmod(src, 0o644)
    os.chmod(target, 0o555)

    outcome, exc = run_unprivileged(lambda: LocalDestination({"path": target}).upload(src, "sub/file.bin"))

    assert outcome == "raised"
    assert isinstance(exc, DestinationError)
    assert exc.permanent is True
    assert os.listdir(target) == []


def test_unreadable_source_file_is_permanent(open_tmp):
    src = os.path.join(open_tmp, "secret.bin")
    with open(src, "wb") as f:
        f.write(b"data")
    os.chmod(src, 0o600)
    out = os.path.join(open_tmp, "out")
    os.mkdir(out)
    os.chmod(out, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)

    outcome, exc = run_unprivileged(lambda: LocalDestination({"path": out}).upload(src, "s.bin"))

    assert outcome == "raised"
    assert isinstance(exc, DestinationError)
    assert exc.permanent is True
    assert "permission denied" in exc.message


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "destination.path: required"),
        ({"path": "/x", "create": "yes"}, "destination.create: expected boolean"),
        ({"path": "/x", "mode": 644}, "destination.mode: unknown option"),
        ({"path": 5}, "destination.path: expected string"),
    ],
)
def test_option_errors_name_the_option(options, named):
    with pytest.raises(ConfigError) as info:
        build_destination("local", options)

    assert named in str(info.value)
