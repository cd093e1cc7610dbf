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
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import psutil

from bgdeploy.config import Config
from bgdeploy.errors import BootError
from bgdeploy.faults import storage_error
from bgdeploy.processes import (
    group_members,
    port_is_free,
    process_matches,
    processes_of_boot,
    same_start,
)
from bgdeploy.registry.models import Boot, Replica
from bgdeploy.registry.replicas import STOPPED
from bgdeploy.registry.store import Registry
from bgdeploy.states import BootState

log = logging.getLogger("bgdeploy.boots")

POLL_S = 0.1


def render_argv(
    command: list[str], *, port: int, boot_id: str, version: str, replica: int = 0
) -> list[str]:
    """Fill {port}, {boot_id}, {version} and {replica}; every other character passes
    unchanged."""
    subs = {
        "{port}": str(port),
        "{boot_id}": boot_id,
        "{version}": version,
        "{replica}": str(replica),
    }
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


class Children:
    """The daemons this process started, shared by all its Supervisors: whoever stops a
    boot (this process, or a CLI command), ``reap`` collects its exit, so that no boot
    stays a zombie under a long-lived router; the exit codes stay readable."""

    KEEP_EXITED = 256  # exit codes kept for history's "exit" events; older ones go

    def __init__(self) -> None:
        # each one's Popen, and its start time (psutil) to tell it from a later process
        self._procs: dict[tuple[str, str], tuple[subprocess.Popen[bytes], float]] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[str, str], proc: subprocess.Popen[bytes], created: float) -> None:
        with self._lock:
            self._procs[key] = (proc, created)

    def get(self, key: tuple[str, str]) -> tuple[subprocess.Popen[bytes], float] | None:
        with self._lock:
            return self._procs.get(key)

    def pop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._procs.pop(key, None)

    def reap(self) -> int:
        """Collect the exit of every child that has exited; returns how many run on."""
        with self._lock:
            procs = list(self._procs.items())
        exited = [key for key, (proc, _) in procs if proc.poll() is not None]
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

    def _key(self, boot_id: str, replica: int = 0) -> tuple[str, str]:
        name = boot_id if replica == 0 else f"{boot_id}/{replica}"
        return (str(self.config.state_dir), name)

    def _child(
        self, boot_id: str, replica: int, pid: int | None, created: float | None
    ) -> subprocess.Popen[bytes] | None:
        """The Popen this process keeps for the process the registry records (``pid``
        and its start time ``created``; None in a row read before the spawn recorded
        them); None when it keeps none, or one of an earlier process: another process
        (a router's tending) has started that replica again since, and the old
        handle's exit says nothing of the new one, even where the new one got the
        old one's pid again."""
        kept = CHILDREN.get(self._key(boot_id, replica))
        if kept is None:
            return None
        child, started = kept
        if pid is not None and (
            child.pid != pid or (created is not None and not same_start(started, created))
        ):
            return None
        return child

    def reap(self) -> None:
        """Collect the exits of the boots this process started (a router calls it every
        control pass: a boot a CLI command stopped must not stay a zombie)."""
        CHILDREN.reap()

    # -- start ---------------------------------------------------------------------------

    def spawn(self, boot_id: str, replicas: int = 1) -> Boot:
        """Start the daemon for an existing boot row: one process, or a set of
        ``replicas`` (each on its own port); returns the row with pid and port."""
        boot = self._row(boot_id)
        if replicas <= 1:
            records = self.registry.boot_records
            port = records.assign_port(boot_id, self.config.daemon.port_range, port_is_free)
            pid, create_time, log_path = self._start(boot, 0, port)
            records.set_process(boot_id, pid, create_time, log_path)
            return self._row(boot_id)
        self.registry.replicas.set_count(boot_id, replicas)
        for replica in range(replicas):
            self.spawn_replica(boot, replica)
        return self._row(boot_id)

    def spawn_replica(self, boot: Boot, replica: int, prefer_port: int | None = None) -> Replica:
        """Start (or start again) one replica of a boot of several, out of rotation
        until a health check puts it in."""
        reps = self.registry.replicas
        if prefer_port is None or reps.get(boot.boot_id, replica) is None:
            reps.add(boot.boot_id, replica)
        port = reps.assign_port(
            boot.boot_id, replica, self.config.daemon.port_range, port_is_free, prefer_port
        )
        pid, create_time, log_path = self._start(boot, replica, port)
        reps.set_process(boot.boot_id, replica, pid, create_time, log_path)
        row = reps.get(boot.boot_id, replica)
        assert row is not None
        return row

    def _start(self, boot: Boot, replica: int, port: int) -> tuple[int, float, str]:
        """Spawn one daemon process on ``port``: its pid, start time and log."""
        boot_id = boot.boot_id
        argv = render_argv(
            self.config.daemon.command,
            port=port,
            boot_id=boot_id,
            version=boot.version,
            replica=replica,
        )
        logs = self.config.logs_dir
        log_path = logs / (f"{boot_id}.log" if replica == 0 else f"{boot_id}.r{replica}.log")
        daemon = self.config.daemon
        cwd = daemon.cwd or self.config.base_dir
        env = {
            **base_env(),
            **daemon.env,
            "BGDEPLOY_STATE_DIR": str(self.config.state_dir),
            "BGDEPLOY_PORT": str(port),
            "BGDEPLOY_BOOT_ID": boot_id,
            "BGDEPLOY_VERSION": boot.version,
            "BGDEPLOY_REPLICA": str(replica),
        }
        records = self.registry.boot_records
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
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # exited already; still record the pid for the log
            create_time = time.time()
        CHILDREN.add(self._key(boot_id, replica), proc, create_time)
        which = f"boot {boot_id}" + (f" replica {replica}" if replica else "")
        log.info("%s: started pid %d on port %d (%s)", which, proc.pid, port, boot.version)
        return proc.pid, create_time, str(log_path)

    # -- liveness ------------------------------------------------------------------------

    def is_running(self, boot: Boot, replicas: list[Replica] | None = None) -> bool:
        """The boot's process lives; for a boot of several, at least one replica does.
        ``replicas``: the boot's replica rows where the caller has read them already."""
        rows = self.registry.replicas.rows(boot.boot_id) if replicas is None else replicas
        if rows:
            return any(self.replica_running(r) for r in rows if r.state != STOPPED)
        child = self._child(boot.boot_id, 0, boot.pid, boot.pid_create_time)
        if child is not None and child.poll() is not None:
            return False
        return process_matches(boot.pid, boot.pid_create_time)

    def replica_running(self, rep: Replica) -> bool:
        child = self._child(rep.boot_id, rep.replica, rep.pid, rep.pid_create_time)
        if child is not None and child.poll() is not None:
            return False
        return process_matches(rep.pid, rep.pid_create_time)

    def replica_exit_code(self, rep: Replica) -> int | None:
        child = self._child(rep.boot_id, rep.replica, rep.pid, rep.pid_create_time)
        return child.poll() if child is not None else None

    def describe_replica_exit(self, rep: Replica) -> str:
        code = self.replica_exit_code(rep)
        if code is None:
            return "exited (exit status unknown: not our child)"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def exit_code(self, boot: Boot) -> int | None:
        """The exit code when we started the boot ourselves and it has exited, else None."""
        child = self._child(boot.boot_id, 0, boot.pid, boot.pid_create_time)
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
        rows = self.registry.replicas.rows(boot.boot_id)
        if rows:  # a set: every replica at once, replica 0's code for the boot
            codes = self.stop_replicas(rows, timeout=timeout)
            self.registry.boot_records.mark_exited(boot.boot_id, final_state, codes.get(0))
            log.info("boot %s: stopped %d replicas (%s)", boot.boot_id, len(rows), codes)
            return codes.get(0)
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
        child = self._child(boot.boot_id, 0, boot.pid, boot.pid_create_time)
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

    def stop_replicas(
        self, rows: list[Replica], *, timeout: float, state: str = STOPPED
    ) -> dict[int, int | None]:
        """SIGTERM to every replica's process group at once, SIGKILL to those left after
        ``timeout``; each row leaves the rotation, marked ``state`` (stopped: for good;
        out: to start again). Returns the exit codes by replica."""
        codes: dict[int, int | None] = {}
        live = [r for r in rows if self.replica_running(r)]
        for r in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        for r in live:
            codes[r.replica] = self._wait_replica(r, max(0.0, deadline - time.monotonic()))
            if codes[r.replica] is None and self.replica_running(r):
                log.warning("boot %s replica %d ignored SIGTERM; killing it", r.boot_id, r.replica)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.pid, signal.SIGKILL)  # type: ignore[arg-type]
                code = self._wait_replica(r, 5.0)
                codes[r.replica] = -signal.SIGKILL if code is None else code
            assert r.pid is not None and r.pid_create_time is not None
            self._kill_leftovers(r.pid, r.pid_create_time)
        # A replica started again whose new pid never reached the registry (its starter
        # was stopped between the spawn and the write) is found by its environment.
        recorded = {r.pid for r in live}
        numbers = {str(r.replica) for r in rows}
        for proc in processes_of_boot(rows[0].boot_id, self.config.state_dir) if rows else []:
            with contextlib.suppress(psutil.Error):
                if proc.pid not in recorded and proc.environ().get("BGDEPLOY_REPLICA") in numbers:
                    proc.kill()
        for r in rows:
            if r.replica not in codes:
                codes[r.replica] = self.replica_exit_code(r)
            self.registry.replicas.out_of_rotation(r.boot_id, r.replica, state)
            self.registry.replicas.update(r.boot_id, r.replica, exit_code=codes[r.replica])
            CHILDREN.pop(self._key(r.boot_id, r.replica))
        return codes

    def _wait_replica(self, rep: Replica, timeout: float) -> int | None:
        child = self._child(rep.boot_id, rep.replica, rep.pid, rep.pid_create_time)
        if child is not None:
            try:
                return child.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout
        while self.replica_running(rep):
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
