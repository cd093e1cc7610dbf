"""A lifecycle command's hold on the lock: taken, used by one Deployer, released, and
only then the long part (draining the boots the command took the route from).

When the lock is busy, a command does not wait by default (exit 3 naming the
holder), except when the holder is bgdeploy itself running a reconcile pass (the
router's control loop, or `bgdeploy reconcile`): nobody did anything concurrent
then, and the pass ends by itself, so the command waits for it (saying what it
is waiting for), for at most as long as a pass can hold the lock. ``--wait S``
waits S seconds for any holder; ``--no-wait`` never waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bgdeploy.config import Config
from bgdeploy.control.app import App
from bgdeploy.control.deploy import Deployer
from bgdeploy.control.drain import Progress, no_progress
from bgdeploy.control.lock import LifecycleLock, LockHolder
from bgdeploy.errors import BgdeployError, LockBusy
from bgdeploy.faults import Interrupted
from bgdeploy.states import DeploymentState as St

# Lock holder names of reconcile passes (serve_router's control loop, `bgdeploy reconcile`).
RECONCILE_HOLDERS = ("bgdeploy router control loop", "bgdeploy reconcile")
# Beyond the longest step a pass takes under the lock (a deploy: startup, then a stop).
PASS_MARGIN_S = 10.0

Notice = Callable[[str], None]


def no_notice(text: str) -> None:
    return None


def is_reconcile_pass(holder: LockHolder | None) -> bool:
    return holder is not None and holder.command.startswith(RECONCILE_HOLDERS)


def pass_bound(config: Config) -> float:
    """How long a reconcile pass can hold the lock: a self-heal or auto-deploy waits
    for its candidate (startup_timeout) and may then stop it (stop_timeout)."""
    return config.daemon.startup_timeout + config.daemon.stop_timeout + PASS_MARGIN_S


def take_lock(
    app: App,
    command: str,
    *,
    wait: float | None = None,
    no_wait: bool = False,
    notice: Notice = no_notice,
) -> LifecycleLock:
    lock = app.lock()
    if no_wait and wait is None:
        lock.acquire(command=command)
        return lock
    if wait is not None:
        return _wait_for(lock, command, wait, notice)
    bound = pass_bound(app.config)
    deadline = time.monotonic() + bound
    shown = None
    while True:
        try:
            lock.acquire(command=command)  # tries for a short grace
            return lock
        except LockBusy as e:
            holder = e.holder if isinstance(e.holder, LockHolder) else None
            if not is_reconcile_pass(holder):
                raise
            if time.monotonic() >= deadline:
                raise LockBusy(
                    f"{e.message.rstrip('.')}, after waiting {bound:g}s for it to finish.",
                    holder=holder,
                    hint="See `bgdeploy status` and the router's log; --wait SECONDS waits longer.",
                ) from None
            assert holder is not None
            doing = f"waiting for the control loop (pid {holder.pid}): {activity(app)}"
            if doing != shown:
                notice(f"{doing} (up to {bound:g}s; --no-wait to exit at once)")
                shown = doing


def _wait_for(lock: LifecycleLock, command: str, wait: float, notice: Notice) -> LifecycleLock:
    """--wait S: name the holder once, then wait for the rest of S seconds."""
    start = time.monotonic()
    try:
        lock.acquire(command=command)  # tries for a short grace
        return lock
    except LockBusy as e:
        if wait <= 0:
            raise
        notice(f"waiting up to {wait:g}s for the lifecycle lock: {_held_by(e)}")
    try:
        lock.acquire(wait=max(0.0, wait - (time.monotonic() - start)), command=command)
    except LockBusy as e:
        raise LockBusy(
            f"The lifecycle lock of service '{lock.service}' is still {_held_by(e)} "
            f"after waiting {wait:g}s.",
            holder=e.holder,
            hint="Run the command again with a longer --wait, or see `bgdeploy status`.",
        ) from None
    return lock


def _held_by(e: LockBusy) -> str:
    holder = e.holder if isinstance(e.holder, LockHolder) else None
    return f"held by {holder.describe()}" if holder else "held by another process"


def activity(app: App) -> str:
    """What a reconcile pass holding the lock is doing, as the registry tells it."""
    reg = app.registry
    row = reg.deployment(app.service)
    if row.state in (St.STARTING, St.READY):
        cand = reg.boot(row.candidate_boot_id)
        version = f" {cand.version}" if cand is not None else ""
        return f"deploying{version} as {row.candidate_boot_id} (generation {row.generation})"
    if row.state == St.ROLLING_BACK:
        return f"rolling back generation {row.generation}"
    if row.state == St.SWITCHED:
        return f"checking the health of {row.active_boot_id} (generation {row.generation})"
    return f"checking {row.active_boot_id or 'the deployment'}"


@contextmanager
def lifecycle(
    app: App,
    command: str,
    *,
    wait: float | None = None,
    no_wait: bool = False,
    notice: Notice = no_notice,
    progress: Progress = no_progress,
) -> Iterator[Deployer]:
    """Hold the lock for one command's Deployer; drain what it demoted after releasing it.

    On SIGINT, SIGTERM or SIGHUP a candidate this command began is stopped and its
    generation aborted ("interrupted by SIGINT"), still under the lock; the drains are
    left to the next reconcile pass (the boots are recorded draining, with the time
    they lost the route).
    """
    lock = take_lock(app, command, wait=wait, no_wait=no_wait, notice=notice)
    deployer = Deployer(app)
    before: int | None = None  # the generation before this command: a later one is its own
    drain = False  # after success or a failure alike; an interrupt leaves them to reconcile
    try:
        before = app.registry.deployment(app.service).generation
        yield deployer
        drain = True
    except Interrupted as e:
        try:
            e.detail = abort_interrupted(deployer, before, e.reason)
        except BgdeployError as failed:
            e.detail = f"the deploy is left for `bgdeploy reconcile` to undo ({failed.message})"
        raise
    except Exception:
        drain = True
        raise
    finally:
        lock.release()
        if drain:
            deployer.drains.finish(wait=True, progress=progress)


def abort_interrupted(deployer: Deployer, before: int | None, reason: str) -> str | None:
    """Stop the candidate of a deploy this command began (its generation is past
    ``before``: we hold the lock, nobody else began it) and record the abort; a
    candidate held at ready for `promote` stays. Returns what was done, if anything."""
    if before is None:
        return None
    app = deployer.app
    row = app.registry.deployment(app.service)
    if (
        row.generation <= before
        or row.state not in (St.STARTING, St.READY)
        or row.held_ts is not None
        or row.candidate_boot_id is None
    ):
        return None
    deployer.abort_candidate(row.generation, row.candidate_boot_id, reason)
    return (
        f"candidate {row.candidate_boot_id} stopped, generation {row.generation} aborted; "
        "the active boot is unchanged"
    )
