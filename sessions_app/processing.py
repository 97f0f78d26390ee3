"""Browser uploads, phase 2: the transfer of a received file (the browser kind's, run by the same
drainers, claims, retries, catalog and notifications as a sync).

1. Its real type, by magic bytes, must be the one its name says (a .jpg must hold a JPEG).
2. An image must decode; its thumbnail is made (EXIF orientation applied, longest edge the
   project's `thumbnail_size`, WebP) and kept for the admin.
3. The original goes to its key, the thumbnail to `thumbnail_prefix` + path + ".webp".
4. The staged bytes go once the file is sent, or can never be (a permanent failure).
A bad file fails alone, with the reason; the others go on.
"""

from __future__ import annotations

import os
import posixpath

import filetype
import pillow_heif
from django.utils import timezone
from PIL import Image, ImageOps

from projects.destinations import Destination
from projects.errors import SourceError
from projects.localfile import LocalFile
from sessions_app import staging, transferring
from sessions_app.files import Outcome
from projects.models import Project
from sessions_app.models import FileStatus, FileUpload

pillow_heif.register_heif_opener()

# Names filetype does not know, and the name it knows for the same type.
ALIASES = {"jpeg": "jpg", "jpe": "jpg", "tiff": "tif", "heif": "heic"}
# Types Pillow decodes: such a file must decode, and gets a thumbnail.
THUMBNAILED = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif", "image/bmp",
               "image/tiff", "image/avif"}
THUMBNAIL_QUALITY = 80


class ContentError(SourceError):
    def __init__(self, message: str):
        super().__init__(message, permanent=True)


def content_type(path: str, relative_path: str) -> str:
    """The type the bytes say; ContentError when the file's name says another one."""
    guess = filetype.guess(path)
    ext = posixpath.splitext(relative_path)[1].lower().lstrip(".")
    expected = filetype.get_type(ext=ALIASES.get(ext, ext)) if ext else None
    if expected is not None and (guess is None or not _same(guess.mime, expected.mime)):
        found = guess.mime if guess else "not a type we recognise"
        raise ContentError(f"content does not match its name: a .{ext} file should hold {expected.mime}, "
                           f"its bytes are {found}")
    return guess.mime if guess else ""


def _same(found: str, expected: str) -> bool:
    heif = {"image/heic", "image/heif"}
    return found == expected or (found in heif and expected in heif)


def make_thumbnail(path: str, target: str, size: int) -> None:
    """A WebP of the image, upright, its longest edge `size`; ContentError if it does not decode."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, not in full
            upright = ImageOps.exif_transpose(im)
            upright.thumbnail((size, size))
            if upright.mode not in ("RGB", "RGBA"):
                upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            upright.save(target + ".part", "WEBP", quality=THUMBNAIL_QUALITY)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        staging.remove(target + ".part")
        raise ContentError(f"not a decodable image: {exc}") from None
    os.replace(target + ".part", target)


class Processor:
    """The browser kind's transfer for one session: runs in the drainer's threads, so it touches
    no database; what it learns goes on the row (its note) for files.record to write."""

    def __init__(self, project: Project):
        self.size, self.prefix = project.thumbnail_size, project.thumbnail_prefix

    def __call__(self, dest: Destination, row: FileUpload, source_dir: str, max_tries: int) -> Outcome:
        """Check, thumbnail and send one received file; never raises (transferring's contract)."""
        path = staging.upload_path(row.session_id, row.pk)
        if not os.path.exists(path):
            if row.verify_remote and transferring.already_there(dest, row):
                return Outcome(row, FileStatus.UPLOADED)
            return transferring.failed(row, SourceError("its received bytes are gone from staging", permanent=True),
                                       1)
        thumbnail = staging.thumbnail_path(row.session_id, row.pk)
        try:
            kind = content_type(path, row.relative_path)
            if kind in THUMBNAILED:
                make_thumbnail(path, thumbnail, self.size)
            else:
                thumbnail = ""
        except ContentError as exc:
            staging.remove(path)
            row.attempts += 1
            return transferring.failed(row, exc, 1)
        thumbnail_key = dest.key_for(self.prefix + row.relative_path + ".webp") if (
            thumbnail and dest.stores_thumbnails) else ""
        row.note = " ".join(filter(None, [f"content {kind or 'unrecognised'}",
                                          f"thumbnail {thumbnail_key}" if thumbnail_key else ""]))[:500]
        outcome = transferring.with_retries(row, max_tries, lambda: _send(dest, row, path, thumbnail, thumbnail_key),
                                            f"sending {row.relative_path}")
        if outcome.status != FileStatus.FAILED or row.error_permanent:
            staging.remove(path)  # kept only for a retry round of a transient failure
        return outcome


def _send(dest: Destination, row: FileUpload, path: str, thumbnail: str, thumbnail_key: str) -> Outcome:
    with LocalFile.open(path) as local:
        local.name = posixpath.basename(row.relative_path)
        result = dest.upload(local, row.remote_key)
    if thumbnail_key:
        dest.upload(thumbnail, thumbnail_key)
    row.size, row.checksum, row.remote_id = result.size, result.checksum[:200], result.remote_id[:200]
    row.note = (row.note.split(" | ")[0] + (" | " + result.note if result.note else ""))[:500]
    row.last_error, row.error_permanent, row.uploaded_at = "", False, timezone.now()
    if result.duplicate:
        row.skip_reason = "duplicate"
        return Outcome(row, FileStatus.SKIPPED)
    return Outcome(row, FileStatus.UPLOADED)
