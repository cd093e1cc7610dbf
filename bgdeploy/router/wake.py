"""Wake up when a file changes: Linux inotify, through ctypes, for the registry watcher.

An idle router then sleeps until the registry's database or its WAL is written,
instead of asking SQLite a hundred times a second whether it was.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class FileWaker:
    """Sets ``changed`` whenever one of ``names`` in ``folder`` is written, created or replaced.

    Raises OSError where inotify is not available; the caller then polls.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, folder: Path, names: set[str]) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(folder), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {folder} failed")
        self.fd = fd
        self.loop = loop
        self.names = {os.fsencode(n) for n in names}
        self.changed = asyncio.Event()
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)  # whole events only; the rest wakes us again
        except BlockingIOError:
            return
        i = 0
        while i < len(data):
            length = EVENT.unpack_from(data, i)[3]
            name = data[i + EVENT.size : i + EVENT.size + length].rstrip(b"\0")
            i += EVENT.size + length
            if name in self.names:
                self.changed.set()

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
