"""One racing `bgdeploy ARGS`: everything imported first, then it waits for the go file
(so that the racers start within milliseconds of each other) and exits with the CLI's code.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import bgdeploy.control.deploy  # noqa: F401 - imported before the start, not during the race
from bgdeploy.cli import run


def main() -> None:
    go, args = Path(sys.argv[1]), sys.argv[2:]
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("the go file never came")
        time.sleep(0.002)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
