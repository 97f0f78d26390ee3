"""Session kinds, one class each: how a session of the kind checks both ends, fills its rows,
moves one row, whether more work may come, whether it ends by itself and can go stale, and how
it describes itself. Nothing else looks at `SyncSession.kind`.

- sync: scan the project's source folder, plan against the destination, upload local files.
- stream: the upload queue; rows come one by one from producers; it never ends by itself.
- import: list a Roboflow project's image ids, fetch each image into the destination.
- browser: a manifest's files arrive over tus into staging (receiving.py); each one received is
  checked, thumbnailed and sent on (processing.py); it ends once every file is settled.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from projects.destinations import ConfigError, Destination, build_destination
from projects.destinations.group import DestinationGroup
from projects.errors import RemoteError
from projects.models import Project
from projects.names import KeyCollisions, stored_form
from projects.walking import UNREADABLE_FOLDER
from projects.sources import Source
from projects.sources.local import LocalSource
from projects.sources.roboflow import RoboflowSource
from sessions_app import files, importing, phases, planning, processing, sending, transferring, waking
from sessions_app.errors import StartError
from sessions_app.models import SessionStatus, SyncSession
from sessions_app.planning import ScanStats
from sessions_app.terminal import safe
from sessions_app.transferring import Transfer

log = logging.getLogger(__name__)

MAX_LOGGED_PROBLEMS = 1000


class Kind:
    name: str
    ends_by_itself = True  # completes once its rows are settled
    can_go_stale = True  # a missing heartbeat means its workers vanished
    holds_lease = True  # one active session of its kinds per project and destination (starting.py)

    def sessions(self) -> QuerySet[SyncSession]:
        return SyncSession.objects.filter(kind=self.name)

    def lease(self, project: Project, dest: Destination) -> str | None:
        """What a session of this kind holds while active (None: nothing): the same value for every
        kind that holds one, so a sync and an import into one place take turns too."""
        if not self.holds_lease:
            return None
        return hashlib.sha256(f"{project.pk} {dest.identity()}".encode()).hexdigest()

    def preflight(self, project: Project, params: dict[str, Any]) -> Destination:
        """Check both ends before a session exists or starts; the destination, open. StartError."""
        raise NotImplementedError

    def plan(self, session: SyncSession, dest: Destination, start_uploads: bool, send: bool = False) -> ScanStats:
        """Fill the session's rows (the scan step). `send`: it may send files itself, writing their
        rows settled (upload --sync: the command's process does all the work)."""
        raise NotImplementedError

    def opened(self, session: SyncSession, dest: Destination) -> None:
        """The session was just created, to go to `dest` (what preflight returned)."""

    def transfer(self, session: SyncSession) -> Transfer:
        return transferring.local_transfer(session.project.follow_symlinks)

    def more_may_come(self, session: SyncSession, idle_seconds: float, destination: str | None = None) -> bool:
        """Should a drainer (of `destination`'s rows) with nothing to claim wait for more rows? While
        the scan inserts them, and while pending rows wait for another session's upload of the same
        files (files.claim)."""
        return SyncSession.objects.filter(pk=session.pk, status=SessionStatus.SCANNING).exists() or (
            files.has_pending(session, destination))

    def ran_dry(self, session: SyncSession) -> None:
        """A drainer found nothing left and the session did not end."""

    def describe(self, session: SyncSession) -> str:
        raise NotImplementedError

    def progress(self, session: SyncSession) -> dict[str, Any]:
        """Figures of its own for the session's status answer."""
        return {}


def _check(end: Destination | Source, what: str, close_on_failure: Destination, timeout: float | None = None) -> None:
    """end.check(); a destination's waits at most `timeout` (the project's preflight_timeout) to connect
    and for each answer, and says what it waits for, so a silent server is not a silent command."""
    if timeout is not None and isinstance(end, Destination):
        end.check_timeout = timeout
        log.info("checking %s %s (waiting up to %g s for it to answer)", what, safe(end.identity()), timeout)
    try:
        end.check()
    except RemoteError as exc:
        close_on_failure.close()
        raise StartError(f"{what}: {exc.message}") from None


class SyncKind(Kind):
    name = SyncSession.Kind.SYNC

    def preflight(self, project: Project, params: dict[str, Any] | None = None) -> DestinationGroup:
        """The source folder and every destination of the project, each checked (a refused one is
        named); all of them, open."""
        try:
            LocalSource.of(project).check()
            group = DestinationGroup({name: build_destination(kind, options)
                                      for name, kind, options in project.destination_specs()})
        except ConfigError as exc:
            raise StartError(str(exc)) from exc
        for name, dest in group:
            what = f"destination {name} ({dest.kind})" if len(group) > 1 else f"destination {dest.kind}"
            _check(dest, what, group, project.preflight_timeout)
        return group

    def opened(self, session: SyncSession, dest: DestinationGroup) -> None:
        files.open_destinations(session, dest.identities())

    def plan(self, session: SyncSession, dest: DestinationGroup, start_uploads: bool, send: bool = False) -> ScanStats:
        project = session.project
        problems = ProblemLog(session)
        source = LocalSource.of(project, dest.default_extensions)
        self.opened(session, dest)  # a session created without start() (tests, old sessions)

        def scan(sort: bool):  # key order only matters when merging with the catalog
            return source.entries(method=settings.SCAN_METHOD, sort=sort, on_problem=problems.add,
                                  on_progress=lambda n: log.info("session %s: scanned %d files", session.pk, n),
                                  progress_every=settings.SCAN_PROGRESS_EVERY)

        targets = []
        for name, one in dest:
            accepts = None
            if one.default_extensions != dest.default_extensions:  # it takes fewer files than the scan yields
                accepts = LocalSource.of(project, one.default_extensions).filter.accepts
            names = KeyCollisions(project.source_dir, accepts or source.filter.accepts, one.key_for,
                                  fold_case=one.keys_fold_case)
            targets.append(planning.Target(name, one, names, accepts))
        sender = None
        if send and len(targets) == 1:  # several: every file goes through the upload path
            sender = sending.Sender(session, targets[0].dest, follow_symlinks=project.follow_symlinks)
        stats = planning.plan_session(session, targets, scan, batch_size=settings.SCAN_BATCH_SIZE,
                                      start_uploads=start_uploads, sender=sender)
        problems.save()
        return stats

    def describe(self, session: SyncSession) -> str:
        names = files.destination_names(session)
        where = ", ".join(names) if len(names) > 1 else session.project.destination_kind
        return f"sync of {_where(LocalSource.of(session.project))} to {where}"


class StreamKind(Kind):
    """The upload queue: producers add rows one at a time (queueing.py)."""

    name = SyncSession.Kind.STREAM
    ends_by_itself = False
    can_go_stale = False  # an idle upload queue has no heartbeat, and is not stuck
    # It never ends, so holding the lease would shut out every sync for good. Its files take turns
    # with a leased session's one by one instead: files.claim holds back a key another running
    # session is uploading, so no file is transferred by two sessions at once.
    holds_lease = False

    def preflight(self, project: Project, params: dict[str, Any] | None = None) -> Destination:
        # No network check: a producer's call must return at once; the uploads report a refusal.
        return _configured_destination(project)

    def plan(self, session: SyncSession, dest: Destination, start_uploads: bool, send: bool = False) -> ScanStats:
        return ScanStats()  # nothing to scan: rows arrive one by one

    def more_may_come(self, session: SyncSession, idle_seconds: float, destination: str | None = None) -> bool:
        # Linger: a producer queueing file after file is served by this task, not a task per file.
        return idle_seconds < settings.QUEUE_LINGER_SECONDS

    def ran_dry(self, session: SyncSession) -> None:
        if session.status == SessionStatus.UPLOADING:
            waking.went_idle(session)

    def describe(self, session: SyncSession) -> str:
        return f"upload queue of {session.project.name}"


class ImportKind(Kind):
    name = SyncSession.Kind.IMPORT

    def preflight(self, project: Project, params: dict[str, Any]) -> Destination:
        """The project's destination can take streams, the Roboflow project exists and the key opens it."""
        try:
            dest = project.destination()
            source = RoboflowSource.from_params(params)
        except ConfigError as exc:
            raise StartError(str(exc)) from exc
        if not dest.supports_stream_upload:
            raise StartError(f"project {project.name}: a {project.destination_kind} destination cannot receive "
                             f"imports; import into a project with an S3 or local destination")
        _check(dest, f"destination {project.destination_kind}", dest, project.preflight_timeout)
        _check(source, "Roboflow", dest)
        return dest

    def plan(self, session: SyncSession, dest: Destination, start_uploads: bool, send: bool = False) -> ScanStats:
        return importing.list_into(session, dest, start_uploads)

    def transfer(self, session: SyncSession) -> Transfer:
        return importing.Fetcher(session)

    def describe(self, session: SyncSession) -> str:
        return f"import of {_where(RoboflowSource.from_params(session.params))} into {session.project.name}"


class BrowserKind(Kind):
    """Files dropped on the admin's upload page (or sent by any tus client): rows come from the
    manifest, bytes from the browser; a drainer processes each file once it is received."""

    name = SyncSession.Kind.BROWSER
    can_go_stale = False  # while people send bytes no worker beats; a received file wakes one
    # Like the upload queue: people send for as long as they like, so holding the lease would shut
    # out syncs meanwhile; its files take turns with a leased session's in files.claim.
    holds_lease = False

    def preflight(self, project: Project, params: dict[str, Any] | None = None) -> Destination:
        # No network check: the page waits for the manifest's answer; the sends report a refusal.
        return _configured_destination(project)

    def plan(self, session: SyncSession, dest: Destination, start_uploads: bool, send: bool = False) -> ScanStats:
        return ScanStats()  # the manifest inserted the rows

    def transfer(self, session: SyncSession) -> Transfer:
        return processing.Processor(session.project)

    def more_may_come(self, session: SyncSession, idle_seconds: float, destination: str | None = None) -> bool:
        # Linger while files keep arriving: one drainer serves a drop, not a task per file.
        return files.has_pending(session) or idle_seconds < settings.QUEUE_LINGER_SECONDS

    def ran_dry(self, session: SyncSession) -> None:
        if session.status == SessionStatus.UPLOADING:
            waking.went_idle(session)

    def describe(self, session: SyncSession) -> str:
        return f"browser upload of {session.found_count} files into {session.project.name}"

    def progress(self, session: SyncSession) -> dict[str, Any]:
        return phases.progress(session)


def _configured_destination(project: Project) -> Destination:
    """The project's destination, unchecked; a config it cannot be built from is a StartError."""
    try:
        return project.destination()
    except ConfigError as exc:
        raise StartError(str(exc)) from exc


def _where(source: Source) -> str:
    described = source.describe()
    return f"{described.pop('kind')} " + "/".join(str(v) for v in described.values())


SYNC, STREAM, IMPORT, BROWSER = SyncKind(), StreamKind(), ImportKind(), BrowserKind()
REGISTRY: dict[str, Kind] = {k.name: k for k in (SYNC, STREAM, IMPORT, BROWSER)}


def of(session: SyncSession) -> Kind:
    return REGISTRY[session.kind]


def get(name: str) -> Kind:
    return REGISTRY[name]


def that_can_go_stale() -> list[str]:
    """Names of the kinds whose sessions the sweep and `resume --all` look after."""
    return [name for name, kind in REGISTRY.items() if kind.can_go_stale]


class ProblemLog:
    """Scan problems (broken links, unreadable folders): counted, the first ones kept."""

    def __init__(self, session: SyncSession):
        self.session = session
        self.lines: list[str] = []
        self.count = 0
        self.unread_folders = 0

    def add(self, path: str, message: str) -> None:
        self.count += 1
        if message.startswith(UNREADABLE_FOLDER):
            self.unread_folders += 1
        path = stored_form(path)
        if len(self.lines) < MAX_LOGGED_PROBLEMS:
            self.lines.append(f"{path}: {message}")
        log.warning("session %s: %s: %s", self.session.pk, path, message)

    def save(self) -> None:
        """Counted on the session (unread folders end it with errors: lifecycle), the first logged."""
        if not self.count:
            return
        if self.count > len(self.lines):
            self.lines.append(f"... and {self.count - len(self.lines)} more scan problems")
        SyncSession.objects.filter(pk=self.session.pk).update(scan_problems=self.count,
                                                              unread_folders=self.unread_folders)
        if self.unread_folders:
            self.lines.append(f"{self.unread_folders} folders could not be read: their files were not synced")
        self.session.append_log("\n".join(self.lines))
