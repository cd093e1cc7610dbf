"""The supervisor's worker processes: started from the installed code, ready or stopped.

A worker is ``python -m bgdeploy.router.worker`` (a fresh exec, so a reload runs the
code installed now) with the listening sockets passed as descriptors and its
settings as JSON in ``$BGDEPLOY_WORKER``. It says "ready" on a pipe once it
accepts; one that exits or stays silent fails the whole start, and the ones
started with it are stopped, so a broken install never replaces working workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from bgdeploy.config import Config
from bgdeploy.errors import OperationFailed
from bgdeploy.router import ipc
from bgdeploy.router.sockets import Sockets

WORKER_START_TIMEOUT_S = 20.0


class WorkersFailed(OperationFailed):
    """New workers did not come up (and were stopped); the ones before serve on."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"{why[0].upper()}{why[1:]}.",
            hint="See the router log (.bgdeploy/router.log) for the worker's error.",
        )
        self.why = why


@dataclass
class WorkerProc:
    pid: int
    proc: subprocess.Popen[bytes] | None  # None: adopted from a supervisor that died
    started: float
    draining: bool = False
    last: dict[str, Any] | None = None

    def exited(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def drain(self) -> None:
        """SIGTERM: stop accepting, finish what is in flight, exit (see worker.py)."""
        self.draining = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)


class ExitWatch:
    """Calls ``on_exit`` on the event loop when a watched worker exits: a pidfd per worker
    (readable once the process has exited, whoever its parent is, so an orphan adopted
    from a killed supervisor too) under ``loop.add_reader``. Use it on the loop's thread.
    Without pidfds (a kernel before 5.3) it watches nothing: the caller's periodic check
    is then what notices an exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        self.loop = loop
        self.on_exit = on_exit
        self.fds: dict[int, int] = {}  # pid -> pidfd

    def add(self, w: WorkerProc) -> None:
        if w.pid in self.fds:
            return
        try:
            fd = os.pidfd_open(w.pid)
        except ProcessLookupError:  # gone already (and reaped)
            self.loop.call_soon(self.on_exit)
            return
        except (OSError, AttributeError):
            return
        self.fds[w.pid] = fd
        self.loop.add_reader(fd, self._exited, w.pid)

    def _exited(self, pid: int) -> None:
        self.forget(pid)
        self.on_exit()

    def forget(self, pid: int) -> None:
        fd = self.fds.pop(pid, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for pid in list(self.fds):
            self.forget(pid)


def worker_count(config: Config) -> int:
    n = config.router.workers
    return (os.cpu_count() or 1) if n == "auto" else int(n)


def spawn(config: Config, sockets: Sockets, ns: str, service: str) -> tuple[WorkerProc, int]:
    """Start one worker; returns it and the read end of its readiness pipe."""
    listen, admin = sockets.listen.fileno(), sockets.admin.fileno()
    preview = sockets.preview.fileno() if sockets.preview is not None else None
    ready_r, ready_w = os.pipe()
    cfg = config.router
    spec = {
        "listen_fd": listen,
        "admin_fd": admin,
        "preview_fd": preview,
        "ready_fd": ready_w,
        "namespace": ns,
        "service": service,
        "registry_url": config.registry_url,
        "header_timeout": cfg.header_timeout,
        "idle_timeout": cfg.idle_timeout,
        "max_connections": cfg.max_connections,
        "upstream_timeout": cfg.upstream_timeout,
        "stream_idle_timeout": cfg.stream_idle_timeout,
        "max_body": cfg.max_body,
        "drain_timeout": config.daemon.drain_timeout,
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgdeploy.router.worker"],
            env={**os.environ, ipc.WORKER_SPEC_ENV: json.dumps(spec)},
            pass_fds=(listen, admin, ready_w, *([preview] if preview is not None else [])),
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(ready_w)
    return WorkerProc(proc.pid, proc, time.time()), ready_r


def start_workers(
    config: Config, sockets: Sockets, ns: str, service: str, n: int
) -> list[WorkerProc]:
    """n new workers, all serving; or none of them, and WorkersFailed saying why."""
    started = [spawn(config, sockets, ns, service) for _ in range(n)]
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    failure = None
    for w, ready in started:
        with os.fdopen(ready, "rb") as pipe:
            left = max(0.0, deadline - time.monotonic())
            answered = bool(select.select([pipe], [], [], left)[0])
            ok = answered and pipe.readline() == b"ready\n"
        if not ok and failure is None:
            code = None
            if answered and w.proc is not None:  # the pipe closed: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = w.proc.wait(5)
            failure = (
                f"a new router worker exited at start with code {code}"
                if code is not None
                else f"a new router worker did not start within {WORKER_START_TIMEOUT_S:g}s"
            )
    workers = [w for w, _ in started]
    if failure is not None:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        raise WorkersFailed(failure)
    return workers
