"""Processes by identity: a pid is the process we recorded only when its start time
matches too (psutil); the daemons we started for a state folder are found by the
environment we gave them; pidfds watch an exit whoever the parent is."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil

START_SLACK_S = 0.05  # two readings of one process's start time differ by less


def same_start(a: float, b: float) -> bool:
    """Two start times (psutil's ``create_time``) of one and the same process."""
    return abs(a - b) < START_SLACK_S


def process_matches(pid: int | None, create_time: float | None) -> bool:
    """True when ``pid`` is alive and is the very process we recorded (not a reused pid)."""
    if not pid or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        return same_start(proc.create_time(), create_time) and proc.status() != "zombie"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def open_pidfd(pid: int | None, create_time: float | None) -> int | None:
    """A pidfd of the recorded process (Linux 5.3+): it becomes readable when the
    process exits, whoever its parent is. None when the platform has none, or the
    process is gone or is not the one we recorded."""
    if not pid or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    # Checked after the open: a pid recycled before it would otherwise be watched.
    if not process_matches(pid, create_time):
        os.close(fd)
        return None
    return fd


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on host:port and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _started_for(state_dir: Path) -> Iterator[tuple[psutil.Process, dict[str, str]]]:
    """Processes we started for this state dir, with their env (which is how we know)."""
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("BGDEPLOY_STATE_DIR") == str(state_dir):
            yield proc, env


def processes_of_state_dir(state_dir: Path) -> list[psutil.Process]:
    """Processes we started for this state dir, found by the env we gave them."""
    return [proc for proc, _ in _started_for(state_dir)]


def processes_of_boot(boot_id: str, state_dir: Path) -> list[psutil.Process]:
    """The processes of one boot, by env: used when a boot's pid never reached the
    registry (its starter died between spawn and the write), so that such a daemon
    cannot live on unseen."""
    return [proc for proc, env in _started_for(state_dir) if env.get("BGDEPLOY_BOOT_ID") == boot_id]


def port_holder(host: str, port: int) -> str | None:
    """Describe the process listening on host:port, when we can see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                proc = psutil.Process(c.pid)
                return f"pid {c.pid} ({' '.join(proc.cmdline())[:120] or proc.name()})"
            except psutil.Error:
                return f"pid {c.pid}"
    return None


def group_members(pgid: int, since: float) -> list[psutil.Process]:
    """Live processes of process group ``pgid`` that started no earlier than ``since``."""
    members = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            same_group = os.getpgid(proc.pid) == pgid
            if (
                same_group
                and proc.info["create_time"] >= since - START_SLACK_S
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return members
