"""Every config key and every destination option, declared once: name, type, default, help,
limits. Validation (config.py, each destination kind), the environment (UPLOADER_*), the
Project model's defaults, the admin form and the README's tables are all derived from here."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from projects.annotations import SPLITS
from projects.errors import ConfigError

ENV_PREFIX = "UPLOADER_"
GROUPS = ("Source", "Destination", "Transfers and retries", "Notifications", "Browser uploads")
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}


class NotifyOn(models.TextChoices):
    NEVER = "never", "Never"
    COMPLETED = "completed", "When completed without errors"
    ALWAYS = "always", "Whenever a session ends"


@dataclass(frozen=True)
class Option:
    """One setting: a top-level config key or one option of a destination kind."""

    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    help: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None  # a sane upper bound: a value above it is a typo, not a wish
    group: str = ""  # top-level keys: the admin fieldset
    field: str = ""  # top-level keys: the Project attribute, when not named like the key

    def default_value(self) -> Any:
        return copy.deepcopy(self.default)

    def check(self, label: str, value: Any) -> Any:
        """The value, or ConfigError naming `label` when it has the wrong type or is out of range."""
        if isinstance(value, bool) and bool not in self.types:
            raise ConfigError(f"{label}: expected {type_names(self.types)}, got boolean")
        if not isinstance(value, self.types):
            raise ConfigError(f"{label}: expected {type_names(self.types)}, got {type_name(value)}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{label}: must be one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{label}: must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{label}: must be at most {self.maximum:g}")
        return value

    @property
    def optional_string(self) -> bool:
        """A string that may be unset: stored as "" in the model, None in the config."""
        return self.types == (str,) and self.default is None and not self.required


@dataclass(frozen=True)
class Kind:
    """A destination kind as a person sees it; its behaviour lives in projects/destinations/."""

    label: str
    options: dict[str, Option] = field(default_factory=dict)


SOURCE, DESTINATION, TRANSFERS, NOTIFICATIONS, BROWSER = GROUPS
DEFAULT_DESTINATION = "default"  # the name of the one destination a `destination` key gives
# Threads per task and processes per session: more is a typo, and would exhaust the machine.
MAX_WORKERS, MAX_TASKS = 1000, 256

KEYS: dict[str, Option] = {
    "project": Option((str,), required=True, help="unique project name", group=SOURCE, field="name"),
    "source_dir": Option((str,), required=True, help="the folder to sync", group=SOURCE),
    "destination": Option((dict,), group=DESTINATION,
                          help="type plus that kind's options (below): the one destination, named `default`; "
                               "required unless `destinations` is given"),
    "destinations": Option((list,), group=DESTINATION,
                           help="several destinations: a list of objects, each a `name` (unique in the project: "
                                "letters, digits, `-`, `_`) plus a type and its options; instead of `destination`"),
    "extensions": Option((list,), default=[], group=SOURCE,
                         help="include only these extensions (case-insensitive); empty: every file"),
    "exclude": Option((list,), default=[], group=SOURCE,
                      help="glob patterns on the relative path (one without a slash matches at any depth)"),
    "follow_symlinks": Option((bool,), default=False, group=SOURCE,
                              help="follow symlinked files and folders (loops are detected)"),
    "upload_workers": Option((int,), default=15, minimum=1, maximum=MAX_WORKERS, group=TRANSFERS,
                             help="concurrent transfers per upload task (threads)"),
    "upload_tasks": Option((int,), default=2, minimum=1, maximum=MAX_TASKS, group=TRANSFERS,
                           help="parallel upload tasks (processes) per session"),
    "max_retries": Option((int,), default=3, minimum=0, group=TRANSFERS,
                          help="retries of a transient error per file (and the limit of retry rounds)"),
    "throttle_patience": Option((int, float), default=900.0, minimum=1, group=TRANSFERS,
                                help="seconds a file may wait on a throttling destination (503 SlowDown, "
                                     "429) before the session pauses; throttled attempts do not count "
                                     "against max_retries"),
    "preflight_timeout": Option((int, float), default=10.0, minimum=0.1, maximum=60, group=DESTINATION,
                                help="seconds the checks before a session wait for the destination to "
                                     "connect and to answer"),
    "retry_backoff_base": Option((int, float), default=30.0, minimum=0, group=TRANSFERS,
                                 help="seconds before the first automatic retry round"),
    "retry_backoff_cap": Option((int, float), default=3600.0, minimum=0, group=TRANSFERS,
                                help="longest wait in seconds between automatic retry rounds"),
    "notify_url": Option((str,), group=NOTIFICATIONS,
                         help="endpoint POSTed the session summary (http or https, never with user:password)"),
    "notify_url_env": Option((str,), group=NOTIFICATIONS,
                             help="NAME of the environment variable holding the endpoint URL (for URLs with tokens)"),
    "notify_on": Option((str,), default=NotifyOn.NEVER.value, choices=tuple(NotifyOn.values), group=NOTIFICATIONS,
                        help="when a session's end is notified; completed: only without errors"),
    "notify_secret_env": Option((str,), group=NOTIFICATIONS,
                                help="NAME of the environment variable holding the HMAC secret"),
    "notify_timeout": Option((int, float), default=10.0, minimum=0.1, group=NOTIFICATIONS,
                             help="seconds to wait for the endpoint"),
    "queue_limit": Option((int,), default=100, minimum=1, group=TRANSFERS,
                          help="backlog limit of the upload queue"),
    "check_destination_every": Option((int, float), minimum=0, group=DESTINATION,
                                      help="days between full listings of the destination, which reconcile the "
                                           "catalog with it; empty: only the first sync and when asked; 0: every "
                                           "sync"),
    "thumbnail_size": Option((int,), default=256, minimum=16, group=BROWSER,
                             help="longest edge in pixels of the WebP thumbnail made of each uploaded image"),
    "thumbnail_prefix": Option((str,), default="thumbnails/", group=BROWSER,
                               help="where thumbnails go at the destination, as <prefix><relative path>.webp "
                                    "(no . or .. segments)"),
    "upload_max_file_mb": Option((int,), minimum=1, group=BROWSER,
                                 help="largest file a browser upload accepts, in MiB; empty: the site's "
                                      "UPLOAD_MAX_FILE_BYTES"),
    "upload_quota_mb": Option((int,), minimum=1, group=BROWSER,
                              help="most MiB of browser uploads the project may hold in staging at once "
                                   "(received or arriving, not yet sent on); empty: no quota"),
}

KINDS: dict[str, Kind] = {
    "s3": Kind("Amazon S3 / S3-compatible", {
        "bucket": Option((str,), required=True, help="bucket name"),
        "prefix": Option((str,), default="", help="key prefix everything goes under (no . or .. segments)"),
        "region": Option((str,), help="AWS region, e.g. us-east-1"),
        "endpoint_url": Option((str,), help="for S3-compatible servers (http or https, no user:password)"),
        "aws_profile": Option((str,), help="a profile of ~/.aws/credentials (else the default credential chain)"),
        "storage_class": Option((str,), help="e.g. STANDARD_IA; empty: the bucket's default"),
        "addressing_style": Option((str,), default="auto", choices=("auto", "path", "virtual"),
                                   help="bucket in the path or in the host name"),
        "multipart_threshold_mb": Option((int,), default=64, minimum=5, help="files above this go up in parts"),
        "multipart_chunk_mb": Option((int,), default=16, minimum=5, help="size of each part"),
        "max_pool_connections": Option((int,), default=64, minimum=1, maximum=MAX_WORKERS,
                                       help="HTTP connections per upload task"),
    }),
    "sftp": Kind("SFTP server", {
        "host": Option((str,), required=True, help="server name or address"),
        "port": Option((int,), default=22, help="SSH port"),
        "username": Option((str,), required=True, help="login name"),
        "remote_dir": Option((str,), required=True,
                             help="remote folder everything goes under (no . or .. segments)"),
        "key_file": Option((str,), help="path of a private key file"),
        "passphrase_env": Option((str,), help="NAME of the environment variable holding the key's passphrase"),
        "password_env": Option((str,), help="NAME of the environment variable holding the password"),
        "use_agent": Option((bool,), default=False, help="authenticate with the keys of a running ssh-agent"),
        "known_hosts": Option((str,), default="~/.ssh/known_hosts", help="file of trusted host keys"),
        "accept_new_host_key": Option((bool,), default=False,
                                      help="trust and record an unknown host key (a changed one is always refused)"),
        "connect_timeout": Option((int, float), default=15, help="seconds to connect"),
    }),
    "roboflow": Kind("Roboflow", {
        "workspace": Option((str,), required=True, help="workspace url: the slug after app.roboflow.com/"),
        "project": Option((str,), required=True, help="project url (slug)"),
        "api_key_env": Option((str,), default="ROBOFLOW_API_KEY",
                              help="NAME of the environment variable holding the API key"),
        "neither_project": Option((str,), help="project for images under a neither/ folder"),
        "tags": Option((list,), default=[], help="tags applied to every image"),
        "batch_name": Option((str,), help="upload batch; default: PROJECT-session-ID"),
        "split": Option((str,), default="train", choices=SPLITS, help="split of images not in a split folder"),
        "timeout": Option((int, float), default=60.0, help="seconds to connect and to wait for each read"),
    }),
    "local": Kind("Local folder", {
        "path": Option((str,), required=True, help="target folder on the workers' machine (no . or .. segments)"),
        "prefix": Option((str,), default="", help="sub-folder under path (no . or .. segments)"),
        "create": Option((bool,), default=True, help="create the target folder when missing"),
    }),
}

# Options naming an environment variable that holds a secret (checked by projects.checks).
SECRET_ENV_OPTIONS = ("password_env", "passphrase_env", "api_key_env")


def type_names(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def env_name(key: str, destination: bool = False) -> str:
    return f"{ENV_PREFIX}{'DESTINATION_' if destination else ''}{key.upper()}"


def option_types(name: str) -> tuple[type, ...]:
    """The types of a destination option of that name in any kind (names mean one thing everywhere)."""
    return next((kind.options[name].types for kind in KINDS.values() if name in kind.options), (str,))


# -- the Project model's side ------------------------------------------------------------------
def attribute(key: str) -> str:
    """The Project attribute of a top-level key (the destination's are destination_kind and _options)."""
    return KEYS[key].field or key


def project_fields(clean: dict[str, Any]) -> dict[str, Any]:
    """The Project attributes of a validated config; `extra_destinations` is the list of
    (name, kind, options) of the destinations after the first (ProjectDestination rows)."""
    fields: dict[str, Any] = {}
    for key, opt in KEYS.items():
        value = clean[key]
        if key == "destination":
            continue
        if key == "destinations":
            specs = [destination_spec(d) for d in value]
            fields["destination_name"], fields["destination_kind"], fields["destination_options"] = specs[0]
            fields["extra_destinations"] = specs[1:]
        elif opt.optional_string:
            fields[attribute(key)] = value or ""
        else:
            fields[attribute(key)] = float(value) if float in opt.types and value is not None else value
    return fields


def destination_spec(dest: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(name, kind, options) of a validated destination object."""
    options = dict(dest)
    return options.pop("name"), options.pop("type"), options


def config_of(project: Any, specs: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """A project's config in config-file form, with its destinations' (name, kind, options) given:
    one destination named `default` as `destination`, otherwise the `destinations` list."""
    config: dict[str, Any] = {}
    for key, opt in KEYS.items():
        if key == "destination":
            if len(specs) == 1 and specs[0][0] == DEFAULT_DESTINATION:
                config[key] = {"type": specs[0][1], **specs[0][2]}
        elif key == "destinations":
            if "destination" not in config:
                config[key] = [{"name": name, "type": kind, **options} for name, kind, options in specs]
        elif opt.optional_string:
            config[key] = getattr(project, attribute(key)) or None
        elif opt.types == (list,):
            config[key] = list(getattr(project, attribute(key)))
        else:
            config[key] = getattr(project, attribute(key))
    return config


# -- the README's side -------------------------------------------------------------------------
def readme_tables() -> str:
    """The README's tables of config keys and destination options (tests/test_readme.py keeps them equal)."""
    lines = ["| key | type | default | environment | meaning |", "| --- | --- | --- | --- | --- |"]
    for key, opt in KEYS.items():
        env = env_name("type", destination=True) if key == "destination" else env_name(key)
        if key == "destinations":
            env = f"{env}__<NAME>__<OPTION>"
        lines.append(f"| `{key}` | {type_names(opt.types)} | {_default_text(opt)} | `{env}` | {_meaning(opt)} |")
    lines += ["", "| destination type | option | type | default | environment | meaning |",
              "| --- | --- | --- | --- | --- | --- |"]
    for kind_name, kind in KINDS.items():
        for name, opt in kind.options.items():
            lines.append(f"| `{kind_name}` | `{name}` | {type_names(opt.types)} | {_default_text(opt)} "
                         f"| `{env_name(name, destination=True)}` | {_meaning(opt)} |")
    return "\n".join(lines)


def _meaning(opt: Option) -> str:
    limits = [f"one of {', '.join(map(str, opt.choices))}"] if opt.choices else []
    limits += [f"at least {opt.minimum:g}"] if opt.minimum is not None else []
    limits += [f"at most {opt.maximum:g}"] if opt.maximum is not None else []
    return opt.help + (f" ({'; '.join(limits)})" if limits else "")


def _default_text(opt: Option) -> str:
    return "required" if opt.required else f"`{json.dumps(opt.default)}`"


if __name__ == "__main__":  # python -m projects.schema: the tables to paste into README.md
    print(readme_tables())
