"""Odd source names (projects/names.py): a name that is not UTF-8 fails its own row and never the
session; two names that map to one key are caught at planning, never silently merged."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from projects.names import KeyCollisions, stored_form
from projects.walking import Entry
from sessions_app.models import FileStatus, SessionStatus
from tests.conftest import manage, write_files

NFC = unicodedata.normalize("NFC", "café.wav")
NFD = unicodedata.normalize("NFD", "café.wav")


def _sync(project: str, source: Path, dest: Path, *args: str):
    return manage("upload", "--sync", "--no-progress", "--project", project, "--source-dir", str(source),
                  "--destination-type", "local", "--dest-path", str(dest), *args)


def test_a_name_that_is_not_utf8_fails_its_own_row_and_the_rest_upload(transactional_db, tmp_path, source):
    from sessions_app.models import SyncSession

    write_files(source, {f"ok{i}.wav": f"file {i}" for i in range(7)})
    raw = os.fsencode(str(source)) + b"/caf\xe9.wav"
    with open(raw, "wb") as f:
        f.write(b"latin-1 named")
    result = _sync("latin1", source, tmp_path / "dest")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    session = SyncSession.objects.get()
    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    assert (session.uploaded_count, session.failed_count) == (7, 1)
    row = session.files.get(status=FileStatus.FAILED)
    assert row.relative_path == "caf\\xe9.wav"  # the stored (escaped) form
    assert row.error_permanent
    assert "file name is not valid UTF-8 (b'caf\\xe9.wav')" in row.last_error
    sent = sorted(name for name in os.listdir(tmp_path / "dest") if name != ".uploader-tmp")  # our temporary folder
    assert sent == [f"ok{i}.wav" for i in range(7)]


def test_the_stored_form_keeps_every_byte_of_the_name():
    name = os.fsdecode(b"dir\xff/caf\xe9 \xc3\xa9.wav")
    assert stored_form(name) == "dir\\xff/caf\\xe9 é.wav"
    assert stored_form(name).encode("utf-8")  # storable as text
    assert stored_form("plain/a.wav") == "plain/a.wav"


def test_nfc_and_nfd_spellings_of_one_name_collide_and_the_other_fails(transactional_db, tmp_path, source):
    from sessions_app.models import SyncSession

    write_files(source, {NFC: "composed", NFD: "decomposed, longer", "other.wav": "x"})
    dest = tmp_path / "dest"
    result = _sync("nfc-nfd", source, dest)

    assert result.returncode == 1, result.stderr
    session = SyncSession.objects.get()
    assert (session.uploaded_count, session.failed_count) == (2, 1)
    loser = session.files.get(status=FileStatus.FAILED)
    assert loser.relative_path == NFD
    assert loser.last_error == f"key collision with {NFC}"
    assert loser.error_permanent
    assert (dest / NFC).read_text() == "composed"  # the name that is its own key wins
    assert "key collision" in result.stderr

    again = _sync("nfc-nfd", source, dest)  # a re-sync says so again, never skips both silently
    assert again.returncode == 1
    latest = SyncSession.objects.order_by("-id").first()
    assert latest.files.get(status=FileStatus.FAILED).last_error == f"key collision with {NFC}"


def test_the_collision_is_found_whichever_spelling_the_scan_meets_first(tmp_path):
    (tmp_path / NFC).write_text("composed")
    (tmp_path / NFD).write_text("decomposed")
    names = KeyCollisions(str(tmp_path), lambda p: True, lambda p: unicodedata.normalize("NFC", p))
    nfd, nfc = (Entry(p, 1, 0.0, *_identity(tmp_path / p)) for p in (NFD, NFC))
    _, keys, refused = names.split([nfd, nfc])
    assert keys == [NFC]
    assert [(r.path, r.reason) for r in refused] == [(NFD, f"key collision with {NFC}")]


def test_a_spelling_whose_twin_is_excluded_uploads(tmp_path):
    (tmp_path / NFC).write_text("composed, but excluded")
    (tmp_path / NFD).write_text("decomposed")
    names = KeyCollisions(str(tmp_path), lambda p: p != NFC, lambda p: unicodedata.normalize("NFC", p))
    entries, keys, refused = names.split([Entry(NFD, 1, 0.0, *_identity(tmp_path / NFD))])
    assert (keys, refused) == ([NFC], [])


def test_names_differing_only_in_case_collide_where_keys_fold_case(tmp_path):
    names = KeyCollisions(str(tmp_path), lambda p: True, lambda p: p, fold_case=True)
    _, keys, refused = names.split([Entry("A.wav", 1, 0.0), Entry("b.wav", 1, 0.0), Entry("a.wav", 1, 0.0)])
    assert keys == ["A.wav", "b.wav"]
    assert [(r.path, r.reason) for r in refused] == [("a.wav", "key collision with A.wav")]
    sensitive = KeyCollisions(str(tmp_path), lambda p: True, lambda p: p)
    assert sensitive.split([Entry("A.wav", 1, 0.0), Entry("a.wav", 1, 0.0)])[2] == []


def test_a_case_sensitive_local_destination_does_not_fold_case(tmp_path):
    from projects.destinations.local import LocalDestination

    dest = LocalDestination({"path": str(tmp_path / "Archive"), "create": True})
    assert dest.keys_fold_case is False


def _identity(path: Path) -> tuple[int, int]:
    from projects.walking import identity_of

    return identity_of(os.stat(path))


def test_a_dry_run_warns_of_a_name_that_is_not_utf8(transactional_db, tmp_path, source):
    write_files(source, {"ok.wav": "ok"})
    with open(os.fsencode(str(source)) + b"/caf\xe9.wav", "wb") as f:
        f.write(b"x")
    result = manage("upload", "--dry-run", "--project", "dry", "--source-dir", str(source),
                    "--destination-type", "local", "--dest-path", str(tmp_path / "dest"))
    assert result.returncode == 0, result.stderr
    assert "warning: caf\\xe9.wav: file name is not valid UTF-8 (b'caf\\xe9.wav')" in result.stderr
    assert "dry run: 1 files" in result.stdout
