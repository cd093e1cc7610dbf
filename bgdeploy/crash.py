"""Crash logs: where the CLI writes the traceback of an exception that is not a BgdeployError.

The user sees one line and the log's path; the traceback is kept for the bug report
instead of filling their terminal. The log goes to ``<state_dir>/crash/``, or to a
``bgdeploy-crash`` folder in the temp dir when the state dir is unknown or unwritable.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


def crash_dirs(state_dir: Path | None) -> list[Path]:
    """Where a crash log may go, best first."""
    fallback = Path(tempfile.gettempdir()) / "bgdeploy-crash"
    return [state_dir / "crash", fallback] if state_dir is not None else [fallback]


def write_crash_log(exc: BaseException, argv: list[str], state_dir: Path | None) -> Path | None:
    """Write exc's traceback to a new file and return its path (None if nowhere could take it)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = (
        f"bgdeploy {' '.join(argv)}\n"
        f"python {sys.version.split()[0]} on {sys.platform}, pid {os.getpid()}\n\n"
        + "".join(traceback.format_exception(exc))
    )
    for folder in crash_dirs(state_dir):
        path = folder / f"{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            # O_EXCL: never follow or overwrite someone else's file in a shared temp dir
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except OSError:
            continue
        return path
    return None
