"""Where the supervisor's listening sockets come from, in this order:

1. the supervisor it replaces (a reload onto new code): descriptors passed across
   exec, named in ``$BGDEPLOY_ROUTER_FDS``;
2. systemd socket activation (``$LISTEN_PID``/``$LISTEN_FDS``: the router port, then
   optionally the admin port);
3. a live worker of a supervisor that was killed: asked over its unix socket, the
   descriptors come back by SCM_RIGHTS (the port was never closed);
4. made here.

A lock file (flock) held for the supervisor's life makes it the only one of its
state directory; it is handed over with the sockets.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass, field

from bgdeploy.config import Config
from bgdeploy.errors import LockBusy, OperationFailed
from bgdeploy.processes import port_holder
from bgdeploy.router import ipc

HANDOVER_ENV = "BGDEPLOY_ROUTER_FDS"
TAKEOVER_ENV = "BGDEPLOY_ROUTER_TAKEOVER"
READY_ENV = "BGDEPLOY_ROUTER_READY"
SD_LISTEN_FDS_START = 3
BACKLOG = 2048


@dataclass
class Sockets:
    listen: socket.socket
    admin: socket.socket
    lock_fd: int
    source: str
    orphans: list[int] = field(default_factory=list)  # live workers of a killed supervisor
    preview: socket.socket | None = None  # router.preview_port, when set

    @classmethod
    def acquire(cls, config: Config, ns: str) -> Sockets:
        handed = _parse(os.environ.pop(HANDOVER_ENV, ""))
        lock_fd = handed["lock"] if "lock" in handed else _lock(config)
        try:
            return cls._sockets(config, ns, handed, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _sockets(cls, config: Config, ns: str, handed: dict[str, int], lock_fd: int) -> Sockets:
        cfg = config.router
        if "listen" in handed:
            got = cls(_fd(handed["listen"]), _fd(handed["admin"]), lock_fd, "handed over")
            return got.with_preview(config, handed.get("preview"))
        systemd = _systemd_fds()
        if systemd:
            if len(systemd) > 1:
                admin = _fd(systemd[1])
            else:
                admin = _make(cfg.host, cfg.admin_port, "admin listener")
            return cls(_fd(systemd[0]), admin, lock_fd, "systemd").with_preview(config, None)
        orphans = ipc.live_workers(ns)
        for pid in orphans:
            try:
                answer, fds = ipc.request(ipc.worker_address(ns, pid), {"cmd": "sockets"}, 2.0)
            except (OSError, ValueError):
                continue
            named = dict(zip(answer.get("names", []), fds, strict=False))
            if "listen" in named and "admin" in named:
                return cls(
                    _fd(named["listen"]), _fd(named["admin"]), lock_fd, f"worker {pid}", orphans
                )
            for fd in fds:
                os.close(fd)
        listen = _make(cfg.host, cfg.port, "router")
        try:
            admin = _make(cfg.host, cfg.admin_port, "admin listener")
        except OperationFailed:
            listen.close()
            raise
        got = cls(listen, admin, lock_fd, "created")
        try:
            return got.with_preview(config, None)
        except OperationFailed:
            listen.close()
            admin.close()
            raise

    def with_preview(self, config: Config, fd: int | None) -> Sockets:
        """The preview listener: the one passed along, else made when preview_port is set."""
        cfg = config.router
        if fd is not None:
            self.preview = _fd(fd)
        elif cfg.preview_port is not None:
            self.preview = _make(cfg.host, cfg.preview_port, "preview listener")
        return self

    def fds(self) -> list[int]:
        fds = [self.listen.fileno(), self.admin.fileno(), self.lock_fd]
        return fds + ([self.preview.fileno()] if self.preview is not None else [])

    def describe(self) -> str:
        out = f"listen={self.listen.fileno()},admin={self.admin.fileno()},lock={self.lock_fd}"
        return out + (f",preview={self.preview.fileno()}" if self.preview is not None else "")

    def close(self) -> None:
        self.listen.close()
        self.admin.close()
        if self.preview is not None:
            self.preview.close()
        os.close(self.lock_fd)


def notify_systemd(pid: int) -> None:
    """Tell systemd (Type=notify, NotifyAccess=all) that we serve and are its main process
    now: after a handover the successor is, and the one before exits."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    # systemd gone or not a notify service: nothing to tell.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(f"READY=1\nMAINPID={pid}\n".encode(), address)


def _parse(value: str) -> dict[str, int]:
    out = {}
    for part in filter(None, value.split(",")):
        name, _, fd = part.partition("=")
        out[name] = int(fd)
    return out


def _fd(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def _systemd_fds() -> list[int]:
    pid, n = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not pid.isdigit() or int(pid) != os.getpid() or not n.isdigit():
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(n)))


def _lock(config: Config) -> int:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = config.state_dir / "router.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        raise LockBusy(
            "Another router supervisor runs for this state directory"
            + (f" (pid {holder})." if holder else "."),
            hint="`bgdeploy status` shows it; `bgdeploy router reload` replaces its workers.",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _make(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            who = port_holder(host, port)
            raise OperationFailed(
                f"The {what} cannot listen on {host}:{port}: the port is taken"
                + (f" by {who}." if who else "."),
                hint="Stop that process, or set another port in [router] of bgdeploy.toml.",
            ) from None
        raise OperationFailed(f"The {what} cannot listen on {host}:{port}: {e.strerror}.") from None
    sock.setblocking(False)
    return sock
