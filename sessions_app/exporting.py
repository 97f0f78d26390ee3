"""A session's files as CSV, streamed: keyset pages of rows, so a session of millions of files
never sits in memory (GET /api/sessions/ID/files.csv and the admin action)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import datetime

from django.http import StreamingHttpResponse

from sessions_app.models import FileUpload

PAGE = 2000
COLUMNS = ("session_id", "id", "relative_path", "remote_key", "status", "size", "mtime", "attempts", "retries",
           "uploaded_at", "skip_reason", "last_error", "error_permanent", "checksum", "remote_id", "tag")


class _Line:
    """csv.writer writes into this and the row comes back as a string."""

    def write(self, text: str) -> str:
        return text


def _cell(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def pages(session_ids: Iterable[int]) -> Iterator[list[tuple]]:
    for session_id in sorted(session_ids):
        last = 0
        while page := list(FileUpload.objects.filter(session_id=session_id, id__gt=last).order_by("id")
                           .values_list(*COLUMNS)[:PAGE]):
            yield page
            last = page[-1][1]


def csv_lines(session_ids: Iterable[int]) -> Iterator[str]:
    """The header, then the files of the sessions in session and file order: a page of lines per
    chunk (one write each, not one per line)."""
    writer = csv.writer(_Line())
    yield writer.writerow(COLUMNS)
    for page in pages(session_ids):
        yield "".join(writer.writerow([_cell(v) for v in row]) for row in page)


def response(session_ids: Iterable[int], filename: str) -> StreamingHttpResponse:
    answer = StreamingHttpResponse(csv_lines(list(session_ids)), content_type="text/csv; charset=utf-8")
    answer["Content-Disposition"] = f'attachment; filename="{filename}"'
    return answer
