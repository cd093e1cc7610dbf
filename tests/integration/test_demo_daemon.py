"""The packaged demo daemon (`python -m bgdeploy.demo`, `bgdeploy demo-daemon`) and
`bgdeploy init --demo/--port/--admin-port/--command`: what a user needs from `pip install`
alone, with no checkout and no aiohttp."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import tomllib

import httpx
import psutil
import pytest

from bgdeploy.processes import processes_of_state_dir
from tests.conftest import poll_until, run_bgdeploy
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow


def start_demo(*args: str, via_cli: bool = False) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    head = (
        [sys.executable, "-m", "bgdeploy", "demo-daemon"]
        if via_cli
        else [
            sys.executable,
            "-m",
            "bgdeploy.demo",
        ]
    )
    proc = subprocess.Popen(
        [*head, "--port", str(port), "--version", "4.2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # exited: let the assertion below say so

    poll_until(up, 15, what="the demo daemon to answer")
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    return proc, port


def test_the_demo_daemon_imports_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import bgdeploy.demo; "
        "print('\\n'.join({m.split('.')[0] for m in set(sys.modules) - before}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    foreign = [m for m in out if m not in sys.stdlib_module_names and m != "bgdeploy"]
    assert foreign == [], f"the demo daemon needs {foreign}: a `pip install` alone lacks them"


@pytest.mark.parametrize("via_cli", [False, True], ids=["python -m", "bgdeploy demo-daemon"])
def test_the_demo_daemon_follows_the_contract(via_cli):
    proc, port = start_demo(via_cli=via_cli)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert client.get("/").json() == {
                "version": "4.2",
                "boot_id": "manual",
                "pid": proc.pid,
            }
            assert client.get("/healthz").json() == {"status": "ok", "version": "4.2"}
            assert client.get("/nope").status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_sigterm_finishes_the_request_in_flight_and_closes_idle_connections():
    proc, port = start_demo()
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # kept alive, then idle
    idle.request("GET", "/")
    assert idle.getresponse().read() and idle.sock is not None
    answers: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"http://127.0.0.1:{port}/slow?ms=1500", timeout=10)
        )
    )
    slow.start()
    poll_until(
        lambda: any(
            c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
            for c in psutil.Process(proc.pid).net_connections()
            if c.raddr and c.raddr.port != idle.sock.getsockname()[1]
        ),
        5,
        what="the slow request to reach the daemon",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0  # the idle keep-alive connection did not hold it up
    slow.join(10)
    assert answers and answers[0].status_code == 200, "the request in flight was cut"
    assert answers[0].json()["slept_ms"] == 1500
    assert idle.sock.recv(4096) == b"", "the idle connection was left open"
    idle.close()
    assert "stopped: in-flight requests finished" in (proc.stdout.read() if proc.stdout else "")


def test_init_demo_writes_the_ports_and_a_daemon_that_serves(tmp_path):
    port, admin = free_port(), free_port()
    proc = run_bgdeploy(
        "init", "--demo", "--port", str(port), "--admin-port", str(admin), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "Daemon: " in proc.stdout and "bgdeploy.demo" in proc.stdout
    config = tomllib.loads((tmp_path / "bgdeploy.toml").read_text())
    assert config["router"]["port"] == port and config["router"]["admin_port"] == admin
    assert config["daemon"]["command"][:3] == [sys.executable, "-m", "bgdeploy.demo"]
    (tmp_path / "VERSION").write_text("1.0\n")
    try:
        up = run_bgdeploy("up", cwd=tmp_path, timeout=90)
        assert up.returncode == 0, up.stdout + up.stderr
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()
        assert answer["version"] == "1.0" and answer["boot_id"] == "blue-1"
        status = json.loads(run_bgdeploy("status", "--json", cwd=tmp_path).stdout)
        assert status["router"]["admin_url"] == f"http://127.0.0.1:{admin}"
    finally:
        down = run_bgdeploy("down", cwd=tmp_path, timeout=90)
        for leftover in processes_of_state_dir(tmp_path / ".bgdeploy"):
            leftover.kill()
    assert down.returncode == 0, down.stderr


def test_init_command_is_split_like_a_shell_and_never_overwrites(tmp_path):
    proc = run_bgdeploy("init", "--command", "./srv --port {port} --name 'my app'", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = tomllib.loads((tmp_path / "bgdeploy.toml").read_text())
    assert config["daemon"]["command"] == ["./srv", "--port", "{port}", "--name", "my app"]
    again = run_bgdeploy("init", "--port", "20001", cwd=tmp_path)
    assert again.returncode == 2
    assert "exists already" in again.stderr and "Traceback" not in again.stderr
    assert tomllib.loads((tmp_path / "bgdeploy.toml").read_text()) == config
    other = tmp_path / "other" / "bgdeploy.toml"
    both = run_bgdeploy("--config", str(other), "init", "--demo", "--command", "x", cwd=tmp_path)
    assert both.returncode == 2 and "--demo and --command" in both.stderr
    assert not other.exists()


def test_plain_init_says_what_to_set_next(tmp_path):
    proc = run_bgdeploy("init", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "set daemon.command" in proc.stdout and "bgdeploy init --demo" in proc.stdout
