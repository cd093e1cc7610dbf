"""Faults of the machine, as one sentence each: a full or read-only state folder, a
registry locked by another process, and a signal to a command.

Stdlib only. ``storage_error`` turns the ``OSError`` of a write (lock file, logs,
crash log, registry folder) into a ``BgdeployError`` that names the file and the
fault; ``registry_fault`` does the same for SQLite's own words. ``Interrupted`` is
what the CLI's signal handlers raise for SIGINT, SIGTERM and SIGHUP: a
``BaseException`` (like ``KeyboardInterrupt``, so no ``except Exception`` swallows
it) that is *not* a ``KeyboardInterrupt``, so that Typer and Click, which turn a
``KeyboardInterrupt`` into a silent exit, let it through to the CLI's handler.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from bgdeploy.errors import BgdeployError, OperationFailed, RegistryError
from bgdeploy.registry.urls import sqlite_path

# The errno values that mean "the filesystem will not take this write": one sentence
# each, and a hint that nothing needs restarting once the fault is gone.
FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)
STORAGE_ERRNOS = (*FULL, *READ_ONLY, errno.EIO, errno.EACCES, errno.EPERM)

AGAIN = "nothing was changed; once it is fixed, run the command again (no restart needed)"


class StateDirError(OperationFailed):
    """A write to the state folder failed: full, read-only, unreadable or broken."""


def storage_error(e: OSError, path: Path | str | None = None) -> BgdeployError:
    """The sentence and hint for an OSError of a write to ``path`` (default: its filename)."""
    where = Path(path if path is not None else (e.filename or "the state folder"))
    reason = e.strerror or str(e)
    if e.errno in FULL:
        return StateDirError(
            f"The filesystem of {where} is full ({reason}).",
            hint=f"Free some space there; {AGAIN}.",
        )
    if e.errno in READ_ONLY:
        return StateDirError(
            f"The filesystem of {where} is read-only ({reason}).",
            hint=f"Remount it read-write or set state_dir in bgdeploy.toml; {AGAIN}.",
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return StateDirError(
            f"Cannot write {where} ({reason}).",
            hint=f"Check the folder's owner and permissions; {AGAIN}.",
        )
    return StateDirError(
        f"Cannot write {where} ({reason}).",
        hint=f"Check the disk (dmesg) and the state folder; {AGAIN}.",
    )


def as_user_error(e: BaseException) -> BgdeployError | None:
    """A fault of the machine escaping as a bare exception, as one sentence; else None."""
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return storage_error(e)
    return None


def registry_fault(detail: str, url: str) -> RegistryError | None:
    """SQLite's words for a full disk, a read-only file or a lock held too long, as a
    sentence about the registry at ``url``; None for anything else.

    SQLite reports a shared-memory file it cannot create (a full disk, a read-only
    folder) as "disk I/O error" or "unable to open database file": the folder's own
    state says which it is."""
    text = detail.lower()
    folder = sqlite_path(url)
    state = _folder_state(folder.parent) if folder is not None else None
    where = str(folder) if folder is not None else url
    if "disk is full" in text or "no space" in text or state == "full":
        return RegistryError(
            f"The registry {where} cannot be used: its filesystem is full ({detail}).",
            hint=f"Free some space there; {AGAIN}.",
        )
    if "readonly" in text or "read-only" in text or state == "read-only":
        return RegistryError(
            f"The registry {where} cannot be used: its filesystem is read-only ({detail}).",
            hint=f"Remount it read-write; {AGAIN}.",
        )
    if "locked" in text or "busy" in text:
        return RegistryError(
            f"The registry {where} is locked by another process ({detail}).",
            hint="Another process holds it for longer than the busy timeout; `fuser` on the "
            "file names it. Nothing was changed; retry once it lets go.",
        )
    if "disk i/o error" in text:
        return RegistryError(
            f"The registry {where} could not be read or written: the disk failed ({detail}).",
            hint=f"Check the disk (dmesg); {AGAIN}.",
        )
    return None


def _folder_state(folder: Path) -> str | None:
    """Whether the folder's filesystem is "full" or "read-only" (None: neither, or unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only"
    if st.f_bavail == 0:
        return "full"
    return None


# -- signals to a command ----------------------------------------------------------------

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its sibling
    """A command got SIGINT, SIGTERM or SIGHUP; exit code 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.detail: str | None = None  # what was undone, told after the reason
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return f"interrupted by {self.name}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


REDELIVER_S = 0.01


class _Handlers:
    """The first signal raises ``Interrupted`` in the main thread; later ones are only
    noted, so that the cleanup the first one started (stopping a candidate, recording
    the abort) is not cut short by a second Ctrl-C.

    A signal that lands while the garbage collector runs a finalizer (a ``__del__``)
    would raise there, where Python drops the exception ("Exception ignored in ..."):
    it is delivered again a moment later instead, once that code has returned."""

    def __init__(self) -> None:
        self.first: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.first is not None:
            return
        if _in_finalizer(frame):
            timer = threading.Timer(REDELIVER_S, signal.raise_signal, (signum,))
            timer.daemon = True
            timer.start()
            return
        self.first = signum
        raise Interrupted(signum)


def _in_finalizer(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def install_signal_handlers() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into ``Interrupted`` (main thread only)."""
    handlers = _Handlers()
    for sig in SIGNALS:
        signal.signal(sig, handlers)


def restore_default_signals() -> None:
    """Give the process back its default signal handling (a long-lived router installs
    its own for SIGTERM and SIGINT)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
