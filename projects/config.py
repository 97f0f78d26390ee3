"""One validated config from a JSON file, the environment and command-line overrides.

Precedence: command line > config file > environment (UPLOADER_*) > built-in defaults.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

from django.db import transaction

from projects.destinations import destination_class
from projects.errors import ConfigError
from projects.models import ConfigHistory, Project
from projects.outbound import check_http_url
from projects.schema import KEYS, KINDS, env_name, option_types, project_fields, type_name
from projects.secrets import check_secret_options


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
    A string setting stays a string (UPLOADER_PROJECT=2024 names project "2024"); other values
    are parsed as JSON when they parse (numbers, booleans, lists), else taken as strings."""
    environ = dict(os.environ) if environ is None else environ
    out = {key: _env_value(environ[env_name(key)], opt.types) for key, opt in KEYS.items()
           if key != "destination" and env_name(key) in environ}
    names = {"type", *(name for kind in KINDS.values() for name in kind.options)}
    dest = {name: _env_value(environ[env_name(name, destination=True)], option_types(name)) for name in names
            if env_name(name, destination=True) in environ}
    if dest:
        out["destination"] = dest
    return out


def _env_value(raw: str, types: tuple[type, ...]) -> Any:
    return raw if types == (str,) else _parse_env_value(raw)


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
    """The config with defaults filled in and values normalised; ConfigError names the first wrong key."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key (known: {', '.join(KEYS)})")
    clean: dict[str, Any] = {}
    for key, opt in KEYS.items():
        value = raw.get(key, opt.default_value())
        if value is None and opt.required:
            raise ConfigError(f"{key}: required")
        clean[key] = None if value is None else opt.check(key, value)
    _check_lists(clean)
    check_secret_options(clean)  # notify_secret_env
    clean["destination"] = _validate_destination(clean["destination"])
    clean["source_dir"] = os.path.abspath(os.path.expanduser(clean["source_dir"]))
    if clean["notify_url"]:
        check_http_url(clean["notify_url"], "notify_url")
        if urlsplit(clean["notify_url"]).password is not None:
            raise ConfigError("notify_url: must not contain a password (it would be stored); "
                              "sign requests with notify_secret_env instead")
        if clean["notify_url_env"]:
            raise ConfigError("notify_url_env: give notify_url or notify_url_env, not both")
    if not clean["project"].strip():
        raise ConfigError("project: must not be empty")
    if any(seg in (".", "..") for seg in re.split(r"[/\\]", clean["thumbnail_prefix"])):
        raise ConfigError("thumbnail_prefix: must not contain . or .. segments")
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
        raise ConfigError(f"destination.type: required (one of: {', '.join(KINDS)})")
    if not isinstance(kind, str):
        raise ConfigError(f"destination.type: expected string, got {type_name(kind)}")
    options = destination_class(kind).validate_options(dest)
    return {"type": kind, **options}


def check_source_dir(path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"source_dir: folder not found: {path}")
    if not os.path.isdir(path):
        raise ConfigError(f"source_dir: not a folder: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"source_dir: permission denied: {path}")


def unsaved_project(clean: dict[str, Any]) -> Project:
    """The project a validated config describes, not saved (a dry run, a preflight before any
    change); the stored project's id when there is one."""
    fields = project_fields(clean)
    project = Project(**fields)
    project.pk = Project.objects.filter(name=project.name).values_list("pk", flat=True).first()
    return project


@transaction.atomic
def apply(clean: dict[str, Any], source: str, created_by: str = "") -> tuple[Project, ConfigHistory]:
    """Create or update the project from a validated config and record its ConfigHistory."""
    fields = project_fields(clean)
    name = fields.pop("name")
    # NO KEY UPDATE, not update_or_create's FOR UPDATE: running sessions' inserts check their
    # foreign key to the project (KEY SHARE) and must not wait behind a start.
    project = Project.objects.select_for_update(no_key=True).filter(name=name).first()
    if project is None:
        project = Project.objects.create(name=name, **fields)
    else:
        for attr, value in fields.items():
            setattr(project, attr, value)
        project.save()
    return project, project.record_config(source, created_by)


def load(config_file: str | None, overrides: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """File + environment + overrides -> validated config. Raises ConfigError.
    Without a file, an existing project named in the overrides supplies its current config."""
    if config_file:
        file_layer = load_file(config_file)
    else:
        existing = Project.objects.filter(name=overrides.get("project") or "").first()
        file_layer = existing.effective_config() if existing else {}
        if existing:
            file_layer["notify_url"] = existing.notify_url or None  # the real one, not the redacted
    given = {k: v for k, v in overrides.items() if v is not None}
    if "destination" in overrides:
        given["destination"] = {k: v for k, v in overrides["destination"].items() if v is not None}
    return validate(merge(env_defaults(environ), file_layer, given))
