"""Named failpoints for crash testing: inert unless BGDEPLOY_FAILPOINT names one.

``failpoint("after_switch_commit")`` makes the process SIGKILL itself right
there when ``BGDEPLOY_FAILPOINT=after_switch_commit`` is set, so tests can
prove that the next ``reconcile`` recovers from a death at every step.
``BGDEPLOY_FAILPOINT=after_switch_commit:raise`` raises ``FailpointError`` there
instead: what a bug at that step looks like to the user.
"""

from __future__ import annotations

import os
import signal

ENV = "BGDEPLOY_FAILPOINT"

# Every failpoint in the code, in the order a deploy, finalize and rollback meet them.
FAILPOINTS = (
    "after_begin_commit",
    "after_candidate_spawn",
    "after_candidate_healthy",
    "after_workspaces_attached",
    "after_candidate_ready_commit",
    "after_switch_commit",
    "after_abort_candidate_stopped",
    "after_finalize_commit",
    "after_old_boot_stopped",
    "after_restore_boot_spawn",
    "after_rollback_commit",
    "after_failed_boot_stopped",
)


# In the router supervisor's reload: after the new workers serve, before the old ones
# drain; and after a successor supervisor was started, before it is ready.
ROUTER_FAILPOINTS = (
    "reload_after_new_workers",
    "handover_after_successor_started",
)


# Inside a canary: after the next step's share was committed, before the pass ends.
CANARY_FAILPOINTS = ("after_canary_step_commit",)


class FailpointError(RuntimeError):
    """An injected bug: deliberately not a BgdeployError."""


def failpoint(name: str) -> None:
    # A typo here would make a test silently pass.
    if name not in (*FAILPOINTS, *ROUTER_FAILPOINTS, *CANARY_FAILPOINTS):
        raise ValueError(f"unknown failpoint {name!r}")
    wanted = os.environ.get(ENV)
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{name}:raise":
        raise FailpointError(f"failpoint {name} raised")
