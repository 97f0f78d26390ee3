"""URL checks and outbound-request policy shared by notifications and config: only http(s), never a password in a stored URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from projects.errors import ConfigError


def check_http_url(url: str, name: str = "url") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: must be an http:// or https:// URL, got {redact_url(url)!r}")


def redact_url(url: str) -> str:
    """Drop user:password from a URL before it is stored or shown."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
