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
from projects.models import ConfigHistory, Project, ProjectDestination
from projects.outbound import check_http_url
from projects.schema import DEFAULT_DESTINATION, KEYS, KINDS, env_name, option_types, project_fields, type_name
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
    if named := _named_env(environ):
        out[NAMED] = named
    return out


NAMED = "destinations by name"  # a layer's options for destinations named in it: {name: {option: value}}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _named_env(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """UPLOADER_DESTINATIONS__<NAME>__<OPTION>: an option of the destination of that name (any case)."""
    head = env_name("destinations") + "__"
    named: dict[str, dict[str, Any]] = {}
    for var, raw in environ.items():
        if var.startswith(head) and "__" in var[len(head):]:
            name, _, option = var[len(head):].partition("__")
            option = option.lower()
            named.setdefault(name.lower(), {})[option] = _env_value(raw, option_types(option))
    return named


def named_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """--destination-option NAME.OPTION=VALUE (repeatable): values parsed as JSON when they parse."""
    named: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        name, dot, option = target.partition(".")
        if not (eq and dot and name and option):
            raise ConfigError(f"--destination-option {item}: expected NAME.OPTION=VALUE")
        named.setdefault(name, {})[option] = _env_value(raw, option_types(option))
    return named


def _apply_named(config: dict[str, Any], named: dict[str, dict[str, Any]], *, over: bool) -> None:
    """Options addressed to destinations by name: over the config's own (command line), or under
    them (environment defaults). A name the config does not have is an error."""
    if not named:
        return
    dests = config.get("destinations")
    if not isinstance(dests, list):
        dests = [{"name": DEFAULT_DESTINATION, **config["destination"]}] if isinstance(
            config.get("destination"), dict) else []
    by_name = {str(d.get("name", "")).lower(): d for d in dests if isinstance(d, dict)}
    for name, options in named.items():
        if name.lower() not in by_name:
            if not over:
                continue  # an environment default for a destination this project does not have
            raise ConfigError(f"destinations: no destination named {name!r} (known: {', '.join(by_name) or 'none'})")
        target = by_name[name.lower()]
        for option, value in options.items():
            if over or option not in target:
                target[option] = value
    if "destinations" in config:
        config["destinations"] = dests
    elif dests:
        config["destination"] = {k: v for k, v in dests[0].items() if k != "name"}


def _env_value(raw: str, types: tuple[type, ...]) -> Any:
    return raw if types == (str,) else _parse_env_value(raw)


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; "destination" merges option by option. None in an override means unset.
    A layer's options for destinations by name (NAMED) apply after the layers: the first layer's
    (the environment's) as defaults, the others' over the config's."""
    out: dict[str, Any] = {}
    named = []
    for i, layer in enumerate(layers):
        for key, value in layer.items():
            if key == NAMED:
                named.append((value, i > 0))
            elif key == "destination" and isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
        if "destinations" in layer and "destination" not in layer:
            out.pop("destination", None)  # a list replaces the one destination of a layer below
    for value, over in named:
        _apply_named(out, value, over=over)
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
    clean["destinations"] = _validate_destinations(clean["destination"], clean["destinations"])
    clean["destination"] = {k: v for k, v in clean["destinations"][0].items() if k != "name"}
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


def check_destination_name(name: str | None, label: str = "destination_name") -> str:
    """A destination's name (empty: the default one's)."""
    name = (name or "").strip() or DEFAULT_DESTINATION
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{label}: letters, digits, - and _ (at most 64), starting with a letter or digit")
    return name


def _validate_destinations(one: dict[str, Any] | None, several: list[Any] | None) -> list[dict[str, Any]]:
    """Every destination, named, each validated by its kind: `destination` is one named default."""
    if one is not None and several is not None:
        raise ConfigError("destination: give destination (one) or destinations (several), not both")
    if several is None:
        if one is None:
            raise ConfigError("destination: required")
        return [{"name": DEFAULT_DESTINATION, **_validate_destination(one)}]
    if not several:
        raise ConfigError("destinations: must name at least one destination")
    out, seen = [], set()
    for i, dest in enumerate(several):
        if not isinstance(dest, dict):
            raise ConfigError(f"destinations[{i}]: expected object, got {type_name(dest)}")
        dest = dict(dest)
        name = dest.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"destinations[{i}].name: required")
        check_destination_name(name, f"destinations[{i}].name")
        if name.lower() in seen:
            raise ConfigError(f"destinations[{i}].name: {name!r} is used twice; names are unique in a project")
        seen.add(name.lower())
        try:
            out.append({"name": name, **_validate_destination(dest)})
        except ConfigError as exc:
            raise ConfigError(f"destination {name}: {exc}") from None
    return out


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
    extras = fields.pop("extra_destinations")
    project = Project(**fields)
    project.unsaved_extras = extras
    project.pk = Project.objects.filter(name=project.name).values_list("pk", flat=True).first()
    return project


@transaction.atomic
def apply(clean: dict[str, Any], source: str, created_by: str = "") -> tuple[Project, ConfigHistory]:
    """Create or update the project from a validated config and record its ConfigHistory."""
    fields = project_fields(clean)
    extras = fields.pop("extra_destinations")
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
    set_extra_destinations(project, extras)
    return project, project.record_config(source, created_by)


def set_extra_destinations(project: Project, specs: list[tuple[str, str, dict[str, Any]]]) -> None:
    """The project's destinations after the first become these (name, kind, options)."""
    kept = []
    for name, kind, options in specs:
        row, _ = ProjectDestination.objects.update_or_create(project=project, name=name,
                                                             defaults={"kind": kind, "options": options})
        kept.append(row.pk)
    project.extra_destinations.exclude(pk__in=kept).delete()


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
        if not given["destination"]:
            del given["destination"]
    return validate(merge(env_defaults(environ), file_layer, given))
