"""An SFTP server (OpenSSH or any SFTP v3 server), through paramiko.

Each uploading thread gets its own connection, kept for the whole run: SFTP requests on one
connection wait on each other, and paramiko's per-packet work holds the GIL, so more speed
comes from more threads only up to ~2 and from more processes beyond that.
Files are written to a short temporary name in a hidden folder under remote_dir and renamed into
place, so a reader never sees a half file. Secrets come from the environment at connect time only.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import socket
import stat as stat_mod
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import paramiko

from projects.destinations.base import (
    ConfigError,
    Destination,
    DestinationError,
    NAME_MAX,
    TEMP_FOLDER,
    RemoteObject,
    UploadResult,
    check_no_dot_segments,
    local_file_error,
    longest_segment,
    name_too_long,
    temp_prefix,
)
from projects.errors import FileChangedError
from projects.localfile import LocalFile
from projects.secrets import check_key_file, check_known_hosts, check_secret_options, read_secret

logger = logging.getLogger(__name__)

T = TypeVar("T")

TEMP_MARK = ".uploading-"
READ_SIZE = 1024 * 1024
# Some servers refuse SFTP writes of more than 32 KiB of data.
MAX_WRITE_SIZE = 32 * 1024
# Seconds without any answer before an open connection counts as dead (a hung server).
OPERATION_TIMEOUT = 120.0
CONNECT_RETRY_DELAYS = (0.2, 0.5, 1.0)
# AES-GCM needs no separate MAC pass: ~30% less client CPU per byte than paramiko's default
# aes128-ctr + hmac-sha2-256, as safe, and offered by every OpenSSH since 6.2.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# Errors of a broken connection, as opposed to an SFTP status answer (an OSError with errno).
CONNECTION_ERRORS = (EOFError, paramiko.SSHException, paramiko.SFTPError, ConnectionError, TimeoutError)

_known_hosts_lock = threading.Lock()


class SFTPDestination(Destination):
    kind = "sftp"

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()  # of all threads, for close()

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_no_dot_segments("remote_dir", options["remote_dir"])
        if not (options["key_file"] or options["password_env"] or options["use_agent"]):
            raise ConfigError("destination.key_file: set key_file, password_env or use_agent (no way to log in)")
        if options["passphrase_env"] and not options["key_file"]:
            raise ConfigError("destination.passphrase_env: only used with key_file")
        if not 0 < options["port"] < 65536:
            raise ConfigError("destination.port: must be between 1 and 65535")
        if options["connect_timeout"] <= 0:
            raise ConfigError("destination.connect_timeout: must be positive")
        check_secret_options(options, "destination.")

    # -- what the rest of the product asks ---------------------------------------------------
    @property
    def prefix(self) -> str:
        return self._root

    @property
    def _root(self) -> str:
        remote_dir = self.options["remote_dir"].strip()
        return posixpath.normpath(remote_dir) if remote_dir else "."

    @property
    def _where(self) -> str:
        return f"{self.options['host']}:{self.options['port']}"

    def identity(self) -> str:
        o = self.options
        return f"sftp://{o['username']}@{o['host']}:{o['port']}/{self._root}"

    @classmethod
    def describe_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        o = options
        return {"kind": cls.kind, "host": o.get("host"), "port": o.get("port"), "remote_dir": o.get("remote_dir")}

    # -- the contract ----------------------------------------------------------------------
    def check(self) -> None:
        """Log in and make sure remote_dir is a folder we can write in (a probe file is created
        and removed). A missing remote_dir is created when its parent exists, as uploads do; a
        missing parent is a permanent error: more likely a typo than a folder still to come."""
        self._local.checking = True
        try:
            self._run(f"checking {self._root}", self._check_root)
        finally:
            self._local.checking = False

    def health(self) -> tuple[bool, str]:
        """Connect and stat remote_dir: answers without writing anything on the server."""

        def op(conn: _Connection) -> tuple[bool, str]:
            try:
                attrs = conn.sftp.stat(self._root)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                # Uploads create remote_dir when its parent exists, as check() does.
                try:
                    attrs = conn.sftp.stat(posixpath.dirname(self._root.rstrip("/")) or "/")
                except OSError as parent_exc:
                    if parent_exc.errno != errno.ENOENT:
                        raise
                    return False, f"remote folder {self._root} on {self._where} is missing: its parent does not exist"
            if not stat_mod.S_ISDIR(attrs.st_mode or 0):
                return False, f"{self._root} is not a folder"
            return True, "ok"

        try:
            return self._run(f"stat of {self._root}", op)
        except DestinationError as exc:
            return False, exc.message

    def list_existing(self) -> Iterator[RemoteObject]:
        """Regular files under remote_dir, recursively, in walk order; symlinks and unfinished
        uploads are left out. Each folder is listed whole, on the calling thread's connection."""
        yield from self._walk(self._root, "")

    def stat(self, key: str) -> RemoteObject | None:
        path = self._path(key)

        def op(conn: _Connection) -> RemoteObject | None:
            try:
                attrs = conn.sftp.stat(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise
            return RemoteObject(key, attrs.st_size) if stat_mod.S_ISREG(attrs.st_mode or 0) else None

        return self._run(f"stat of {path}", op)

    def put_file(self, local: LocalFile, key: str) -> UploadResult:
        target = self._path(key)
        if longest_segment(target) > NAME_MAX:  # the server's answer would be a bare "Failure"
            raise name_too_long(target)
        tmp = posixpath.join(self._root, TEMP_FOLDER, temp_prefix(key) + uuid.uuid4().hex[:12])
        sent = self._run(f"upload to {target}",
                         lambda conn: self._put(conn, local.file, local.path, local.size, target, tmp))
        return UploadResult(size=sent)

    def remove_unfinished(self, keys: list[str]) -> int:
        folder = posixpath.join(self._root, TEMP_FOLDER)
        prefixes = tuple(temp_prefix(key) for key in keys)

        def op(conn: _Connection) -> int:
            try:
                names = [name for name in conn.sftp.listdir(folder) if name.startswith(prefixes)]
            except FileNotFoundError:
                return 0
            for name in names:
                _remove_quietly(conn, posixpath.join(folder, name))
            return len(names)

        return self._run(f"removing unfinished uploads in {folder}", op)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            conn.close()

    # -- uploading -------------------------------------------------------------------------
    def _put(self, conn: _Connection, src: BinaryIO, local_path: str, size: int, target: str, tmp: str) -> int:
        """Written to `tmp` (a short name in the temporary folder), renamed to `target`."""
        self._ensure_folder(conn, posixpath.dirname(target))
        self._ensure_folder(conn, posixpath.dirname(tmp))
        try:
            sent = self._write(conn, src, local_path, tmp, posixpath.dirname(tmp))
            remote_size = conn.sftp.stat(tmp).st_size
            if remote_size != sent:
                raise DestinationError(f"size mismatch after upload to {target}: sent {sent}, remote has {remote_size}")
            if sent != size:
                raise FileChangedError(f"file changed during upload (size {size} -> {sent} bytes): {local_path}")
            try:
                self._rename(conn, tmp, target)
            except FileNotFoundError:  # the target's folder was removed behind the cache's back
                conn.folders.clear()
                self._ensure_folder(conn, posixpath.dirname(target))
                self._rename(conn, tmp, target)
        except BaseException as exc:
            if isinstance(exc, DestinationError) or not _is_connection_error(conn, exc):
                _remove_quietly(conn, tmp)
            raise
        return sent

    def _write(self, conn: _Connection, src: BinaryIO, local_path: str, tmp: str, folder: str) -> int:
        src.seek(0)
        try:
            remote = conn.sftp.open(tmp, "wb")
        except FileNotFoundError:
            # The folder was removed behind the cache's back: forget what we knew, create it again.
            conn.folders.clear()
            self._ensure_folder(conn, folder)
            remote = conn.sftp.open(tmp, "wb")
        sent = 0
        with remote:
            remote.MAX_REQUEST_SIZE = _write_size(conn, remote)
            remote.set_pipelined(True)  # write acks are collected at close
            while data := _read(src, local_path):
                remote.write(data)
                sent += len(data)
            _check_write_acks(conn, remote)
        return sent

    def _rename(self, conn: _Connection, tmp: str, target: str) -> None:
        if conn.posix_rename:
            try:
                conn.sftp.posix_rename(tmp, target)
                return
            except OSError as exc:
                if exc.errno is not None:  # a real answer (ENOENT, EACCES), not "unsupported"
                    raise
                conn.posix_rename = False
        # Plain SFTP rename refuses to replace: the target is missing for a moment, never partial.
        try:
            conn.sftp.remove(target)
        except FileNotFoundError:
            pass
        conn.sftp.rename(tmp, target)

    # -- folders ---------------------------------------------------------------------------
    def _check_root(self, conn: _Connection) -> None:
        self._ensure_folder(conn, self._root)
        probe = posixpath.join(self._root, f".check{TEMP_MARK}{uuid.uuid4().hex[:12]}")
        conn.sftp.open(probe, "wb").close()
        conn.sftp.remove(probe)

    def _ensure_folder(self, conn: _Connection, folder: str) -> None:
        """mkdir -p down from remote_dir; remote_dir's parent has to exist already."""
        if folder in conn.folders:
            return
        missing: list[str] = []
        path = folder
        while path not in conn.folders and not self._is_folder(conn, path):
            missing.append(path)
            if path == self._root:
                break
            path = posixpath.dirname(path)
        for path in reversed(missing):
            self._mkdir(conn, path)
        path = folder
        while path not in conn.folders:
            conn.folders.add(path)
            if path == self._root:
                break
            path = posixpath.dirname(path)

    def _is_folder(self, conn: _Connection, path: str) -> bool:
        try:
            attrs = conn.sftp.stat(path)
        except FileNotFoundError:
            return False
        if not stat_mod.S_ISDIR(attrs.st_mode or 0):
            raise DestinationError(f"not a folder on {self._where}: {path}", permanent=True)
        return True

    def _mkdir(self, conn: _Connection, path: str) -> None:
        try:
            conn.sftp.mkdir(path)
        except OSError as exc:
            if _is_connection_error(conn, exc):
                raise
            if exc.errno == errno.ENOENT and path == self._root:
                raise DestinationError(
                    f"cannot create remote folder {path} on {self._where}: its parent does not exist",
                    permanent=True,
                ) from exc
            if not self._is_folder(conn, path):  # else another connection made it first
                raise

    # -- listing ---------------------------------------------------------------------------
    def _walk(self, folder: str, rel: str) -> Iterator[RemoteObject]:
        entries = self._run(f"listing {folder}", lambda conn: _listdir(conn, folder))
        children = sorted((a.filename + "/" if stat_mod.S_ISDIR(a.st_mode or 0) else a.filename, a) for a in entries)
        for sort_name, attrs in children:
            if not rel and attrs.filename == TEMP_FOLDER:
                continue
            if sort_name.endswith("/"):
                yield from self._walk(posixpath.join(folder, attrs.filename), rel + sort_name)
            elif stat_mod.S_ISREG(attrs.st_mode or 0) and TEMP_MARK not in attrs.filename:
                yield RemoteObject(rel + attrs.filename, attrs.st_size or 0)

    # -- connections -----------------------------------------------------------------------
    def _run(self, what: str, op: Callable[[_Connection], T]) -> T:
        """op on this thread's connection; once more on a new connection if that one broke."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return op(conn)
            except DestinationError:
                raise
            except (OSError, *CONNECTION_ERRORS) as exc:
                if not _is_connection_error(conn, exc):
                    raise self._answer_error(what, exc) from exc
                self._discard(conn)
                if attempt == 2:
                    raise DestinationError(f"{what}: connection to {self._where} lost ({_reason(exc)})") from exc
                logger.info("sftp %s: connection lost during %s (%s), reconnecting", self._where, what, _reason(exc))
        raise AssertionError("unreachable")

    def _answer_error(self, what: str, exc: BaseException) -> DestinationError:
        """The DestinationError for an SFTP status answer (the connection itself is fine)."""
        code = getattr(exc, "errno", None)
        if code == errno.ENOENT:
            return DestinationError(f"{what}: no such file or folder on {self._where}", permanent=True)
        if code == errno.EACCES:
            return DestinationError(f"{what}: permission denied on {self._where}", permanent=True)
        return DestinationError(f"{what}: server {self._where} answered: {_reason(exc)}")

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.usable():
            return conn
        if conn is not None:
            self._discard(conn)
        conn = self._connect()
        self._local.conn = conn
        with self._lock:
            self._connections.add(conn)
        return conn

    def _discard(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _connect(self) -> _Connection:
        """Connect, retrying what may pass (refused, reset, timeout) with a short backoff."""
        for delay in (*CONNECT_RETRY_DELAYS, None):
            try:
                return self._connect_once()
            except paramiko.ChannelException as exc:
                # The server is at its limit of sessions (MaxSessions): slow down, not a failure.
                raise DestinationError(f"{self._where} refused a new SFTP channel ({_reason(exc)}): too many "
                                       f"sessions at once", throttled=True) from exc
            except (OSError, *CONNECTION_ERRORS) as exc:
                if delay is None or getattr(self._local, "checking", False):
                    raise DestinationError(f"cannot connect to {self._where}: {_reason(exc)}") from exc
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _connect_once(self) -> _Connection:
        o = self.options
        known_hosts = check_known_hosts(o["known_hosts"])
        client = paramiko.SSHClient()
        try:
            client.get_host_keys().load(known_hosts)
        except FileNotFoundError:
            pass  # every host is unknown: refused, or recorded with accept_new_host_key
        except OSError as exc:
            raise DestinationError(f"cannot read {known_hosts}: {_reason(exc)}", permanent=True) from exc
        policy = _RecordNewKey(known_hosts) if o["accept_new_host_key"] else _RejectUnknownKey()
        client.set_missing_host_key_policy(policy)
        timeout = float(o["connect_timeout"])
        if getattr(self._local, "checking", False):
            timeout = min(timeout, self.check_timeout)
        try:
            client.connect(
                o["host"],
                port=o["port"],
                username=o["username"],
                password=self._secret("password_env"),
                pkey=self._private_key(),
                allow_agent=o["use_agent"],
                look_for_keys=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                transport_factory=_transport,
            )
            sftp = client.open_sftp()
        except _UnknownHostKey:
            client.close()
            raise DestinationError(
                f"host key for {self._where} not in {known_hosts} (set accept_new_host_key to trust it)",
                permanent=True,
            ) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise DestinationError(
                f"host key for {self._where} has CHANGED (server offers {exc.key.get_name()} {exc.key.fingerprint}, "
                f"{known_hosts} has {exc.expected_key.fingerprint}): refusing to connect; if the server was "
                f"re-keyed, remove its line from {known_hosts}",
                permanent=True,
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise DestinationError(
                f"authentication failed for {o['username']}@{self._where} (tried: {self._auth_methods()})",
                permanent=True,
            ) from None
        except BaseException:
            client.close()
            raise
        sftp.get_channel().settimeout(OPERATION_TIMEOUT)
        return _Connection(client, sftp)

    def _secret(self, option: str) -> str | None:
        name = self.options[option]
        if not name:
            return None
        value = read_secret(name, option)
        if value is None:
            raise DestinationError(f"environment variable {name} ({option}) is not set", permanent=True)
        return value

    def _private_key(self) -> paramiko.PKey | None:
        path = self.options["key_file"]
        if not path:
            return None
        path = check_key_file(path)
        passphrase = self._secret("passphrase_env")
        try:
            return paramiko.PKey.from_path(path, password=passphrase.encode() if passphrase is not None else None)
        except FileNotFoundError:
            raise DestinationError(f"key file not found: {path}", permanent=True) from None
        except PermissionError:
            raise DestinationError(f"permission denied reading key file {path}", permanent=True) from None
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            # cryptography says "password-protected" with a TypeError, a wrong passphrase with a ValueError.
            encrypted = passphrase is None and isinstance(exc, (TypeError, paramiko.PasswordRequiredException))
            problem = "it is encrypted: set passphrase_env" if encrypted else "wrong passphrase or not a private key"
            raise DestinationError(f"cannot load key file {path}: {problem}", permanent=True) from None

    def _auth_methods(self) -> str:
        o = self.options
        methods = [("key file", o["key_file"]), ("password", o["password_env"]), ("ssh-agent", o["use_agent"])]
        return ", ".join(name for name, used in methods if used)

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise DestinationError(f"invalid key (empty part, '.', '..' or leading '/'): {key!r}", permanent=True)
        return posixpath.join(self._root, key)


class _Connection:
    """One SSH connection, its SFTP session and what it learnt about the server."""

    def __init__(self, client: paramiko.SSHClient, sftp: paramiko.SFTPClient):
        self.client = client
        self.sftp = sftp
        self.folders: set[str] = set()  # known to exist
        self.posix_rename = True  # until the server says it lacks the extension
        self.closed = False

    def usable(self) -> bool:
        transport = self.client.get_transport()
        return not self.closed and transport is not None and transport.is_active()

    def close(self) -> None:
        self.closed = True
        for close in (self.sftp.close, self.client.close):
            try:
                close()
            except (OSError, *CONNECTION_ERRORS):
                pass  # it was going away anyway


class _UnknownHostKey(Exception):
    pass


class _RejectUnknownKey(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname)


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: append the key to known_hosts, keeping the file's other lines as they are."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with _known_hosts_lock:  # threads connecting at once would each append the same line
            known = paramiko.HostKeys()
            if os.path.exists(self.path):
                known.load(self.path)
            if known.lookup(hostname) is not None:
                return
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        logger.warning("sftp: recorded new host key for %s (%s) in %s", hostname, key.fingerprint, self.path)


def _transport(sock: socket.socket, **kwargs: Any) -> paramiko.Transport:
    # Without it, the small request after a big write waits for a delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = PREFERRED_CIPHERS + tuple(c for c in options.ciphers if c not in PREFERRED_CIPHERS)
    return transport


def _write_size(conn: _Connection, remote: paramiko.SFTPFile) -> int:
    """The most data per write request that still fits one channel packet as paramiko sends
    them (64 bytes under the server's maximum). One byte more and each request goes out as
    a big packet plus a tiny one, which Nagle and delayed ACKs stall for ~40 ms per request."""
    header = 4 + 1 + 4 + 4 + len(remote.handle) + 8 + 4  # length, type, id, handle, offset, data length
    return min(MAX_WRITE_SIZE, conn.sftp.get_channel().out_max_packet_size - 64 - header)


def _check_write_acks(conn: _Connection, remote: paramiko.SFTPFile) -> None:
    """Read the answers to the writes still in flight. paramiko checks pipelined writes only
    in batches of ~100 and drops the rest at close, so a failed write near the end (disk
    full, quota) would pass unseen, and one in the middle would leave a hole of the right size."""
    while remote._reqs:
        conn.sftp._read_response(remote._reqs.popleft())


def _listdir(conn: _Connection, folder: str) -> list[paramiko.SFTPAttributes]:
    try:
        return conn.sftp.listdir_attr(folder)
    except FileNotFoundError:
        return []


def _read(src: BinaryIO, local_path: str) -> bytes:
    try:
        return src.read(READ_SIZE)
    except OSError as exc:
        raise local_file_error(exc, local_path) from exc


def _is_connection_error(conn: _Connection, exc: BaseException) -> bool:
    """True when exc is the connection failing; False for an SFTP status answer (ENOENT, ...)."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    return isinstance(exc, OSError) and not conn.usable()


def _remove_quietly(conn: _Connection, path: str) -> None:
    try:
        conn.sftp.remove(path)
    except (OSError, *CONNECTION_ERRORS):
        pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
