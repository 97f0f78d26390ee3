"""Text from outside (file names, remote error messages, URLs) made safe to print on a terminal.

A file name may hold escape sequences that retitle the window, clear the screen or fake output
lines (ESC, CR, LF); bidirectional controls reorder what is shown; bytes that are not UTF-8 come
out of os.fsdecode as lone surrogates that cannot be printed at all. Each is shown escaped.
"""

from __future__ import annotations

import logging
import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL, C1 controls, bidirectional controls, surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(text: object) -> str:
    """`text` as a string with every control character shown as an escape (\\x1b, \\n, \\u202e)."""
    return _UNSAFE.sub(_escape, str(text))


class SafeFormatter(logging.Formatter):
    """Log lines that a file name in the message cannot split, fake or fill with escape sequences;
    a traceback, appended after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return safe(super().formatMessage(record))
