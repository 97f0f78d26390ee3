"""The README's tables of config keys and destination options are the schema's, key for key."""

from __future__ import annotations

import re

from projects.schema import KEYS, KINDS, readme_tables
from tests.conftest import ROOT

START, END = "<!-- config tables", "<!-- end of config tables -->"


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n", text.index(START)) + 1
    return text[start:text.index(END)].strip()


def rows(section: str, columns: int) -> set[tuple[str, ...]]:
    """The backticked names at the start of each table row with that many cells."""
    found = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == columns and cells[0].startswith("`"):
            found.add(tuple(re.sub(r"`", "", c) for c in cells[: columns - 4]))
    return found


def test_the_readme_lists_every_config_key_and_no_other():
    assert rows(readme_section(), 5) == {(key,) for key in KEYS}


def test_the_readme_lists_every_destination_option_and_no_other():
    expected = {(kind, option) for kind, declared in KINDS.items() for option in declared.options}

    assert rows(readme_section(), 6) == expected


def test_the_readme_tables_are_the_schema_s_word_for_word():
    assert readme_section() == readme_tables().strip(), "run `python -m projects.schema` and paste its output"
