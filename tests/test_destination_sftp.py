"""SFTPDestination against a real OpenSSH sshd on loopback (tests/servers/sshd.py)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from projects.destinations import build_destination
from projects.destinations.base import TEMP_FOLDER, ConfigError, DestinationError, RemoteObject, temp_prefix
from projects.errors import FileChangedError
from projects.destinations.sftp import SFTPDestination
from projects.walking import walk_sorted
from tests.servers.sshd import SSHServer, generate_key, key_folder, known_hosts_line, sftp_options, start_sshd

PASSWORD_VAR = "UPLOADER_SECRET_SFTP_TEST_PASSWORD"
PASSPHRASE_VAR = "UPLOADER_SECRET_SFTP_TEST_PASSPHRASE"


@pytest.fixture(autouse=True)
def tmp_path_holds_keys(settings, tmp_path: Path) -> None:
    """The known_hosts and key files these tests write live in their own folder: a key folder."""
    settings.KEY_FILE_DIRS = [*settings.KEY_FILE_DIRS, str(tmp_path)]


@pytest.fixture
def destinations(sshd_server: SSHServer) -> Iterator:
    """Build SFTPDestinations from option overrides; all closed at the end."""
    sshd_server.start()  # a test may have left it stopped
    made: list[SFTPDestination] = []

    def make(**overrides) -> SFTPDestination:
        made.append(SFTPDestination(sftp_options(sshd_server, **overrides)))
        return made[-1]

    yield make
    for destination in made:
        destination.close()


@pytest.fixture
def local_file(tmp_path: Path):
    def make(content: bytes, name: str = "src.bin") -> str:
        path = tmp_path / "local" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return str(path)

    return make


def remote(destination: SFTPDestination) -> Path:
    """The destination's folder as seen on the server (the same machine)."""
    return Path(destination.options["remote_dir"])


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".uploading-" in p.name or p.parent.name == TEMP_FOLDER]


