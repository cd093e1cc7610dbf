"""How the router's processes talk: one JSON line each way over a unix socket.

Each worker and the supervisor listen on an abstract unix socket (Linux; no file
to clean up after a kill -9) named after the state directory and their pid, so
a new supervisor finds the live workers of its state directory in
``/proc/net/unix``. Only a peer of the same user is answered (SO_PEERCRED). A
worker hands its listening sockets over with SCM_RIGHTS: that is how a
supervisor started after a kill -9 of the last one gets the port without ever
closing it. Stdlib only: workers import this.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

MAX_MESSAGE = 1 << 20
WORKER_SPEC_ENV = "BGDEPLOY_WORKER"  # a worker's settings, JSON, from its supervisor
_CRED = struct.Struct("3i")


def namespace(state_dir: Path) -> str:
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    return f"bgdeploy-{digest}"


def worker_address(ns: str, pid: int) -> str:
    return f"\0{ns}/worker/{pid}"


def supervisor_address(ns: str, pid: int) -> str:
    return f"\0{ns}/supervisor/{pid}"


def live_workers(ns: str) -> list[int]:
    """Pids of the workers listening in this namespace (the kernel's list of sockets)."""
    prefix = f"@{ns}/worker/"
    pids = set()
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        path = line.split()[-1] if len(line.split()) >= 8 else ""
        if path.startswith(prefix) and path[len(prefix) :].isdigit():
            pids.add(int(path[len(prefix) :]))
    return sorted(pids)


def listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(16)
    return sock


def peer_is_us(conn: socket.socket) -> bool:
    _pid, uid, _gid = _CRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    )
    return uid == os.getuid()


def read_message(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One JSON line, and any descriptors that came with it."""
    chunks: list[bytes] = []
    fds: list[int] = []
    size = 0
    while True:
        data, got, _flags, _addr = socket.recv_fds(conn, 65536, 4)
        fds.extend(got)
        if not data:
            break
        chunks.append(data)
        size += len(data)
        if data.endswith(b"\n") or size > MAX_MESSAGE:
            break
    line = b"".join(chunks)
    if not line:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("the peer closed the connection without an answer")
    return json.loads(line), fds


def send_message(conn: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:  # type: ignore[assignment]
    data = json.dumps(message).encode() + b"\n"
    if fds:
        sent = socket.send_fds(conn, [data], list(fds))
        data = data[sent:]
    if data:
        conn.sendall(data)


def request(
    address: str, message: dict[str, Any], timeout: float = 2.0
) -> tuple[dict[str, Any], list[int]]:
    """Ask one process and wait for its answer (raises OSError when it is gone)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        send_message(sock, message)
        return read_message(sock)
