"""Text from outside printed on a terminal: control characters are shown escaped, never sent."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from sessions_app.terminal import SafeFormatter, safe


@pytest.mark.parametrize("raw, shown", [
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    ("\x1b[2J", "\\x1b[2J"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("\x00\x7f", "\\x00\\x7f"),
    ("\x9b2J", "\\x9b2J"),  # the one-byte CSI of C1
    ("evil\u202ewav.exe", "evil\\u202ewav.exe"),  # right-to-left override
])
def test_control_characters_are_shown_escaped(raw, shown):
    assert safe(raw) == shown


def test_bytes_that_are_not_utf8_are_shown_as_bytes_and_can_be_printed():
    name = os.fsdecode(b"caf\xe9.wav")

    shown = safe(name)

    assert shown == "caf\\xe9.wav"
    shown.encode("utf-8")


def test_ordinary_names_are_unchanged():
    assert safe("Größe/日本 語 (1).wav") == "Größe/日本 語 (1).wav"


def test_anything_is_turned_into_text():
    assert safe(ValueError("bad\x1b[31m")) == "bad\\x1b[31m"


def test_log_lines_show_control_characters_escaped_and_keep_tracebacks():
    formatter = SafeFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "not queued: %s", ("a\nFAKE\x1b[2J",),
                                   exc_info=sys.exc_info())

    text = formatter.format(record)

    assert text.startswith("WARNING not queued: a\\nFAKE\\x1b[2J\nTraceback")
    assert "ValueError: boom" in text