def chain_text(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts.append(repr(seen) + str(seen) + repr(getattr(seen, "args", "")))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# -- options ---------------------------------------------------------------------------------
def test_options_need_an_auth_method(sshd_server):
    with pytest.raises(ConfigError, match="key_file, password_env or use_agent"):
        SFTPDestination(sftp_options(sshd_server, key_file=None))


def test_options_defaults_describe_and_redaction(sshd_server):
    options = sftp_options(sshd_server, password_env=PASSWORD_VAR)
    del options["known_hosts"], options["connect_timeout"], options["port"]
    destination = build_destination("sftp", options)
    assert isinstance(destination, SFTPDestination)
    assert destination.options["port"] == 22
    assert destination.options["known_hosts"] == "~/.ssh/known_hosts"
    assert destination.options["accept_new_host_key"] is False
    assert destination.describe() == {
        "kind": "sftp", "host": "127.0.0.1", "port": 22, "remote_dir": options["remote_dir"],
    }
    assert destination.prefix == options["remote_dir"]
    assert destination.redacted_options()["password_env"] == PASSWORD_VAR


# -- authentication ----------------------------------------------------------------------------
def test_key_auth(destinations, local_file):
    destination = destinations()
    destination.check()
    assert destination.health() == (True, "ok")
    destination.upload(local_file(b"hello"), "hello.txt")
    assert (remote(destination) / "hello.txt").read_bytes() == b"hello"


def test_password_auth_from_env(destinations, local_file, monkeypatch, sshd_server):
    monkeypatch.setenv(PASSWORD_VAR, sshd_server.password)
    destination = destinations(key_file=None, password_env=PASSWORD_VAR)
    result = destination.upload(local_file(b"by password"), "p.txt")
    assert result.size == len(b"by password")
    assert (remote(destination) / "p.txt").read_bytes() == b"by password"


def test_wrong_password_is_permanent_and_not_shown(destinations, monkeypatch):
    secret = "Wrong-Secret-93217"
    monkeypatch.setenv(PASSWORD_VAR, secret)
    destination = destinations(key_file=None, password_env=PASSWORD_VAR)
    with pytest.raises(DestinationError) as info:
        destination.check()
    assert info.value.permanent
    assert "authentication failed for uploadtest@127.0.0.1" in str(info.value)
    assert secret not in chain_text(info.value)
    ok, message = destination.health()
    assert not ok and secret not in message


def test_missing_password_variable_is_permanent(destinations, monkeypatch, local_file):
    monkeypatch.delenv(PASSWORD_VAR, raising=False)
    destination = destinations(key_file=None, password_env=PASSWORD_VAR)
    with pytest.raises(DestinationError, match=f"environment variable {PASSWORD_VAR} \\(password_env\\) is not set") as info:
        destination.upload(local_file(b"x"), "x")
    assert info.value.permanent


def test_encrypted_key_with_passphrase_from_env(destinations, monkeypatch, sshd_server, local_file):
    monkeypatch.setenv(PASSPHRASE_VAR, sshd_server.key_passphrase)
    destination = destinations(key_file=str(sshd_server.encrypted_client_key), passphrase_env=PASSPHRASE_VAR)
    destination.upload(local_file(b"k"), "k")
    assert (remote(destination) / "k").read_bytes() == b"k"


def test_encrypted_key_without_or_with_wrong_passphrase(destinations, monkeypatch, sshd_server):
    without = destinations(key_file=str(sshd_server.encrypted_client_key))
    with pytest.raises(DestinationError, match="is encrypted: set passphrase_env") as info:
        without.check()
    assert info.value.permanent

    monkeypatch.setenv(PASSPHRASE_VAR, "not-the-passphrase")
    wrong = destinations(key_file=str(sshd_server.encrypted_client_key), passphrase_env=PASSPHRASE_VAR)
    with pytest.raises(DestinationError, match="wrong passphrase") as info:
        wrong.check()
    assert info.value.permanent
    assert "not-the-passphrase" not in chain_text(info.value)


def test_missing_key_file_is_permanent(destinations, tmp_path):
    destination = destinations(key_file=str(tmp_path / "nope"))
    with pytest.raises(DestinationError, match="key file not found") as info:
        destination.check()
    assert info.value.permanent


# -- host keys ---------------------------------------------------------------------------------
def test_unknown_host_key_is_refused(destinations, tmp_path, sshd_server):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    destination = destinations(known_hosts=str(known_hosts))
    with pytest.raises(DestinationError) as info:
        destination.check()
    assert info.value.permanent
    assert str(info.value) == (
        f"host key for 127.0.0.1:{sshd_server.port} not in {known_hosts} (set accept_new_host_key to trust it)"
    )
    assert known_hosts.read_text() == ""


def test_accept_new_host_key_records_it(destinations, tmp_path, sshd_server, local_file):
    known_hosts = tmp_path / "ssh" / "known_hosts"  # neither the file nor its folder exist yet
    trusting = destinations(known_hosts=str(known_hosts), accept_new_host_key=True)
    trusting.upload(local_file(b"tofu"), "tofu")
    assert known_hosts.read_text() == known_hosts_line("127.0.0.1", sshd_server.port, sshd_server.host_public_key) + "\n"

    strict = destinations(known_hosts=str(known_hosts))
    strict.check()  # the recorded key is now trusted without accept_new_host_key


def test_changed_host_key_is_refused_even_when_accepting_new_keys(destinations, tmp_path, sshd_server):
    other_key = generate_key(tmp_path / "other_host_key")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line("127.0.0.1", sshd_server.port, other_key) + "\n")
    before = known_hosts.read_text()
    for accept in (False, True):
        destination = destinations(known_hosts=str(known_hosts), accept_new_host_key=accept)
        with pytest.raises(DestinationError, match="has CHANGED") as info:
            destination.check()
        assert info.value.permanent
        assert f"127.0.0.1:{sshd_server.port}" in str(info.value)
    assert known_hosts.read_text() == before


# -- uploading ---------------------------------------------------------------------------------
def test_nested_folders_are_created(destinations, local_file):
    destination = destinations()
    src = local_file(b"deep")
    for key in ("a/b/c/d/one.txt", "a/b/two.txt", "a/x/three.txt", "top.txt"):
        destination.upload(src, key)
    root = remote(destination)
    for key in ("a/b/c/d/one.txt", "a/b/two.txt", "a/x/three.txt", "top.txt"):
        assert (root / key).read_bytes() == b"deep"
    assert temp_files(root) == []


def test_remote_dir_is_created_when_its_parent_exists(destinations, sshd_server):
    destination = destinations()
    assert not remote(destination).exists()
    destination.check()
    assert remote(destination).is_dir()
    assert list(remote(destination).iterdir()) == []  # the write probe cleans up after itself


def test_remote_dir_with_missing_parent_is_permanent(destinations, sshd_server, local_file):
    destination = destinations(remote_dir=str(sshd_server.data_dir / "no-such-parent" / "dir"))
    with pytest.raises(DestinationError, match="its parent does not exist") as info:
        destination.check()
    assert info.value.permanent
    with pytest.raises(DestinationError, match="its parent does not exist") as info:
        destination.upload(local_file(b"x"), "a/x")
    assert info.value.permanent


def test_relative_remote_dir_is_under_the_login_folder(destinations, sshd_server, local_file):
    destination = destinations(remote_dir="relative-up/here")
    (sshd_server.data_dir / "relative-up").mkdir(exist_ok=True)
    os.chown(sshd_server.data_dir / "relative-up", *_owner(sshd_server.data_dir))
    destination.upload(local_file(b"rel"), "f.txt")
    assert (sshd_server.data_dir / "relative-up" / "here" / "f.txt").read_bytes() == b"rel"
    assert destination.prefix == "relative-up/here"


