"""Replacing the router supervisor in place: what a reload may not change, and the start
of a successor on the same sockets.

When the installed bgdeploy is another version than the running supervisor's, a
reload starts a new supervisor of the installed code with the listening sockets
passed across exec (``$BGDEPLOY_HANDOVER``), tells it whom it replaces, and waits
on a pipe for its "ready"; the successor then asks the old one to retire.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
from typing import Any

from bgdeploy.config import Config
from bgdeploy.errors import BgdeployError, OperationFailed
from bgdeploy.failpoints import failpoint
from bgdeploy.router.sockets import HANDOVER_ENV, READY_ENV, TAKEOVER_ENV, Sockets

SUPERVISOR_START_TIMEOUT_S = 40.0


def address_change(old: Config, new: Config) -> str | None:
    """Why a reload cannot apply new: the addresses are the sockets it keeps."""
    for key in ("host", "port", "admin_port"):
        if getattr(old.router, key) != getattr(new.router, key):
            return (
                f"`router.{key}` changed from {getattr(old.router, key)!r} to "
                f"{getattr(new.router, key)!r}, and a reload keeps the listening sockets: the "
                "fixed address is the point of the router."
            )
    return None


def hand_over(sockets: Sockets, argv: list[str], config: Config) -> int:
    """Start a supervisor of the installed code (``argv``) on our sockets; once it
    serves it retires us (see RouterSupervisor._retire_old). Its pid; OperationFailed
    if it exited or hung at start (then stopped)."""
    ready_r, ready_w = os.pipe()
    fds = sockets.fds()
    env = {
        **os.environ,
        HANDOVER_ENV: sockets.describe(),
        TAKEOVER_ENV: str(os.getpid()),
        READY_ENV: str(ready_w),
    }
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            pass_fds=(*fds, ready_w),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=config.base_dir,
        )
    finally:
        os.close(ready_w)
    failpoint("handover_after_successor_started")
    with os.fdopen(ready_r, "rb") as pipe:
        answered = bool(select.select([pipe], [], [], SUPERVISOR_START_TIMEOUT_S)[0])
        ok = answered and pipe.readline() == b"ready\n"
    if not ok:
        if answered:  # the pipe closed: it is exiting, let it finish
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if proc.poll() is None:  # it hangs: SIGTERM lets it drain the workers it started
            proc.terminate()
            try:
                proc.wait(config.daemon.drain_timeout + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
        raise OperationFailed(
            f"The router was not reloaded: the new supervisor exited at start with code "
            f"{proc.returncode}; this one and its workers keep serving.",
            hint="See the router log (.bgdeploy/router.log).",
        )
    return proc.pid


def refused(e: BgdeployError) -> dict[str, Any]:
    return {"ok": False, "error": e.message, "hint": e.hint, "exit_code": e.exit_code}
