"""Deploy hooks: ``[hooks]`` argv commands run at a switch, a rollback or a finalize.

A hook is never run through a shell. It gets the deployment's fields as
``BGDEPLOY_*`` environment variables, runs in the config's folder in its own
process group, and writes its output to the hook log (``logs --hooks``). One
still running at ``hooks.timeout`` is killed with its whole group, so a hook
that forks cannot leave a child behind either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bgdeploy.config import Config
from bgdeploy.timefmt import iso

log = logging.getLogger("bgdeploy.hooks")

HOOK_NAMES = ("pre_switch", "post_switch", "post_rollback", "post_finalize")
KILL_GRACE_S = 2.0  # after SIGTERM at the timeout, SIGKILL this much later


@dataclass(frozen=True)
class HookResult:
    name: str
    ok: bool
    exit_code: int | None
    timed_out: bool
    seconds: float
    error: str | None = None  # could not be started at all

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.name} hook could not start: {self.error}"
        if self.timed_out:
            return f"{self.name} hook was killed after its {self.seconds:.0f}s timeout"
        return f"{self.name} hook exited {self.exit_code} after {self.seconds:.2f}s"


def hook_log_path(config: Config) -> Path:
    return config.logs_dir / "hooks.log"


def hook_env(fields: dict[str, object]) -> dict[str, str]:
    """BGDEPLOY_<FIELD> for each field that has a value (absent rather than empty)."""
    return {
        f"BGDEPLOY_{key.upper()}": str(value) for key, value in fields.items() if value is not None
    }


def run_hook(config: Config, name: str, fields: dict[str, object]) -> HookResult | None:
    """Run the hook ``name`` if configured (None if not), wait for it, at most its timeout."""
    argv = getattr(config.hooks, name)
    if argv is None:
        return None
    path = hook_log_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = config.hooks.timeout
    with path.open("ab") as out:
        stamp = iso(datetime.now(UTC))
        out.write(f"--- {stamp} {name}: {argv}\n".encode())
        out.flush()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=config.base_dir,
                env={**os.environ, **hook_env({"hook": name, **fields})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            result = HookResult(name, False, None, False, 0.0, error=e.strerror or str(e))
            out.write(f"--- {name}: {result.describe()}\n".encode())
            return result
        timed_out = False
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            code = _kill_group(proc)
        result = HookResult(
            name, code == 0 and not timed_out, code, timed_out, time.monotonic() - t0
        )
        out.write(f"--- {name}: {result.describe()}\n".encode())
    (log.info if result.ok else log.warning)("%s", result.describe())
    return result


def _kill_group(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM to the hook's process group, SIGKILL to whatever is left after a grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.wait()
    try:
        code: int | None = proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        code = None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait() if code is None else code
