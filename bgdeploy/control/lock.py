"""The lifecycle lock: one lifecycle operation per service at a time, across processes.

It is an ``flock`` on ``<state_dir>/locks/<service>.lock``. The kernel drops
an flock when the holding process dies, kill -9 included, so a stale lock can
never block the next run. The file's text names the holder (pid, since,
command) for ``status`` and for the "lock busy" error; it is only read while
the flock is held by someone.

Acquire fully or not at all: the holder's record is written *after* the flock
(before it, it would overwrite the record of the process that holds the lock),
and if that write fails (a full or read-only disk, an I/O error) the flock is
dropped and the descriptor closed before the error is raised, as one sentence.
A descriptor that kept the flock would block every later acquire, the control
loop's included, until its process died. The record is a fixed-size block that
is overwritten in place and never truncated (release blanks it), so once the
file exists taking the lock needs no new disk block: a full disk does not stop
the lock, only the writes that follow it, which fail on their own with their own
sentence.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bgdeploy.errors import LockBusy
from bgdeploy.faults import storage_error
from bgdeploy.timefmt import iso

POLL_S = 0.05
GRACE_S = 0.2
RECORD_SIZE = 512  # the holder's record: pid, since, command (<= 300 chars), blank-padded
BLANK = b" " * RECORD_SIZE


@dataclass(frozen=True)
class LockHolder:
    pid: int | None
    command: str
    since: str  # ISO 8601 UTC

    def as_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "command": self.command, "since": self.since}

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}) since {self.since}"


class LifecycleLock:
    def __init__(self, state_dir: Path, service: str) -> None:
        self.path = state_dir / "locks" / f"{service}.lock"
        self.service = service
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as e:
            raise storage_error(e, self.path) from None

    def acquire(self, wait: float | None = None, command: str | None = None) -> None:
        """Take the lock; ``wait`` seconds at most (None: do not wait; exit 3 if busy)."""
        if self._fd is not None:
            raise RuntimeError("lifecycle lock already held by this object")
        fd = self._open()
        try:
            self._take(fd, wait)
            _write_record(fd, _holder_record(command))
        except BaseException as e:
            # Acquire fully or release: never a descriptor that keeps the flock without
            # its record (a failed write, or a signal between the flock and the write).
            _drop(fd)
            if isinstance(e, OSError):
                raise storage_error(e, self.path) from None
            raise
        self._fd = fd

    def _take(self, fd: int, wait: float | None) -> None:
        # A short grace even without --wait: `status` takes a shared lock for a moment
        # to see whether the lock is held, and must not make a deploy fail.
        deadline = time.monotonic() + max(wait or 0.0, GRACE_S)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    who = holder.describe() if holder else "another process"
                    waited = f" after waiting {wait:g}s" if wait else ""
                    raise LockBusy(
                        f"The lifecycle lock of service '{self.service}' is held by {who}{waited}.",
                        holder=holder,
                    ) from None
                time.sleep(POLL_S)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _write_record(fd, BLANK)  # a reader never takes the next holder for this one
        except OSError:
            pass  # released all the same: the next holder overwrites the record
        finally:
            _drop(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> LockHolder | None:
        """Who holds the lock now, or None when it is free."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return None  # nobody holds it exclusively
            # Held: the holder writes its name right after taking it; give it a moment.
            for _ in range(20):
                lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
                if len(lines) >= 3:
                    pid = int(lines[0]) if lines[0].isdigit() else None
                    return LockHolder(pid=pid, since=lines[1], command=lines[2])
                time.sleep(0.005)
            return LockHolder(pid=None, since="unknown", command="unknown")
        finally:
            os.close(fd)

    def __enter__(self) -> LifecycleLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _own_command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]


def _holder_record(command: str | None) -> bytes:
    since = iso(datetime.now(UTC))
    name = (command or _own_command())[:300].replace("\n", " ")
    text = f"{os.getpid()}\n{since}\n{name}\n".encode()[: RECORD_SIZE - 1]
    return text + b" " * (RECORD_SIZE - len(text))


def _write_record(fd: int, record: bytes) -> None:
    """Overwrite the record in place: once the file has its block, no new one is needed."""
    if os.pwrite(fd, record, 0) != len(record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _drop(fd: int) -> None:
    """Unlock and close; closing alone drops the flock, so the close always happens."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class DrainClaim:
    """Who drains a boot that lost the route: an flock on ``locks/drain-<boot_id>.lock``.

    Draining needs no lifecycle lock, so the command that demoted a boot and any
    reconcile pass could both try to finish it; the claim makes it one of them. The
    demoting command claims the boot before it commits the demotion; a reconcile
    pass claims only boots nobody holds. The kernel drops the claim when its holder
    dies, so a boot whose drainer died is claimed and stopped by the next pass.
    """

    def __init__(self, state_dir: Path, boot_id: str) -> None:
        self.path = state_dir / "locks" / f"drain-{boot_id}.lock"
        self._fd: int | None = None

    def try_claim(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as e:
            raise storage_error(e, self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock
