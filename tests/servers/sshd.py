"""A real OpenSSH sshd on loopback, for the SFTP destination's tests and its benchmark.

The server runs as root (as the tests do) with a throwaway config, host key and client keys in
a temporary folder, and lets in one dedicated system user, `uploadtest`, by key or password.
That user's shell is nologin, so the machine's own sshd (if any) gives it nothing; ours forces
internal-sftp, which needs no shell, and starts every session in the server's data folder.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it insists on an absolute path
HOST = "127.0.0.1"
TEST_USER = "uploadtest"
TEST_PASSWORD = "uploadtest-Pw-4f1c9"
KEY_PASSPHRASE = "uploadtest-key-passphrase"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@dataclass
class SSHServer:
    base_dir: Path
    port: int
    data_dir: Path  # where sessions start and tests put remote folders; same path on both sides
    client_key: Path
    encrypted_client_key: Path  # protected by KEY_PASSPHRASE
    known_hosts: Path  # holds this server's host key, nothing else
    host_public_key: str  # "ssh-ed25519 AAAA..."
    host: str = HOST
    username: str = TEST_USER
    password: str = TEST_PASSWORD
    key_passphrase: str = KEY_PASSPHRASE
    max_file_size: int | None = None  # RLIMIT_FSIZE of the server: writes past it fail, like a full disk
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.base_dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "sshd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """Start sshd on self.port and return once it answers with its banner."""
        if self._process is not None and self._process.poll() is None:
            return
        log = open(self.log_path, "ab")
        with log:
            self._process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._limit_file_size if self.max_file_size else None,
            )
        self._wait_ready()

    def _limit_file_size(self) -> None:
        # Ignored signals stay ignored across exec: writes fail with EFBIG instead of killing sftp.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_size, self.max_file_size))

    def stop(self) -> None:
        """Stop sshd and every session it forked, so open connections drop as in an outage."""
        if self._process is None:
            return
        self.drop_connections()
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def drop_connections(self) -> None:
        """Kill every session but keep listening: open connections die, new ones work."""
        if self._process is None:
            return
        # Session processes call setsid(), so they are found through /proc, not a process group.
        sessions = _descendants(self._process.pid)
        for pid in sessions:
            _signal(pid, signal.SIGTERM)
        _wait_gone(sessions, time.monotonic() + STOP_TIMEOUT)

    def session_pids(self) -> list[int]:
        """The processes sshd forked for connections (for benchmarks that sample their CPU)."""
        return _descendants(self._process.pid) if self._process is not None else []

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _wait_ready(self) -> None:
        assert self._process is not None

        def answers() -> bool:
            if self._process.poll() is not None:
                raise SSHDStartError(f"sshd exited with {self._process.returncode}:\n{self.log()}")
            return _answers_banner(self.host, self.port)

        try:
            wait_for(answers, START_TIMEOUT, f"sshd on {self.host}:{self.port}", interval=0.01)
        except AssertionError:
            self.stop()
            raise SSHDStartError(f"sshd did not answer on {self.host}:{self.port} in {START_TIMEOUT}s:\n{self.log()}")


class SSHDStartError(RuntimeError):
    pass


def start_sshd(base_dir: str | None = None, max_file_size: int | None = None) -> SSHServer:
    """Set up keys, user and config in a fresh folder and start sshd on a free port."""
    if os.geteuid() != 0:
        raise RuntimeError("the sshd test server needs root (it runs sshd and creates the uploadtest user)")
    if not os.path.exists(SSHD):
        raise RuntimeError(f"{SSHD} not found: apt-get install -y openssh-server")
    ensure_test_user()
    # Not pytest's tmp_path: that lives under a 0700 folder the test user cannot traverse.
    base = Path(base_dir or tempfile.mkdtemp(prefix="sshd-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    user = pwd.getpwnam(TEST_USER)
    data_dir = base / "data"
    data_dir.mkdir(exist_ok=True)
    os.chown(data_dir, user.pw_uid, user.pw_gid)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder

    host_public = generate_key(base / "ssh_host_ed25519_key")
    client_public = generate_key(base / "client_key")
    encrypted_public = generate_key(base / "client_key_encrypted", passphrase=KEY_PASSPHRASE)
    authorized = base / "authorized_keys"
    authorized.write_text(f"{client_public}\n{encrypted_public}\n")
    authorized.chmod(0o644)
    server = SSHServer(
        base_dir=base,
        port=0,
        data_dir=data_dir,
        client_key=base / "client_key",
        encrypted_client_key=base / "client_key_encrypted",
        known_hosts=base / "known_hosts",
        host_public_key=host_public,
        max_file_size=max_file_size,
    )
    for _ in range(5):  # the free port can be taken between finding it and sshd binding it
        server.port = free_port()
        server.config_path.write_text(_config(server))
        try:
            server.start()
            break
        except SSHDStartError:
            if "Address already in use" not in server.log():
                raise
    server.known_hosts.write_text(known_hosts_line(server.host, server.port, host_public) + "\n")
    return server


def generate_key(path: Path, passphrase: str = "") -> str:
    """An ed25519 key pair at path (private) and path.pub; returns "type base64" of the public key."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "uploader-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {public_key}"


