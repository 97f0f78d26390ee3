"""Secret references are a policy (projects/secrets.py): a project may name only the secret
variables, key files and known_hosts files the operator's rule allows — checked when a config is
validated and again when the secret is used.

The attack this stops: a staff user who may only change projects points an SFTP destination at
a server they run, names `password_env: SECRET_KEY` and asks for a health check; the workers
would send the application's SECRET_KEY as the SSH password. The fake SSH server below is that
server: it lets nobody in and records every connection and every password offered.
"""

from __future__ import annotations

import html
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest
from django.utils import timezone

from projects import config
from projects.destinations.roboflow import RoboflowDestination
from projects.destinations.sftp import SFTPDestination
from projects.errors import ConfigError, DestinationError
from projects.models import Project
from projects.secrets import check_env_name
from sessions_app import health, importing, kinds, notifying
from sessions_app.errors import StartError
from sessions_app.models import SessionStatus, SyncSession
from tests.conftest import manage, manage_env
from tests.servers.roboflow_api import API_KEY, API_KEY_ENV, PROJECT, WORKSPACE, RoboflowAPI
from tests.servers.sshd import generate_key

APP_SETTINGS = ["SECRET_KEY", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "DJANGO_SETTINGS_MODULE"]
OWN_SETTING = "is one of the application's own settings"


