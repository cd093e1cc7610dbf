"""The lifecycle lock: one lifecycle operation per service at a time, across processes.

It is an ``flock`` on ``<state_dir>/locks/<service>.lock``. The kernel drops
an flock when the holding process dies, kill -9 included, so a stale lock can
never block the next run. The file's text names the holder (pid, since,
command) for ``status`` and for the "lock busy" error; it is only read while
the flock is held by someone.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bgdeploy.errors import LockBusy, RegistryError

POLL_S = 0.05
GRACE_S = 0.2


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
            raise RegistryError(
                f"Cannot open the lifecycle lock {self.path}: {e.strerror}.",
                hint="Check that the state folder is writable.",
            ) from None

    def acquire(self, wait: float | None = None, command: str | None = None) -> None:
        """Take the lock; ``wait`` seconds at most (None: do not wait; exit 3 if busy)."""
        if self._fd is not None:
            raise RuntimeError("lifecycle lock already held by this object")
        fd = self._open()
        # A short grace even without --wait: `status` takes a shared lock for a moment
        # to see whether the lock is held, and must not make a deploy fail.
        deadline = time.monotonic() + max(wait or 0.0, GRACE_S)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    who = holder.describe() if holder else "another process"
                    waited = f" after waiting {wait:g}s" if wait else ""
                    raise LockBusy(
                        f"The lifecycle lock of service '{self.service}' is held by {who}{waited}.",
                        holder=holder,
                    ) from None
                time.sleep(POLL_S)
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"{os.getpid()}\n{since}\n{command or _own_command()}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

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
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
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
