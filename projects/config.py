"""One validated config from a JSON file, the environment and command-line overrides.

Precedence: command line > config file > environment (UPLOADER_*) > built-in defaults.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

from django.db import transaction

from projects.destinations import ConfigError, destination_class
from projects.models import ConfigHistory, Project
from projects.secrets import check_secret_options


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None


SCHEMA: dict[str, Field] = {
    "project": Field((str,), required=True),
    "source_dir": Field((str,), required=True),
    "destination": Field((dict,), required=True),
    "extensions": Field((list,), default=[]),
    "exclude": Field((list,), default=[]),
    "follow_symlinks": Field((bool,), default=False),
    "upload_workers": Field((int,), default=15, minimum=1),
    "upload_tasks": Field((int,), default=2, minimum=1),
    "max_retries": Field((int,), default=3, minimum=0),
    "retry_backoff_base": Field((int, float), default=30.0, minimum=0),
    "retry_backoff_cap": Field((int, float), default=3600.0, minimum=0),
    "notify_url": Field((str,), default=None),
    "notify_on": Field((str,), default="never", choices=tuple(Project.NotifyOn.values)),
    "notify_secret_env": Field((str,), default=None),
    "notify_timeout": Field((int, float), default=10.0, minimum=0.1),
    "queue_limit": Field((int,), default=100, minimum=1),
}

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"config file is a directory: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object, not {type(data).__name__}")
    return data


def env_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """UPLOADER_<KEY> for top-level keys, UPLOADER_DESTINATION_<OPTION> for destination options.
    Values are parsed as JSON when they parse (numbers, booleans, lists), else taken as strings."""
    environ = dict(os.environ) if environ is None else environ
    out: dict[str, Any] = {}
    dest: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("UPLOADER_"):
            continue
        key = name[len("UPLOADER_"):].lower()
        if key.startswith("destination_"):
            dest[key[len("destination_"):]] = _parse_env_value(raw)
        elif key in SCHEMA and key != "destination":
            # A string setting stays a string (UPLOADER_PROJECT=2024 names project "2024").
            out[key] = raw if SCHEMA[key].types == (str,) else _parse_env_value(raw)
    if dest:
        out["destination"] = dest
    return out


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; "destination" merges option by option. None in an override means unset."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "destination" and isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key (known: {', '.join(SCHEMA)})")
    clean: dict[str, Any] = {}
    for key, field in SCHEMA.items():
        value = raw.get(key, copy.deepcopy(field.default))
        if value is None:
            if field.required:
                raise ConfigError(f"{key}: required")
            clean[key] = None
            continue
        if isinstance(value, bool) and bool not in field.types:
            raise ConfigError(f"{key}: expected {_names(field.types)}, got boolean")
        if not isinstance(value, field.types):
            raise ConfigError(f"{key}: expected {_names(field.types)}, got {_json_type(value)}")
        if field.choices and value not in field.choices:
            raise ConfigError(f"{key}: must be one of {', '.join(field.choices)}")
        if field.minimum is not None and value < field.minimum:
            raise ConfigError(f"{key}: must be at least {field.minimum:g}")
        clean[key] = value
    _check_lists(clean)
    check_secret_options(clean)  # notify_secret_env
    clean["destination"] = _validate_destination(clean["destination"])
    clean["source_dir"] = os.path.abspath(os.path.expanduser(clean["source_dir"]))
    if clean["notify_url"]:
        from projects.outbound import check_http_url

        check_http_url(clean["notify_url"], "notify_url")
        if urlsplit(clean["notify_url"]).password is not None:
            raise ConfigError("notify_url: must not contain a password (it would be stored); "
                              "sign requests with notify_secret_env instead")
    if not clean["project"].strip():
        raise ConfigError("project: must not be empty")
    return clean


def _check_lists(clean: dict[str, Any]) -> None:
    for key in ("extensions", "exclude"):
        for item in clean[key]:
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{key}: every item must be a non-empty string")
    clean["extensions"] = [e.lower() if e.startswith(".") else "." + e.lower() for e in clean["extensions"]]


def _validate_destination(dest: dict[str, Any]) -> dict[str, Any]:
    kind = dest.get("type")
    if not kind:
        raise ConfigError("destination.type: required (one of: s3, local, sftp, roboflow)")
    if not isinstance(kind, str):
        raise ConfigError(f"destination.type: expected string, got {_json_type(kind)}")
    options = destination_class(kind).validate_options(dest)
    return {"type": kind, **options}


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _json_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def check_source_dir(path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"source_dir: folder not found: {path}")
    if not os.path.isdir(path):
        raise ConfigError(f"source_dir: not a folder: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"source_dir: permission denied: {path}")


@transaction.atomic
def apply(clean: dict[str, Any], source: str, created_by: str = "") -> tuple[Project, ConfigHistory]:
    """Create or update the project from a validated config and record its ConfigHistory."""
    dest = dict(clean["destination"])
    kind = dest.pop("type")
    fields = {
        "source_dir": clean["source_dir"],
        "destination_kind": kind,
        "destination_options": dest,
        "extensions": clean["extensions"],
        "exclude": clean["exclude"],
        "follow_symlinks": clean["follow_symlinks"],
        "upload_workers": clean["upload_workers"],
        "upload_tasks": clean["upload_tasks"],
        "max_retries": clean["max_retries"],
        "retry_backoff_base": float(clean["retry_backoff_base"]),
        "retry_backoff_cap": float(clean["retry_backoff_cap"]),
        "notify_url": clean["notify_url"] or "",
        "notify_on": clean["notify_on"],
        "notify_secret_env": clean["notify_secret_env"] or "",
        "notify_timeout": float(clean["notify_timeout"]),
        "queue_limit": clean["queue_limit"],
    }
    project, _ = Project.objects.update_or_create(name=clean["project"], defaults=fields)
    return project, project.record_config(source, created_by)


def config_from_project(project: Project) -> dict[str, Any]:
    """The effective config of a project in config-file form, secrets redacted."""
    dest_cls = destination_class(project.destination_kind)
    destination = dest_cls(project.destination_options).redacted_options()
    return {
        "project": project.name,
        "source_dir": project.source_dir,
        "destination": {"type": project.destination_kind, **destination},
        "extensions": list(project.extensions),
        "exclude": list(project.exclude),
        "follow_symlinks": project.follow_symlinks,
        "upload_workers": project.upload_workers,
        "upload_tasks": project.upload_tasks,
        "max_retries": project.max_retries,
        "retry_backoff_base": project.retry_backoff_base,
        "retry_backoff_cap": project.retry_backoff_cap,
        "notify_url": _redact_url(project.notify_url) or None,
        "notify_on": project.notify_on,
        "notify_secret_env": project.notify_secret_env or None,
        "notify_timeout": project.notify_timeout,
        "queue_limit": project.queue_limit,
    }


def _redact_url(url: str) -> str:
    from projects.outbound import redact_url

    return redact_url(url)


def load(config_file: str | None, overrides: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """File + environment + overrides -> validated config. Raises ConfigError.
    Without a file, an existing project named in the overrides supplies its current config."""
    if config_file:
        file_layer = load_file(config_file)
    else:
        existing = Project.objects.filter(name=overrides.get("project") or "").first()
        file_layer = config_from_project(existing) if existing else {}
        if existing:
            file_layer["notify_url"] = existing.notify_url or None  # the real one, not the redacted
    given = {k: v for k, v in overrides.items() if v is not None}
    if "destination" in overrides:
        given["destination"] = {k: v for k, v in overrides["destination"].items() if v is not None}
    return validate(merge(env_defaults(environ), file_layer, given))
