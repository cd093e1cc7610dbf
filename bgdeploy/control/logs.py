"""`bgdeploy logs`: a boot's log file, optionally followed as it grows."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from bgdeploy.control.app import App
from bgdeploy.errors import OperationFailed
from bgdeploy.hooks import hook_log_path

FOLLOW_POLL_S = 0.2


def log_path(app: App, boot_id: str | None) -> Path:
    """The log of ``boot_id``, or of the active boot when None."""
    reg = app.registry
    if boot_id is None:
        boot_id = reg.deployment(app.service).active_boot_id
        if boot_id is None:
            raise OperationFailed(
                "There is no active boot, so there is no default log to show.",
                hint="Name a boot: bgdeploy logs BOOT (see bgdeploy status).",
            )
    boot = reg.boot(boot_id)
    if boot is None:
        known = ", ".join(b.boot_id for b in reg.boots(app.service)[-5:]) or "none yet"
        raise OperationFailed(f"There is no boot {boot_id!r}.", hint=f"Recent boots: {known}.")
    path = Path(boot.log_path) if boot.log_path else app.config.logs_dir / f"{boot_id}.log"
    if not path.exists():
        raise OperationFailed(
            f"Boot {boot_id} has no log at {path} (it was pruned or never started)."
        )
    return path


def hooks_log_path(app: App) -> Path:
    """The hook log: every hook run, with its output."""
    path = hook_log_path(app.config)
    if not path.exists():
        raise OperationFailed(
            f"No hook has run yet (no {path}).",
            hint="Hooks are set in [hooks] of bgdeploy.toml.",
        )
    return path


def read_lines(path: Path, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
    """Yield the log's lines (the last ``tail`` of them), then, with ``follow``, new lines
    as they are written, until interrupted."""
    with path.open("r", errors="replace") as f:
        lines = f.readlines()
        yield from (lines if tail is None else deque(lines, maxlen=tail))
        if not follow:
            return
        partial = ""
        while True:
            chunk = f.readline()
            if not chunk:
                time.sleep(FOLLOW_POLL_S)
                continue
            partial += chunk
            if partial.endswith("\n"):
                yield partial
                partial = ""
