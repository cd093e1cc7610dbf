"""Print the README's configuration table from bgdeploy.config.SCHEMA, or --write it in place.

The table sits between the two marker comments in README.md; tests/unit/test_config.py
fails while README.md and the schema disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bgdeploy.config import readme_table

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- config-table: begin (tools/config_table.py --write) -->\n"
END = "<!-- config-table: end -->\n"


def readme_block(text: str) -> str:
    """The text between the markers in README text."""
    start = text.index(BEGIN) + len(BEGIN)
    return text[start : text.index(END, start)]


def main(argv: list[str]) -> int:
    if argv != ["--write"]:
        sys.stdout.write(readme_table())
        return 0
    text = README.read_text()
    start = text.index(BEGIN) + len(BEGIN)
    README.write_text(text[:start] + readme_table() + text[text.index(END, start) :])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