# -- the attacker's server ---------------------------------------------------------------------
@dataclass
class FakeSSHServer:
    """An SSH server on loopback that authenticates nobody and records what clients offer."""

    host_key: paramiko.PKey
    listener: socket.socket = field(default_factory=socket.socket)
    connections: int = 0
    passwords: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    transports: list[paramiko.Transport] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start(self) -> FakeSSHServer:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        threading.Thread(target=self._accept, name="fake-sshd", daemon=True).start()
        return self

    def stop(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        for transport in self.transports:
            transport.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        transport = paramiko.Transport(sock)
        transport.add_server_key(self.host_key)
        with self.lock:
            self.transports.append(transport)
        try:
            transport.start_server(server=_Recorder(self))
        except (paramiko.SSHException, EOFError, OSError):
            transport.close()


class _Recorder(paramiko.ServerInterface):
    def __init__(self, server: FakeSSHServer):
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "password,publickey"

    def check_auth_password(self, username: str, password: str) -> int:
        with self.server.lock:
            self.server.passwords.append(password)
        return paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_FAILED


@pytest.fixture
def keys(tmp_path: Path, settings) -> Path:
    """The only key folder (KEY_FILE_DIRS) of these tests."""
    folder = tmp_path / "keys"
    folder.mkdir()
    settings.KEY_FILE_DIRS = [str(folder)]
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


@pytest.fixture
def fake_sshd(tmp_path: Path) -> Iterator[FakeSSHServer]:
    generate_key(tmp_path / "fake_host_key")
    server = FakeSSHServer(paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "fake_host_key"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Values of the application's own settings in the environment, as on a real worker."""
    values = {name: f"leaked-{name.lower()}-3f9a" for name in APP_SETTINGS if name != "DJANGO_SETTINGS_MODULE"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**values, "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"]}


def attacker_options(server: FakeSSHServer, keys: Path, **extra: Any) -> dict[str, Any]:
    """What the attacker types into the project: their host, trusted on first use."""
    return {"type": "sftp", "host": "127.0.0.1", "port": server.port, "username": "loot", "remote_dir": "/loot",
            "known_hosts": str(keys / "known_hosts"), "accept_new_host_key": True, "connect_timeout": 5, **extra}


def write_options(project: Project, **changes: Any) -> Project:
    """Change stored destination options behind validation's back (an old row, a direct write)."""
    Project.objects.filter(pk=project.pk).update(destination_options={**project.destination_options, **changes})
    project.refresh_from_db()
    return project


# -- the attack, reproduced, and refused ----------------------------------------------------------
def test_an_allowed_password_variable_does_reach_the_server(make_project, fake_sshd, keys, monkeypatch):
    """The mechanism the attack abuses: the health check sends the named variable's value."""
    monkeypatch.setenv("UPLOADER_SECRET_SFTP_PASSWORD", "the-sftp-password")
    project = make_project(attacker_options(fake_sshd, keys, password_env="UPLOADER_SECRET_SFTP_PASSWORD"))

    ok, message = health.check_destination(project)

    assert not ok and "authentication failed" in message
    assert fake_sshd.passwords == ["the-sftp-password"]


@pytest.mark.parametrize("name", APP_SETTINGS)
@pytest.mark.parametrize("option", ["password_env", "passphrase_env"])
def test_config_refuses_the_apps_settings_as_sftp_secrets(fake_sshd, keys, option, name):
    generate_key(keys / "id")
    raw = {"project": "p", "source_dir": str(keys), "destination": attacker_options(
        fake_sshd, keys, key_file=str(keys / "id"), **{option: name})}

    with pytest.raises(ConfigError) as info:
        config.validate(raw)

    assert str(info.value).startswith(f"destination.{option}: {name} {OWN_SETTING}")
    assert "UPLOADER_SECRET_" in str(info.value)  # the hint: what to name it instead
    assert fake_sshd.connections == 0


@pytest.mark.parametrize("name", APP_SETTINGS)
def test_a_stored_password_variable_is_refused_by_the_health_check_before_connecting(
    make_project, fake_sshd, keys, app_secrets, monkeypatch, name
):
    monkeypatch.setenv("UPLOADER_SECRET_SFTP_PASSWORD", "pw")
    project = make_project(attacker_options(fake_sshd, keys, password_env="UPLOADER_SECRET_SFTP_PASSWORD"))
    write_options(project, password_env=name)

    ok, message = health.check_destination(project)

    assert not ok and f"password_env: {name} {OWN_SETTING}" in message
    project.refresh_from_db()
    assert project.health_ok is False and app_secrets[name] not in project.health_message
    assert (fake_sshd.connections, fake_sshd.passwords) == (0, [])
    assert not (keys / "known_hosts").exists()  # not even a host key was exchanged


def test_the_admin_health_action_refuses_a_stored_secret_key(admin_client, make_project, fake_sshd, keys, app_secrets):
    project = make_project(attacker_options(fake_sshd, keys, password_env="UPLOADER_SECRET_PW"), project="evil")
    write_options(project, password_env="SECRET_KEY")

    action = {"action": "check_health", "_selected_action": [project.pk]}
    page = html.unescape(admin_client.post("/admin/projects/project/", action, follow=True).content.decode())

    assert f"SECRET_KEY {OWN_SETTING}" in page  # in the message and the list's destination column
    assert app_secrets["SECRET_KEY"] not in page
    assert fake_sshd.connections == 0


def test_a_stored_passphrase_variable_is_refused_before_connecting(make_project, fake_sshd, keys, app_secrets):
    generate_key(keys / "id", passphrase="pass")
    project = make_project(attacker_options(fake_sshd, keys, key_file=str(keys / "id")))
    write_options(project, passphrase_env="DATABASE_URL")

    with pytest.raises(StartError, match=f"passphrase_env: DATABASE_URL {OWN_SETTING}"):
        kinds.SYNC.preflight(project).close()  # what `upload` and *Start sync* run first
    ok, message = health.check_destination(project)

    assert not ok and "passphrase_env: DATABASE_URL" in message
    assert fake_sshd.connections == 0


@pytest.mark.parametrize("option, name", [("password_env", "SECRET_KEY"), ("passphrase_env", "AWS_SECRET_ACCESS_KEY")])
def test_a_secret_name_is_checked_again_when_read(fake_sshd, keys, app_secrets, monkeypatch, option, name):
    """Options changed after validation (the destination is already built) are still refused."""
    generate_key(keys / "id")
    monkeypatch.setenv("UPLOADER_SECRET_X", "x")
    options = attacker_options(fake_sshd, keys, key_file=str(keys / "id"), **{option: "UPLOADER_SECRET_X"})
    options.pop("type")
    with SFTPDestination(options) as destination:
        destination.options[option] = name
        with pytest.raises(DestinationError) as info:
            destination.upload(__file__, "x.py")

    assert info.value.permanent and f"{option}: {name} {OWN_SETTING}" in info.value.message
    assert (fake_sshd.connections, fake_sshd.passwords) == (0, [])


def test_the_upload_command_refuses_secret_key_and_saves_nothing(transactional_db, fake_sshd, keys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"project": "evil", "source_dir": str(tmp_path),
                                "destination": attacker_options(fake_sshd, keys, password_env="SECRET_KEY")}))

    result = manage("upload", "--no-progress", "--config", str(path), env=manage_env(KEY_FILE_DIRS=str(keys)))

    assert result.returncode == 2
    assert f"destination.password_env: SECRET_KEY {OWN_SETTING}" in result.stderr
    assert not Project.objects.exists()
    assert fake_sshd.connections == 0