def ensure_test_user() -> None:
    """Create the uploadtest system user if missing and (re)set its known password."""
    # Several pytest-xdist workers may get here at once; useradd fails on a locked /etc/passwd.
    with open("/tmp/.uploadtest-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", TEST_USER],
                check=True,
            )
        subprocess.run(["chpasswd"], input=f"{TEST_USER}:{TEST_PASSWORD}\n", text=True, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def sftp_options(server: SSHServer, **overrides: Any) -> dict[str, Any]:
    """Options of an SFTPDestination for this server: key auth, a fresh remote folder."""
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "remote_dir": str(server.data_dir / f"up-{uuid.uuid4().hex[:10]}"),
        "key_file": str(server.client_key),
        "known_hosts": str(server.known_hosts),
        "connect_timeout": 5,
    }
    options.update(overrides)
    return options


def _config(server: SSHServer) -> str:
    base = server.base_dir
    lines = [
        f"Port {server.port}",
        f"ListenAddress {server.host}",
        f"HostKey {base}/ssh_host_ed25519_key",
        f"PidFile {base}/sshd.pid",
        f"AuthorizedKeysFile {base}/authorized_keys",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin no",
        f"AllowUsers {TEST_USER}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication yes",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "AllowTcpForwarding no",
        "X11Forwarding no",
        # Benchmarks open many connections at once; the default (10:30:100) drops some at random.
        "MaxStartups 200",
        f"Subsystem sftp internal-sftp -d {server.data_dir}",
        f"ForceCommand internal-sftp -d {server.data_dir}",
        "LogLevel INFO",
    ]
    if _sshd_version() >= (9, 8):
        # Otherwise the wrong-password tests get 127.0.0.1 refused for a while.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def _sshd_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _answers_banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                parents.setdefault(stat[1], []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _wait_gone(pids: list[int], deadline: float) -> None:
    """Wait until the processes exited (zombies count: an init that never reaps is common in containers)."""
    def gone() -> bool:
        return not [p for p in pids if (s := _proc_stat(p)) is not None and s[0] != "Z"]

    try:
        wait_for(gone, max(0.0, deadline - time.monotonic()), "sshd processes to exit", interval=0.01)
    except AssertionError:
        for pid in pids:
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@contextmanager
def key_folder(path: Path) -> Iterator[None]:
    """Make `path` one of the key folders (KEY_FILE_DIRS) of this process and of the commands and
    qclusters the tests start, which inherit the environment."""
    from django.conf import settings

    folders = [*settings.KEY_FILE_DIRS, str(path)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "KEY_FILE_DIRS", folders)
        mp.setenv("KEY_FILE_DIRS", ",".join(folders))
        yield


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SSHServer]:
    server = start_sshd()
    try:
        with key_folder(server.base_dir):  # its client keys and known_hosts
            yield server
    finally:
        server.close()


@pytest.fixture
def sftp_destination(sshd_server: SSHServer):
    from projects.destinations.sftp import SFTPDestination

    sshd_server.start()  # a test may have left it stopped
    destination = SFTPDestination(sftp_options(sshd_server))
    try:
        yield destination
    finally:
        destination.close()
