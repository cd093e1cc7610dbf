"""systemd socket activation: the port belongs to systemd (here: the test), so it outlives
every bgdeploy process; a request sent while no router runs is answered by the next one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from bgdeploy.boots import BootProcesses
from tests.conftest import REPO
from tests.integration.conftest import deploy, free_port, make_app

# What systemd does before starting the service: the socket at fd 3, LISTEN_PID = the pid.
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


@pytest.mark.slow
def test_socket_activation_keeps_the_port_across_router_restarts(tmp_path):
    listen = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listen.getsockname()[1]
    app = make_app(tmp_path, extra=f"\n[router]\nport = {port}\nadmin_port = {free_port()}\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_name = f"bgdeploy-test-notify-{os.getpid()}"
    notify.bind("\0" + notify_name)
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": "@" + notify_name}
    argv = [sys.executable, "-c", ACTIVATE, str(listen.fileno()), "-m", "bgdeploy"]
    argv += ["--config", str(app.config.path), "up", "--foreground", "--no-deploy"]
    log = open(tmp_path / "router.log", "ab")  # noqa: SIM115

    def activate() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, pass_fds=[listen.fileno()], env=env, cwd=REPO, stdout=log, stderr=log
        )
        # Type=notify: systemd learns that it serves, and which process is the main one.
        assert notify.recv(256).decode() == f"READY=1\nMAINPID={proc.pid}\n"
        return proc

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    procs = []
    try:
        procs.append(activate())
        boot = deploy(app, "1.0")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        stop(procs[0])
        # No bgdeploy process holds the port now; systemd (the test) still does.
        waiting = socket.create_connection(("127.0.0.1", port), timeout=30)
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        procs.append(activate())
        answer = b""
        while chunk := waiting.recv(65536):
            answer += chunk
        waiting.close()
        assert answer.startswith(b"HTTP/1.1 200") and boot.boot_id.encode() in answer
        assert "sockets systemd" in (tmp_path / "router.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc)
        log.close()
        listen.close()
        notify.close()
        sup = BootProcesses(app.config, app.registry)
        for b in app.registry.boots(app.service, live_only=True):
            if sup.is_running(b):
                sup.stop(b, timeout=2)
        app.close()
