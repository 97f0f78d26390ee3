"""A project's destinations, by name, as one sync sees them: checked, opened and closed together."""

from __future__ import annotations

from collections.abc import Iterator

from projects.destinations.base import Destination


class DestinationGroup:
    """The named destinations of one session, the first one first. Behaves like a destination
    where a start needs one (closing, the lease's identity, the extensions to scan)."""

    def __init__(self, named: dict[str, Destination]):
        self.named = named

    def __iter__(self) -> Iterator[tuple[str, Destination]]:
        return iter(self.named.items())

    def __len__(self) -> int:
        return len(self.named)

    @property
    def first(self) -> Destination:
        return next(iter(self.named.values()))

    def identity(self) -> str:
        """What the lease and messages name: the one destination, or every one by name."""
        if len(self.named) == 1:
            return self.first.identity()
        return ", ".join(f"{name}: {dest.identity()}" for name, dest in self.named.items())

    def identities(self) -> dict[str, str]:
        return {name: dest.identity() for name, dest in self.named.items()}

    @property
    def default_extensions(self) -> tuple[str, ...]:
        """What a scan takes when the project names no extensions: what every destination takes
        (all files as soon as one of them takes all)."""
        if any(not dest.default_extensions for dest in self.named.values()):
            return ()
        return tuple(sorted({ext for dest in self.named.values() for ext in dest.default_extensions}))

    def close(self) -> None:
        for dest in self.named.values():
            dest.close()

    def __enter__(self) -> DestinationGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