def test_permission_denied_is_permanent(destinations, sshd_server, local_file):
    locked = sshd_server.data_dir / "root-only"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o755)  # owned by root: the test user may look, not write
    destination = destinations(remote_dir=str(locked / "sub"))
    with pytest.raises(DestinationError, match="permission denied") as info:
        destination.upload(local_file(b"x"), "x")
    assert info.value.permanent


def test_replacing_a_file_is_atomic(destinations, local_file):
    destination = destinations()
    old, new = b"o" * 3_000_000, b"n" * 3_000_000
    old_src, new_src = local_file(old, "old"), local_file(new, "new")
    destination.upload(old_src, "f.bin")
    target = remote(destination) / "f.bin"
    done = threading.Event()
    seen: set[bytes] = set()

    def read_while_uploading() -> None:
        while not done.is_set():
            try:
                content = target.read_bytes()
            except FileNotFoundError:
                content = b"missing"
            seen.add(content[:1] if content in (old, new) else content[:7])

    reader = threading.Thread(target=read_while_uploading)
    reader.start()
    try:
        for i in range(6):
            destination.upload(new_src if i % 2 == 0 else old_src, "f.bin")
    finally:
        done.set()
        reader.join()
    assert seen and seen <= {b"o", b"n"}  # whole old or whole new content, never missing or partial
    assert target.read_bytes() == old
    assert temp_files(remote(destination)) == []


def test_upload_result_and_remote_size(destinations, local_file):
    destination = destinations()
    content = os.urandom(5 * 1024 * 1024 + 17)  # several write requests and read chunks
    result = destination.upload(local_file(content), "big/blob.bin")
    assert result.size == len(content)
    assert destination.stat("big/blob.bin") == RemoteObject("big/blob.bin", len(content))
    assert (remote(destination) / "big/blob.bin").read_bytes() == content


def test_empty_file(destinations, local_file):
    destination = destinations()
    assert destination.upload(local_file(b""), "empty").size == 0
    assert destination.stat("empty") == RemoteObject("empty", 0)


def test_file_changing_size_during_upload_is_transient(destinations):
    destination = destinations()
    # /proc files report size 0 and then read as more: a file that grew while being sent.
    with pytest.raises(FileChangedError, match="file changed during upload") as info:
        destination.upload("/proc/self/status", "status")
    assert not info.value.permanent
    assert destination.stat("status") is None
    assert temp_files(remote(destination)) == []


def test_a_name_of_250_bytes_uploads_under_a_short_temporary_name(destinations, local_file):
    destination = destinations()
    key = "deep/" + "n" * 246 + ".wav"  # 250 bytes: a temporary name beside it would not fit

    destination.upload(local_file(b"long name"), key)

    assert (remote(destination) / key).read_bytes() == b"long name"
    assert temp_files(remote(destination)) == []


def test_a_name_over_the_limit_is_a_permanent_error_that_says_so(destinations, local_file):
    destination = destinations()
    key = "x" * 256 + ".wav"

    with pytest.raises(DestinationError, match="file name too long for the destination") as info:
        destination.upload(local_file(b"x"), key)
    assert info.value.permanent


def test_remove_unfinished_removes_the_temporary_files_of_those_keys_only(destinations, local_file):
    destination = destinations()
    destination.upload(local_file(b"done"), "a/done.txt")  # makes the temporary folder
    folder = remote(destination) / TEMP_FOLDER
    (folder / (temp_prefix("a/cut.txt") + "1234abcd")).write_bytes(b"half")
    (folder / (temp_prefix("a/other.txt") + "1234abcd")).write_bytes(b"in flight")

    assert destination.remove_unfinished(["a/cut.txt", "never/started.txt"]) == 1

    assert [p.name for p in folder.iterdir()] == [temp_prefix("a/other.txt") + "1234abcd"]
    assert [o.key for o in destination.list_existing()] == ["a/done.txt"]


@pytest.fixture(scope="module")
def full_disk_server() -> Iterator[SSHServer]:
    """An sshd whose writes fail past 100 KB: a disk that fills up during an upload."""
    server = start_sshd(max_file_size=100_000)
    try:
        with key_folder(server.base_dir):
            yield server
    finally:
        server.close()


@pytest.mark.parametrize("size", [150_000, 2_000_000])  # the failing write is the last one / mid-file
def test_failed_remote_write_is_transient_and_leaves_nothing(full_disk_server, local_file, size):
    with SFTPDestination(sftp_options(full_disk_server)) as destination:
        destination.upload(local_file(b"s" * 1000, "small"), "f.bin")
        with pytest.raises(DestinationError, match="answered: Failure") as info:
            destination.upload(local_file(b"b" * size, "big"), "f.bin")
        assert not info.value.permanent
        assert (remote(destination) / "f.bin").read_bytes() == b"s" * 1000
        assert temp_files(remote(destination)) == []
        destination.upload(local_file(b"after", "after"), "after")  # the connection is still good


