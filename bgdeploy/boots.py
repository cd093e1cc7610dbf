"""Boots: spawn, identify, stop; internal ports; liveness.

A process is ours only if its pid **and** its start time match what we
recorded (psutil), so a recycled pid is never mistaken for our daemon. Each
daemon runs in its own session (so its own process group): stop signals go to
the whole group, so the daemon's children go with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import psutil

from bgdeploy.config import Config
from bgdeploy.errors import BootError
from bgdeploy.faults import storage_error
from bgdeploy.registry.models import Boot
from bgdeploy.registry.store import Registry
from bgdeploy.states import BootState

log = logging.getLogger("bgdeploy.boots")

POLL_S = 0.1


def process_matches(pid: int | None, create_time: float | None) -> bool:
    """True when ``pid`` is alive and is the very process we recorded (not a reused pid)."""
    if not pid or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.05 and proc.status() != "zombie"
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


def render_argv(command: list[str], *, port: int, boot_id: str, version: str) -> list[str]:
    """Fill {port}, {boot_id} and {version}; every other character passes unchanged."""
    subs = {"{port}": str(port), "{boot_id}": boot_id, "{version}": version}
    argv = []
    for item in command:
        for key, value in subs.items():
            item = item.replace(key, value)
        argv.append(item)
    return argv


BASE_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


def base_env() -> dict[str, str]:
    """The environment every daemon starts from, whichever process starts it (a CLI
    command from a shell or cron, the router's heal or auto-deploy): nothing of the
    starter's own environment leaks in. ``daemon.env`` is merged over it. PATH begins
    with the bin folder of the Python that runs bgdeploy, so that tools installed beside
    it (a venv's gunicorn, its python3) are found the same way from everywhere."""
    user = pwd.getpwuid(os.getuid())
    return {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), *BASE_PATH]),
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "LANG": "C.UTF-8",
    }


def log_tail(path: str | Path | None, lines: int = 15) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            tail = deque(f.read().decode(errors="replace").splitlines(), maxlen=lines)
    except OSError:
        return ""
    return "\n".join(tail)


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
                and proc.info["create_time"] >= since - 0.05
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return members


class Children:
    """The daemons this process started, shared by all its Supervisors: whoever stops a
    boot (this process, or a CLI command), ``reap`` collects its exit, so that no boot
    stays a zombie under a long-lived router; the exit codes stay readable."""

    KEEP_EXITED = 256  # exit codes kept for history's "exit" events; older ones go

    def __init__(self) -> None:
        self._procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[str, str], proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs[key] = proc

    def get(self, key: tuple[str, str]) -> subprocess.Popen[bytes] | None:
        with self._lock:
            return self._procs.get(key)

    def pop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._procs.pop(key, None)

    def reap(self) -> int:
        """Collect the exit of every child that has exited; returns how many run on."""
        with self._lock:
            procs = list(self._procs.items())
        exited = [key for key, proc in procs if proc.poll() is not None]
        with self._lock:
            for key in exited[: max(0, len(exited) - self.KEEP_EXITED)]:
                self._procs.pop(key, None)
        return len(procs) - len(exited)


CHILDREN = Children()


