"""The behaviours every destination kind must have, run against a real server of each kind.

A kind joins by adding its name to KINDS, a `<kind>_destination` fixture (a fresh, empty
destination), and a READ_BACK entry that fetches an uploaded key's bytes without our code.
"""

from __future__ import annotations

import os
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from projects.destinations import Destination, DestinationError, RemoteObject, build_destination

KINDS = ["s3", "local", "sftp"]


def _read_s3(dest: Destination, key: str) -> bytes:
    client = boto3.client("s3", endpoint_url=dest.options["endpoint_url"], region_name="us-east-1")
    try:
        prefix = dest.options["prefix"].strip("/")
        obj = client.get_object(Bucket=dest.options["bucket"], Key=f"{prefix}/{key}" if prefix else key)
        return obj["Body"].read()
    finally:
        client.close()


def _read_local(dest: Destination, key: str) -> bytes:
    with open(os.path.join(dest.options["path"], dest.options["prefix"], key), "rb") as f:
        return f.read()


def _read_sftp(dest: Destination, key: str) -> bytes:
    # The test sshd serves this machine's file system, so the remote folder is a local path.
    with open(os.path.join(dest.options["remote_dir"], key), "rb") as f:
        return f.read()


READ_BACK = {"s3": _read_s3, "local": _read_local, "sftp": _read_sftp}

# Sorted by str (= UTF-8 byte) order they must come back in: a folder sorts as "name/", so
# "a-b/x" and "a.txt" come before "a/...", and "a/b/c" between "a/b.d" and "a/b0".
TRICKY_KEYS = [
    "Z",
    "a b.txt",
    "a#1",
    "a%20",
    "a&b",
    "a+b",
    "a-b/x",
    "a.txt",
    "a/b-c",
    "a/b.d",
    "a/b/c",
    "a/b0",
    "a?b=c",
    "ab",
    "z/ü/ß.txt",
    "é.txt",
    "日本/語.txt",
]


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def dest(kind, request, tmp_path) -> Destination:
    destination = request.getfixturevalue(f"{kind}_destination")
    destination.bind(project="contract", session_id=1, source_dir=str(tmp_path))
    return destination


@pytest.fixture
def make_file(tmp_path):
    counter = iter(range(1_000_000))

    def make(content: bytes) -> str:
        path = tmp_path / "source" / f"file-{next(counter)}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        return str(path)

    return make


def read_back(kind: str, dest: Destination, key: str) -> bytes:
    return READ_BACK[kind](dest, key)


def test_check_passes_on_a_ready_destination(dest):
    dest.check()
    assert dest.health() == (True, "ok")


def test_uploaded_file_is_listed_with_its_key_and_size(kind, dest, make_file):
    result = dest.upload(make_file(b"hello world"), "folder/hello.txt")

    assert result.size == 11
    assert list(dest.list_existing()) == [RemoteObject("folder/hello.txt", 11)]
    assert read_back(kind, dest, "folder/hello.txt") == b"hello world"


def test_listing_of_an_empty_destination_is_empty(dest):
    dest.check()
    assert list(dest.list_existing()) == []


def test_listing_is_sorted_by_key_across_folders_and_odd_names(kind, dest, make_file):
    shuffled = sorted(TRICKY_KEYS, key=lambda k: (len(k), k[::-1]))
    for i, key in enumerate(shuffled):
        dest.upload(make_file(key.encode() * (i + 1)), key)

    listed = list(dest.list_existing())

    assert [o.key for o in listed] == sorted(TRICKY_KEYS)
    sizes = {key: len(key.encode()) * (i + 1) for i, key in enumerate(shuffled)}
    assert {o.key: o.size for o in listed} == sizes
    assert read_back(kind, dest, "a?b=c") == b"a?b=c" * (shuffled.index("a?b=c") + 1)


def test_keys_from_decomposed_unicode_names_are_stored_composed(kind, dest, make_file):
    decomposed = unicodedata.normalize("NFD", "café/é.txt")
    assert decomposed != "café/é.txt"

    dest.upload(make_file(b"x"), dest.key_for(decomposed))

    assert [o.key for o in dest.list_existing()] == ["café/é.txt"]
    assert read_back(kind, dest, "café/é.txt") == b"x"


def test_stat_gives_the_size_of_a_present_key_and_none_for_a_missing_one(dest, make_file):
    dest.upload(make_file(b"12345"), "dir/five.bin")

    assert dest.stat("dir/five.bin") == RemoteObject("dir/five.bin", 5)
    assert dest.stat("dir/missing.bin") is None
    assert dest.stat("nowhere/at/all.bin") is None


def test_empty_file_uploads_as_zero_bytes(kind, dest, make_file):
    result = dest.upload(make_file(b""), "empty")

    assert result.size == 0
    assert list(dest.list_existing()) == [RemoteObject("empty", 0)]
    assert dest.stat("empty") == RemoteObject("empty", 0)
    assert read_back(kind, dest, "empty") == b""


def test_upload_overwrites_with_new_content_and_size(kind, dest, make_file):
    dest.upload(make_file(b"first version, longer"), "doc.txt")
    result = dest.upload(make_file(b"second"), "doc.txt")

    assert result.size == 6
    assert list(dest.list_existing()) == [RemoteObject("doc.txt", 6)]
    assert read_back(kind, dest, "doc.txt") == b"second"


def test_missing_local_file_is_a_permanent_file_not_found(dest, tmp_path):
    missing = str(tmp_path / "gone.bin")

    with pytest.raises(DestinationError) as info:
        dest.upload(missing, "gone.bin")

    assert info.value.permanent is True
    assert "file not found" in info.value.message
    assert missing in info.value.message
    assert dest.stat("gone.bin") is None


def test_a_folder_given_as_the_local_file_is_permanent(dest, tmp_path):
    with pytest.raises(DestinationError) as info:
        dest.upload(str(tmp_path), "folder")

    assert info.value.permanent is True
    assert dest.stat("folder") is None


def test_sixteen_threads_upload_through_one_destination(kind, dest, make_file):
    threads, per_thread = 16, 5
    files = {f"t{t:02d}/f{i}.bin": make_file(os.urandom(100 + t * per_thread + i))
             for t in range(threads) for i in range(per_thread)}
    keys = sorted(files)
    start = threading.Barrier(threads, timeout=30)

    def work(t: int) -> list[int]:
        start.wait()  # all threads inside upload() together, not one after another
        return [dest.upload(files[k], k).size for k in keys[t * per_thread:(t + 1) * per_thread]]

    with ThreadPoolExecutor(threads) as pool:
        sizes = [s for chunk in pool.map(work, range(threads)) for s in chunk]

    expected = [RemoteObject(k, os.path.getsize(files[k])) for k in keys]
    assert sizes == [o.size for o in expected]
    assert list(dest.list_existing()) == expected
    for k in (keys[0], keys[len(keys) // 2], keys[-1]):
        with open(files[k], "rb") as f:
            assert read_back(kind, dest, k) == f.read()


def test_closed_destination_can_be_used_again_and_a_fresh_one_sees_the_same(dest, make_file):
    dest.upload(make_file(b"before"), "before.txt")
    dest.close()
    dest.upload(make_file(b"after close"), "after.txt")
    dest.close()
    dest.close()  # closing twice is harmless

    with build_destination(dest.kind, dict(dest.options)) as fresh:
        fresh.check()
        assert list(fresh.list_existing()) == [RemoteObject("after.txt", 11), RemoteObject("before.txt", 6)]
        fresh.upload(make_file(b""), "from-fresh")

    assert dest.stat("from-fresh") == RemoteObject("from-fresh", 0)