def test_local_file_not_found_is_permanent(destinations, tmp_path):
    destination = destinations()
    with pytest.raises(DestinationError, match="file not found") as info:
        destination.upload(str(tmp_path / "missing.bin"), "missing.bin")
    assert info.value.permanent


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "a//b", ""])
def test_keys_cannot_escape_remote_dir(destinations, local_file, key):
    with pytest.raises(DestinationError, match="invalid key") as info:
        destinations().upload(local_file(b"x"), key)
    assert info.value.permanent


def test_folder_removed_behind_the_cache_is_created_again(destinations, local_file):
    destination = destinations()
    src = local_file(b"again")
    destination.upload(src, "sub/one")
    shutil.rmtree(remote(destination) / "sub")
    destination.upload(src, "sub/two")
    assert (remote(destination) / "sub" / "two").read_bytes() == b"again"


# -- listing and stat --------------------------------------------------------------------------
def test_list_existing_is_sorted_recursive_streaming_and_skips_temp_files(destinations, local_file):
    destination = destinations()
    src = local_file(b"12345")
    keys = ["b.txt", "a/b", "a-b", "a.b", "a/c/d", "ab", "a/c-", "é.txt", "z/y/x/w", "A"]
    for key in keys:
        destination.upload(src, key)
    root = remote(destination)
    (root / "a" / ".b.uploading-1234abcd").write_bytes(b"half")
    (root / "empty-folder").mkdir()
    (root / "link").symlink_to(root / "b.txt")

    listing = destination.list_existing()
    assert isinstance(listing, Iterator)
    first = next(listing)
    rest = list(listing)
    expected = [RemoteObject(e.relative_path, e.size) for e in walk_sorted(str(root)) if ".uploading-" not in e.relative_path]
    assert [first, *rest] == expected
    assert sorted(o.key for o in expected) == sorted(keys)
    assert all(o.size == 5 for o in expected)


def test_list_existing_of_missing_remote_dir_is_empty(destinations):
    assert list(destinations().list_existing()) == []


def test_stat(destinations, local_file):
    destination = destinations()
    destination.upload(local_file(b"abc"), "dir/f")
    assert destination.stat("dir/f") == RemoteObject("dir/f", 3)
    assert destination.stat("dir/missing") is None
    assert destination.stat("dir") is None  # a folder is not an object
    assert destinations().stat("anything") is None  # remote_dir itself missing


# -- connections -------------------------------------------------------------------------------
def test_reconnects_after_the_server_restarts(destinations, local_file, sshd_server):
    destination = destinations()
    src = local_file(b"before and after")
    destination.upload(src, "before")
    sshd_server.stop()
    try:
        with pytest.raises(DestinationError) as info:
            destination.upload(src, "while-down")
        assert not info.value.permanent
        assert f"127.0.0.1:{sshd_server.port}" in str(info.value)
    finally:
        sshd_server.start()
    destination.upload(src, "after")
    assert destination.stat("after") == RemoteObject("after", len(b"before and after"))
    assert destination.stat("while-down") is None


def test_dropped_connection_is_replaced_transparently(destinations, local_file, sshd_server):
    destination = destinations()
    src = local_file(b"x" * 100_000)
    destination.upload(src, "one")
    sshd_server.drop_connections()
    destination.upload(src, "two")  # the dead connection is noticed, a new one takes over
    assert [o.key for o in destination.list_existing()] == ["one", "two"]


def test_many_threads_share_one_destination(destinations, local_file):
    destination = destinations()
    sources = [local_file(os.urandom(1000 + i), f"s{i}") for i in range(40)]
    jobs = [(sources[i % 40], f"t{i % 5}/f{i:03d}") for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: destination.upload(*job), jobs))
    root = remote(destination)
    for (src, key), result in zip(jobs, results):
        assert (root / key).read_bytes() == Path(src).read_bytes()
        assert result.size == os.path.getsize(src)
    assert len(list(destination.list_existing())) == 200
    assert temp_files(root) == []


def test_close_closes_every_threads_connection_and_can_reconnect(destinations, local_file):
    destination = destinations()
    src = local_file(b"c")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: destination.upload(src, f"f{i}"), range(40)))
    connections = list(destination._connections)
    assert 1 <= len(connections) <= 4
    destination.close()
    assert destination._connections == set()
    assert not any(c.usable() for c in connections)
    destination.upload(src, "after-close")
    assert destination.stat("after-close") == RemoteObject("after-close", 1)


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid
