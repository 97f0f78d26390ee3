"""The registry of destination kinds: kind name -> Destination class."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from projects.destinations.base import ConfigError, Destination, DestinationError, RemoteObject, UploadResult

# Imported lazily so a kind's client library is loaded only when that kind is used.
KINDS: dict[str, str] = {
    "s3": "projects.destinations.s3.S3Destination",
    "local": "projects.destinations.local.LocalDestination",
    "sftp": "projects.destinations.sftp.SFTPDestination",
    "roboflow": "projects.destinations.roboflow.RoboflowDestination",
}


def destination_class(kind: str) -> type[Destination]:
    if kind not in KINDS:
        raise ConfigError(f"destination.type: unknown destination type {kind!r} (one of: {', '.join(KINDS)})")
    module_name, _, cls_name = KINDS[kind].rpartition(".")
    return getattr(import_module(module_name), cls_name)


def build_destination(kind: str, options: dict[str, Any]) -> Destination:
    return destination_class(kind)(options)


__all__ = [
    "ConfigError",
    "Destination",
    "DestinationError",
    "RemoteObject",
    "UploadResult",
    "KINDS",
    "build_destination",
    "destination_class",
]
