"""Which secrets a project may name: environment variables, key files and known_hosts files.

Options only *name* their secrets (`password_env`, `passphrase_env`, `api_key_env`,
`notify_secret_env`, `key_file`, `known_hosts`), but whoever may edit a project chooses the
server the workers then send that secret to. So a name must follow a rule the operator sets:

- a variable starts with one of SECRET_ENV_PREFIXES (default `UPLOADER_SECRET_`), is a name the
  destination kind needs (`ROBOFLOW_API_KEY`), or is listed in SECRET_ENV_ALLOWED (an entry
  ending in `*` is a prefix); and it is never one of the application's own settings
  (REFUSED_NAMES, REFUSED_PREFIXES, any Django setting), whatever the operator allowed;
- a key file or known_hosts file resolves (symlinks followed) inside one of KEY_FILE_DIRS, and a
  known_hosts file, which the workers append to, has `known_hosts` in its name.

Names are checked when a config is validated and again when the secret is used, so a name
stored before this rule, or written into the database directly, is refused before any connection.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings

from projects.errors import ConfigError, DestinationError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REFUSED_NAMES = frozenset({"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN", "EMAIL_HOST_PASSWORD",
                           "KEY_FILE_DIRS"})
# DJANGO_*: Django's own; AWS_*: the process's cloud credentials; NOTIFY_*, SECRET_ENV_*: ours.
REFUSED_PREFIXES = ("DJANGO_", "AWS_", "NOTIFY_", "SECRET_ENV_")
KNOWN_HOSTS_MARK = "known_hosts"


class SecretRefused(ConfigError, DestinationError):
    """A secret reference the rule refuses. A ConfigError while a config is validated and a
    permanent DestinationError when met at use time, so callers of either kind report it."""

    def __init__(self, message: str):
        super().__init__(message, permanent=True)


# -- environment variables -----------------------------------------------------------------------
def check_env_name(name: Any, option: str, well_known: Iterable[str] = ()) -> str:
    """`name` when a project may name it as a secret variable; SecretRefused otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SecretRefused(f"{option}: must be the name of an environment variable (letters, digits and _), "
                            f"not {name!r}")
    if _is_own_setting(name):
        raise SecretRefused(f"{option}: {name} is one of the application's own settings and never a project's "
                            f"secret; {_hint(well_known)}")
    if not _allowed(name, well_known):
        raise SecretRefused(f"{option}: {name} is not a secret variable projects may use; {_hint(well_known)}, "
                            f"or have the operator allow {name} in SECRET_ENV_ALLOWED")
    return name


def check_secret_options(options: Mapping[str, Any], prefix: str = "", well_known: Iterable[str] = ()) -> None:
    """Check the secret references among options that are set (not None or ""): every `*_env`
    option (each names a variable), `key_file` and `known_hosts`. `prefix` goes before option names."""
    for option, value in options.items():
        if value is None or value == "":
            continue
        if option.endswith("_env"):
            check_env_name(value, prefix + option, well_known)
        elif option == "key_file":
            check_key_file(value, prefix + option)
        elif option == "known_hosts":
            check_known_hosts(value, prefix + option)


def read_secret(name: str | None, option: str = "secret", well_known: Iterable[str] = ()) -> str | None:
    """The value of the variable `name` (None when no name is given or it is unset), the name
    checked again now: a stored config may predate the rule or have bypassed validation."""
    if not name:
        return None
    return os.environ.get(check_env_name(name, option, well_known))


def _is_own_setting(name: str) -> bool:
    upper = name.upper()
    return upper in REFUSED_NAMES or upper.startswith(REFUSED_PREFIXES) or hasattr(settings, upper)


def _allowed(name: str, well_known: Iterable[str]) -> bool:
    if name.startswith(tuple(_listed("SECRET_ENV_PREFIXES"))) or name in well_known:
        return True
    for entry in _listed("SECRET_ENV_ALLOWED"):
        if name == entry or (entry.endswith("*") and name.startswith(entry[:-1])):
            return True
    return False


def _hint(well_known: Iterable[str]) -> str:
    prefixes = " or ".join(_listed("SECRET_ENV_PREFIXES")) or "(no prefix configured)"
    names = ", ".join(well_known)
    return f"use a variable whose name starts with {prefixes}" + (f" (or {names})" if names else "")


# -- key files -----------------------------------------------------------------------------------
def check_key_file(path: str, option: str = "key_file") -> str:
    """The real path of a key file (~ expanded, symlinks followed), when inside KEY_FILE_DIRS."""
    real = os.path.realpath(os.path.expanduser(path))
    folders = key_file_dirs()
    if not any(real == folder or real.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders):
        resolved = f" (it resolves to {real})" if real != os.path.abspath(os.path.expanduser(path)) else ""
        where = ", ".join(folders) or "none are configured"
        raise SecretRefused(f"{option}: {path}{resolved} is outside the key folders (KEY_FILE_DIRS: {where}); "
                            f"put the file in one of them, or have the operator add its folder to KEY_FILE_DIRS")
    return real


def check_known_hosts(path: str, option: str = "known_hosts") -> str:
    """check_key_file, and the file's name says it is a known_hosts file: new host keys are
    appended to it, which must never reach authorized_keys, an ssh config or a shell rc file."""
    real = check_key_file(path, option)
    if KNOWN_HOSTS_MARK not in os.path.basename(real):
        raise SecretRefused(f"{option}: {path} must be a file with {KNOWN_HOSTS_MARK!r} in its name "
                            f"(not {os.path.basename(real)!r})")
    return real


def key_file_dirs() -> list[str]:
    """KEY_FILE_DIRS as real paths; `~` is the home of the user running this process."""
    return [os.path.realpath(os.path.expanduser(folder)) for folder in _listed("KEY_FILE_DIRS")]


def _listed(setting: str) -> list[str]:
    return [entry.strip() for entry in getattr(settings, setting) if entry.strip()]