# -- Roboflow: the destination and the import ---------------------------------------------------
@pytest.mark.parametrize("name", APP_SETTINGS)
def test_roboflow_refuses_the_apps_settings_at_config_time(roboflow_api: RoboflowAPI, name):
    with pytest.raises(ConfigError, match=f"destination.api_key_env: {name} {OWN_SETTING}"):
        RoboflowDestination({"workspace": WORKSPACE, "project": PROJECT, "api_key_env": name})
    assert roboflow_api.requests == []


@pytest.mark.parametrize("name", APP_SETTINGS)
def test_a_stored_roboflow_key_variable_is_refused_before_any_request(
    make_project, roboflow_api: RoboflowAPI, app_secrets, monkeypatch, name
):
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    project = make_project({"type": "roboflow", "workspace": WORKSPACE, "project": PROJECT, "api_key_env": API_KEY_ENV})
    write_options(project, api_key_env=name)

    ok, message = health.check_destination(project)
    with pytest.raises(StartError, match=f"api_key_env: {name} {OWN_SETTING}"):
        kinds.SYNC.preflight(project).close()

    assert not ok and f"api_key_env: {name} {OWN_SETTING}" in message
    assert roboflow_api.requests == []


def test_a_roboflow_key_variable_is_checked_again_when_read(roboflow_api: RoboflowAPI, app_secrets, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    destination = RoboflowDestination({"workspace": WORKSPACE, "project": PROJECT, "api_key_env": API_KEY_ENV})
    destination.api.key_env = "AWS_SECRET_ACCESS_KEY"  # as if stored before the rule

    with pytest.raises(DestinationError, match=f"api_key_env: AWS_SECRET_ACCESS_KEY {OWN_SETTING}") as info:
        destination.check()

    assert info.value.permanent
    assert roboflow_api.requests == []


def test_roboflow_api_key_is_the_kinds_own_allowed_name(roboflow_api: RoboflowAPI, monkeypatch):
    monkeypatch.setenv("ROBOFLOW_API_KEY", API_KEY)
    destination = RoboflowDestination({"workspace": WORKSPACE, "project": PROJECT})

    destination.check()

    assert destination.options["api_key_env"] == "ROBOFLOW_API_KEY"
    assert roboflow_api.requests  # it did talk to Roboflow, with the key
    with pytest.raises(ConfigError, match="ROBOFLOW_API_KEY is not a secret variable"):
        check_env_name("ROBOFLOW_API_KEY", "notify_secret_env")  # only the kind that needs it may name it


@pytest.mark.parametrize("name", APP_SETTINGS)
def test_the_import_refuses_the_apps_settings_as_its_key(make_project, roboflow_api: RoboflowAPI, tmp_path,
                                                          app_secrets, name):
    project = make_project({"type": "local", "path": str(tmp_path / "store")}, project="into")

    with pytest.raises(ConfigError, match=f"^api_key_env: {name} {OWN_SETTING}"):
        importing.import_params(project, WORKSPACE, PROJECT, api_key_env=name)
    stored = {"workspace": WORKSPACE, "project": PROJECT, "api_key_env": name, "concurrency": 1, "workers": 1}
    with pytest.raises(StartError, match=f"api_key_env: {name} {OWN_SETTING}"):
        kinds.IMPORT.preflight(project, stored).close()  # params of a session written before the rule

    assert roboflow_api.requests == []


# -- notifications ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", APP_SETTINGS)
def test_config_refuses_the_apps_settings_as_the_notification_secret(tmp_path, name):
    raw = {"project": "p", "source_dir": str(tmp_path), "destination": {"type": "local", "path": str(tmp_path / "o")},
           "notify_url": "http://127.0.0.1:9/hook", "notify_secret_env": name}
    with pytest.raises(ConfigError, match=f"^notify_secret_env: {name} {OWN_SETTING}"):
        config.validate(raw)


@pytest.mark.parametrize("name", APP_SETTINGS)
def test_a_stored_notification_secret_name_is_refused_and_nothing_is_sent(make_project, tmp_path, receiver,
                                                                            app_secrets, name):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    Project.objects.filter(pk=project.pk).update(notify_secret_env=name)
    now = timezone.now()
    session = SyncSession.objects.create(project=Project.objects.get(pk=project.pk), status=SessionStatus.COMPLETED,
                                         started_at=now, finished_at=now)

    row = notifying.deliver(session, receiver.url())

    assert not row.succeeded and f"notify_secret_env: {name} {OWN_SETTING}" in row.error
    assert receiver.requests == []


# -- the rule and how operators widen it -----------------------------------------------------------
def test_only_prefixed_names_by_default():
    assert check_env_name("UPLOADER_SECRET_SFTP", "destination.password_env") == "UPLOADER_SECRET_SFTP"
    with pytest.raises(ConfigError) as info:
        check_env_name("SFTP_PASSWORD", "destination.password_env")
    assert str(info.value) == (
        "destination.password_env: SFTP_PASSWORD is not a secret variable projects may use; use a variable whose "
        "name starts with UPLOADER_SECRET_, or have the operator allow SFTP_PASSWORD in SECRET_ENV_ALLOWED"
    )
    for malformed in ("MY KEY", "UPLOADER_SECRET_X\n", "", 42):
        with pytest.raises(ConfigError, match="must be the name of an environment variable"):
            check_env_name(malformed, "destination.api_key_env")


def test_operators_widen_the_rule_with_names_and_prefixes(settings):
    settings.SECRET_ENV_ALLOWED = ["SFTP_PASSWORD", "LEGACY_*"]
    for name in ("SFTP_PASSWORD", "LEGACY_PW", "UPLOADER_SECRET_X"):
        assert check_env_name(name, "password_env") == name
    with pytest.raises(ConfigError, match="OTHER_PW is not a secret variable"):
        check_env_name("OTHER_PW", "password_env")

    settings.SECRET_ENV_PREFIXES = ["MYAPP_"]  # replaces the default prefix
    assert check_env_name("MYAPP_PW", "password_env") == "MYAPP_PW"
    with pytest.raises(ConfigError, match="use a variable whose name starts with MYAPP_"):
        check_env_name("UPLOADER_SECRET_X", "password_env")


@pytest.mark.parametrize("name", [
    "SECRET_KEY", "secret_key", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN", "EMAIL_HOST_PASSWORD", "KEY_FILE_DIRS",
    "DJANGO_SETTINGS_MODULE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "NOTIFY_ATTEMPTS",
    "SECRET_ENV_ALLOWED", "SECRET_KEY_FALLBACKS", "DEBUG",
])
def test_no_widening_re_allows_the_apps_own_settings(settings, name):
    settings.SECRET_ENV_ALLOWED = ["*", name]
    settings.SECRET_ENV_PREFIXES = ["", "SECRET_", "AWS_", "DJANGO_"]
    assert check_env_name("ANY_OTHER_NAME", "password_env") == "ANY_OTHER_NAME"  # the widening does apply
    with pytest.raises(ConfigError, match=OWN_SETTING):
        check_env_name(name, "password_env")


def test_a_widened_name_reaches_the_server(make_project, fake_sshd, keys, settings, monkeypatch):
    settings.SECRET_ENV_ALLOWED = ["SFTP_PASSWORD"]
    monkeypatch.setenv("SFTP_PASSWORD", "legacy-password")
    project = make_project(attacker_options(fake_sshd, keys, password_env="SFTP_PASSWORD"))

    health.check_destination(project)

    assert fake_sshd.passwords == ["legacy-password"]


def test_operators_set_the_rule_in_the_environment(keys):
    code = ("import json; from projects.secrets import check_env_name, key_file_dirs; "
            "print(json.dumps([[check_env_name(n, 'x') for n in ('LEGACY_PW', 'OLD_A')], key_file_dirs()]))")
    env = manage_env(SECRET_ENV_ALLOWED="LEGACY_PW, OLD_*", KEY_FILE_DIRS=f"{keys}, ~/.ssh")
    widened = manage("shell", "-c", code, env=env)
    refused = manage("shell", "-c", "from projects.secrets import check_env_name; check_env_name('SECRET_KEY', 'x')",
                     env=manage_env(SECRET_ENV_ALLOWED="SECRET_KEY"))

    assert widened.returncode == 0, widened.stderr
    assert last_line(widened.stdout) == [["LEGACY_PW", "OLD_A"], [str(keys), os.path.realpath(os.path.expanduser("~/.ssh"))]]
    assert refused.returncode != 0 and f"SECRET_KEY {OWN_SETTING}" in refused.stderr


def test_default_key_folders_are_the_ssh_folder_and_data_keys():
    env = {k: v for k, v in manage_env(DATA_DIR="/srv/uploader-data").items() if k != "KEY_FILE_DIRS"}
    code = "import json; from django.conf import settings; print(json.dumps(settings.KEY_FILE_DIRS))"
    shown = manage("shell", "-c", code, env=env)
    assert last_line(shown.stdout) == ["~/.ssh", "/srv/uploader-data/keys"], shown.stderr


def last_line(output: str) -> Any:
    return json.loads(output.strip().splitlines()[-1])


# -- key files and known_hosts ----------------------------------------------------------------------
def sftp(keys: Path, **options: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "username": "u", "remote_dir": "/r", "known_hosts": str(keys / "known_hosts"),
            **options}


def test_key_files_inside_the_key_folders_are_accepted(keys):
    generate_key(keys / "id")
    (keys / "sub").mkdir()
    (keys / "link").symlink_to(keys / "id")
    for key_file in (keys / "id", keys / "sub" / "id2", keys / "link"):
        assert SFTPDestination(sftp(keys, key_file=str(key_file))).options["key_file"] == str(key_file)


@pytest.mark.parametrize("where", ["outside", "symlink out", "dot-dot"])
def test_key_files_outside_the_key_folders_are_refused(keys, outside, where):
    generate_key(outside / "id")
    key_file = {"outside": outside / "id", "symlink out": keys / "id", "dot-dot": keys / ".." / "elsewhere" / "id"}[where]
    if where == "symlink out":
        key_file.symlink_to(outside / "id")

    with pytest.raises(ConfigError) as info:
        SFTPDestination(sftp(keys, key_file=str(key_file)))

    assert str(info.value).startswith(f"destination.key_file: {key_file}")
    assert f"is outside the key folders (KEY_FILE_DIRS: {keys})" in str(info.value)
    if where == "symlink out":
        assert f"resolves to {outside / 'id'}" in str(info.value)


@pytest.mark.parametrize("known_hosts, problem", [
    ("elsewhere/known_hosts", "is outside the key folders"),
    ("keys/link_known_hosts", "is outside the key folders"),  # a symlink leading out
    ("keys/authorized_keys", "must be a file with 'known_hosts' in its name"),
    ("keys/known_hosts_link", "must be a file with 'known_hosts' in its name (not 'authorized_keys')"),
])
def test_known_hosts_outside_the_key_folders_or_not_named_so_is_refused(keys, outside, known_hosts, problem):
    (keys / "link_known_hosts").symlink_to(outside / "known_hosts")
    (keys / "known_hosts_link").symlink_to(keys / "authorized_keys")
    path = keys.parent / known_hosts

    with pytest.raises(ConfigError, match="^destination.known_hosts: ") as info:
        SFTPDestination(sftp(keys, known_hosts=str(path), key_file=None, use_agent=True))

    assert problem in str(info.value)


def test_stored_key_file_and_known_hosts_outside_are_refused_before_connecting(make_project, fake_sshd, keys,
                                                                               outside):
    generate_key(keys / "id")
    generate_key(outside / "id")
    project = make_project(attacker_options(fake_sshd, keys, key_file=str(keys / "id")))

    for change in ({"key_file": str(outside / "id")}, {"known_hosts": str(outside / "known_hosts")}):
        write_options(project, **change)
        ok, message = health.check_destination(project)
        assert not ok and "is outside the key folders" in message
        write_options(project, key_file=str(keys / "id"), known_hosts=str(keys / "known_hosts"))

    assert fake_sshd.connections == 0
    assert not (outside / "known_hosts").exists()  # accept_new_host_key appended nothing there


def test_a_key_file_swapped_for_a_symlink_after_validation_is_refused(fake_sshd, keys, outside):
    generate_key(keys / "id")
    generate_key(outside / "id")
    options = attacker_options(fake_sshd, keys, key_file=str(keys / "id"))
    options.pop("type")
    with SFTPDestination(options) as destination:
        (keys / "id").unlink()
        (keys / "id").symlink_to(outside / "id")
        ok, message = destination.health()

    assert not ok and f"resolves to {outside / 'id'}" in message
    assert fake_sshd.connections == 0
