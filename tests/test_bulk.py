"""Plain-tuple inserts (sessions_app/bulk.py) on the real database: rows go in as they were given,
whatever their values, and PostgreSQL's COPY text keeps every value in its own row and column."""

from __future__ import annotations

import datetime

from django.db import transaction

from sessions_app import bulk, starting
from sessions_app.files import SENT_COLUMNS
from sessions_app.models import FileUpload


def test_rows_go_in_as_given_whatever_their_values(make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project, created_by="test")
    when = datetime.datetime(2026, 12, 4, 6, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    names = ["tab\there", "new\nline", "cr\rhere", "back\\slash", "\u00fcn\u00ef \u6587", "plain", "\\N"]
    rows = [
        (session.pk, project.pk, name, f"keys/{name}", 10 ** 12 + i, 1700000000.123456 + i / 7,
         None if i % 2 else 2049, None if i % 3 else 10 ** 15 + i, False, "default", "uploaded", i % 2,
         when, "", "etag\t1" if i == 3 else "", "", "note\n" * i, i == 4, "")
        for i, name in enumerate(names)
    ]

    with transaction.atomic():
        assert bulk.insert_tuples(FileUpload, SENT_COLUMNS, rows, new=True) == len(rows)

    stored = list(FileUpload.objects.filter(session=session).order_by("id").values_list(*SENT_COLUMNS))
    assert stored == rows


def test_rows_over_several_copy_chunks_go_in_whole_and_in_order(make_project, tmp_path):
    # PostgreSQL reads the COPY text a chunk of rows at a time (bulk._Encoding): values at the
    # chunks' edges (escaped or not) must land in their own rows.
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project, created_by="test")
    columns = ("session_id", "project_id", "relative_path", "remote_key", "size", "mtime", "status")
    edges = {bulk._Encoding.CHUNK - 1, bulk._Encoding.CHUNK, 2 * bulk._Encoding.CHUNK}
    rows = [(session.pk, project.pk, f"d/tab\there {i}" if i in edges else f"d/f{i:05d}", f"k/{i}", i, i / 3,
             "pending") for i in range(2 * bulk._Encoding.CHUNK + 250)]

    with transaction.atomic():
        assert bulk.insert_tuples(FileUpload, columns, rows, new=True) == len(rows)

    assert list(FileUpload.objects.filter(session=session).order_by("id").values_list(*columns)) == rows


def test_a_column_mixing_one_and_true_keeps_each_its_own_text():
    # 1 == True: a column is written once for all its rows only when they share one type.
    assert bulk._copy_text_of([(1, True), (True, 1)], []) == "1\tt\nt\t1\n"


def test_a_value_holding_nul_stays_in_its_own_row():
    # Joined by NUL to be escaped at once, such a column would shift every value after it.
    text = bulk._copy_text_of([("a\0b", 1), ("c", 2)], ["x"])
    assert text.split("\n") == ["a\0b\t1\tx", "c\t2\tx", ""]


def test_constant_defaults_written_as_sql_literals_read_back_as_given():
    import sqlite3

    values = [None, True, False, 0, -7, 2**62, 1.5, "", "it's", "naïve ünïcode"]
    db = sqlite3.connect(":memory:")
    for value in values:
        literal = bulk._sql_literal(value)
        assert literal is not None
        (got,) = db.execute(f"SELECT {literal}").fetchone()
        assert got == value
    # What could not be a plain literal is bound instead.
    for value in ["50%", "two\nlines", "nul\0", float("nan"), b"bytes"]:
        assert bulk._sql_literal(value) is None