class BootProcesses:
    """Starts and stops the boots of one config. The Popen of each boot this process
    started is kept (in CHILDREN) to reap it and read its exit code."""

    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry

    def _key(self, boot_id: str) -> tuple[str, str]:
        return (str(self.config.state_dir), boot_id)

    def reap(self) -> None:
        """Collect the exits of the boots this process started (a router calls it every
        control pass: a boot a CLI command stopped must not stay a zombie)."""
        CHILDREN.reap()

    # -- start ---------------------------------------------------------------------------

    def spawn(self, boot_id: str) -> Boot:
        """Start the daemon for an existing boot row; returns the row with pid and port."""
        boot = self._row(boot_id)
        records = self.registry.boot_records
        port = records.assign_port(boot_id, self.config.daemon.port_range, port_is_free)
        argv = render_argv(
            self.config.daemon.command, port=port, boot_id=boot_id, version=boot.version
        )
        logs = self.config.logs_dir
        log_path = logs / f"{boot_id}.log"
        daemon = self.config.daemon
        cwd = daemon.cwd or self.config.base_dir
        env = {
            **base_env(),
            **daemon.env,
            "BGDEPLOY_STATE_DIR": str(self.config.state_dir),
            "BGDEPLOY_PORT": str(port),
            "BGDEPLOY_BOOT_ID": boot_id,
            "BGDEPLOY_VERSION": boot.version,
        }
        try:
            logs.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(log_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        except OSError as e:  # a full or read-only state folder: one sentence, boot failed
            records.mark_exited(boot_id, BootState.FAILED, None)
            raise storage_error(e, log_path) from None
        try:
            proc = subprocess.Popen(  # argv list, never a shell
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            records.mark_exited(boot_id, BootState.FAILED, None)
            if not cwd.is_dir():
                raise BootError(
                    f"Boot {boot_id} could not start: its working folder {cwd} does not exist.",
                    hint="Create it, or set daemon.cwd in bgdeploy.toml to a folder that exists.",
                ) from None
            raise BootError(
                f"Boot {boot_id} could not start {argv[0]!r}: {e.strerror or e}.",
                hint="Check daemon.command in bgdeploy.toml (an argv list; the first item "
                "must be an executable).",
            ) from None
        finally:
            os.close(fd)
        CHILDREN.add(self._key(boot_id), proc)
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # exited already; still record the pid for the log
            create_time = time.time()
        records.set_process(boot_id, proc.pid, create_time, str(log_path))
        log.info("boot %s: started pid %d on port %d (%s)", boot_id, proc.pid, port, boot.version)
        return self._row(boot_id)

    # -- liveness ------------------------------------------------------------------------

    def is_running(self, boot: Boot) -> bool:
        child = CHILDREN.get(self._key(boot.boot_id))
        if child is not None and child.poll() is not None:
            return False
        return process_matches(boot.pid, boot.pid_create_time)

    def exit_code(self, boot: Boot) -> int | None:
        """The exit code when we started the boot ourselves and it has exited, else None."""
        child = CHILDREN.get(self._key(boot.boot_id))
        return child.poll() if child is not None else None

    def describe_exit(self, boot: Boot, *, honest: bool = False) -> str:
        """How the boot ended; with ``honest``, say when its status cannot be known
        (a boot another process started is not our child: no one we can ask reaps it)."""
        code = self.exit_code(boot)
        if code is None:
            return "exited (exit status unknown: not our child)" if honest else "exited"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    # -- stop ----------------------------------------------------------------------------

    def stop(
        self,
        boot: Boot,
        *,
        timeout: float | None = None,
        final_state: BootState = BootState.STOPPED,
    ) -> int | None:
        """SIGTERM to the boot's process group, SIGKILL to the group after ``timeout``.

        Returns the exit code where it can be known. Leftover group members (children
        that ignore SIGTERM) are killed too. The registry records the exit.
        """
        timeout = self.config.daemon.stop_timeout if timeout is None else timeout
        code: int | None = None
        if boot.pid is None:  # spawned, but its pid never reached the registry
            for proc in processes_of_boot(boot.boot_id, self.config.state_dir):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        if self.is_running(boot):
            assert boot.pid is not None and boot.pid_create_time is not None
            pgid = boot.pid  # the boot is its own session and group leader
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            code = self._wait_exit(boot, timeout)
            if code is None and self.is_running(boot):
                log.warning(
                    "boot %s ignored SIGTERM for %.1fs; killing its process group",
                    boot.boot_id,
                    timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                code = self._wait_exit(boot, 5.0)
                if code is None and not self.is_running(boot):
                    code = -signal.SIGKILL  # not our child, but we know what ended it
            self._kill_leftovers(pgid, boot.pid_create_time)
        if code is None:
            code = self.exit_code(boot)
        self.registry.boot_records.mark_exited(boot.boot_id, final_state, code)
        CHILDREN.pop(self._key(boot.boot_id))
        log.info("boot %s: stopped (%s)", boot.boot_id, code)
        return code

    def _wait_exit(self, boot: Boot, timeout: float) -> int | None:
        child = CHILDREN.get(self._key(boot.boot_id))
        if child is not None:
            try:
                return child.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout
        while self.is_running(boot):
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)
        return None

    def _kill_leftovers(self, pgid: int, since: float) -> None:
        for proc in group_members(pgid, since):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()

    def _row(self, boot_id: str) -> Boot:
        boot = self.registry.boot(boot_id)
        if boot is None:
            raise BootError(
                f"There is no boot {boot_id!r} in the registry.",
                hint="Run `bgdeploy status` to see the boots.",
            )
        return boot
