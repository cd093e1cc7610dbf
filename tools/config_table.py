"""Print the configuration tables from bgdeploy.config.SCHEMA, or --write them in place.

docs/configuration.md holds the full table (key, default, meaning) and README.md the
short list (every key with its default), each between two marker comments;
tests/unit/test_config.py fails while either file and the schema disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bgdeploy.config import readme_keys, readme_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- config-table: begin (tools/config_table.py --write) -->\n"
END = "<!-- config-table: end -->\n"
# Each file and the block it holds.
BLOCKS = ((README, readme_keys), (CONFIGURATION, readme_table))


def readme_block(text: str) -> str:
    """The text between the markers in a file's text."""
    start = text.index(BEGIN) + len(BEGIN)
    return text[start : text.index(END, start)]


def main(argv: list[str]) -> int:
    if argv != ["--write"]:
        for _path, block in BLOCKS:
            sys.stdout.write(block() + "\n")
        return 0
    for path, block in BLOCKS:
        text = path.read_text()
        start = text.index(BEGIN) + len(BEGIN)
        path.write_text(text[:start] + block() + text[text.index(END, start) :])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
