"""Boots that lost the route: drained (nothing in flight, or drain_timeout over), then
stopped, by whoever claimed them.

Draining needs no lifecycle lock: the registry no longer routes to a boot recorded
``draining``. The command that demotes a boot (finalize, rollback) claims it before
the demotion commits and, after releasing the lock, waits for its drain
(``finish(wait=True)``); a reconcile pass looks once at every draining boot it
claimed or nobody (alive) has claimed (``finish(wait=False)``), so a boot whose
drainer died is still stopped (invariant 5), and no pass waits for a drain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bgdeploy.boots import BootProcesses
from bgdeploy.control.app import App
from bgdeploy.control.lock import DrainClaim
from bgdeploy.failpoints import failpoint
from bgdeploy.registry.models import Boot, utcnow
from bgdeploy.states import BootState
from bgdeploy.states import DeploymentEvent as Ev

# In-flight counts per boot; None when a running router could not say (count it busy).
Inflight = Callable[[], dict[str, int] | None]
Progress = Callable[[str, str], None]  # (step, detail)
POLL_S = 0.05
ROUTER_FOLLOW_TIMEOUT_S = 2.0


def no_progress(step: str, detail: str) -> None:
    return None


def in_flight(counts: dict[str, int] | None, boot_id: str) -> int:
    """Requests in flight on a boot; 1 when the router could not say (busy, not drained)."""
    return 1 if counts is None else counts.get(boot_id, 0)


def drain_left(app: App, boot: Boot) -> float:
    """Seconds left of a draining boot's drain_timeout (0 when unknown or past)."""
    if boot.draining_ts is None:
        return 0.0
    elapsed = (utcnow() - boot.draining_ts).total_seconds()
    return max(0.0, app.config.daemon.drain_timeout - elapsed)


@dataclass
class Drain:
    """A boot this process claimed to drain, and the event that took its route (None:
    a drain whose claimant died, picked up by a reconcile pass)."""

    boot_id: str
    demoted_by: Ev | None
    claim: DrainClaim

    def stopped(self) -> None:
        if self.demoted_by is Ev.FINALIZE:
            failpoint("after_old_boot_stopped")
        elif self.demoted_by is Ev.ROLLBACK:
            failpoint("after_failed_boot_stopped")


class Drains:
    """The drains one process claimed, and the one way they end."""

    def __init__(self, app: App, sup: BootProcesses, inflight: Inflight) -> None:
        self.app = app
        self.sup = sup
        self.inflight = inflight
        self.claimed: dict[str, Drain] = {}

    def claim(self, boot_id: str | None, demoted_by: Ev | None) -> Drain | None:
        """Claim the drain of a boot (about to be demoted, or left by a dead claimant)
        unless a live process holds it."""
        if boot_id is None:
            return None
        if boot_id in self.claimed:
            return self.claimed[boot_id]
        claim = DrainClaim(self.app.config.state_dir, boot_id)
        return Drain(boot_id, demoted_by, claim) if claim.try_claim() else None

    def keep(self, drain: Drain | None, applied: bool) -> None:
        """The demotion committed (keep the claim until the boot is stopped) or not."""
        if drain is None:
            return
        if applied:
            self.claimed[drain.boot_id] = drain
        elif drain.boot_id not in self.claimed:
            drain.claim.release()

    def release(self, drain: Drain | None) -> None:
        if drain is not None and drain.boot_id not in self.claimed:
            drain.claim.release()

    def draining_boots(self) -> list[Boot]:
        reg = self.app.registry
        return [
            b for b in reg.boots(self.app.service, live_only=True) if b.state == BootState.DRAINING
        ]

    def finish(self, *, wait: bool, progress: Progress = no_progress) -> list[str]:
        """Stop every drained boot among ours (and, without ``wait``, the unclaimed ones);
        with ``wait``, poll until each of ours is drained. Returns what was done."""
        done: list[str] = []
        draining = {b.boot_id: b for b in self.draining_boots()}
        for gone in set(self.claimed) - set(draining):
            self.claimed.pop(gone).claim.release()  # stopped by someone else (`down`)
        if not wait:
            for boot_id in draining:
                self.claim_orphan(boot_id)
        shown: set[str] = set()
        while True:
            counts = self.inflight() if self.claimed else {}
            for boot_id, drain in list(self.claimed.items()):
                boot = self.app.registry.boot(boot_id)
                if boot is None or boot.state != BootState.DRAINING:
                    self.claimed.pop(boot_id).claim.release()
                    continue
                line = self._try_stop(boot, counts)
                if line is None:
                    if wait and boot_id not in shown:
                        progress("draining", f"{boot_id}: waiting for its requests in flight")
                        shown.add(boot_id)
                    continue
                done.append(line)
                self.claimed.pop(boot_id)
                drain.claim.release()
                drain.stopped()
                if wait:
                    progress("stopped", boot_id)
            if not wait or not self.claimed:
                return done
            time.sleep(POLL_S)

    def claim_orphan(self, boot_id: str) -> None:
        drain = self.claim(boot_id, None)
        if drain is not None:
            self.claimed[boot_id] = drain

    def release_all(self) -> None:
        """Leave the drains to the next reconcile pass (Ctrl-C, an error)."""
        for drain in self.claimed.values():
            drain.claim.release()
        self.claimed.clear()

    def _try_stop(self, boot: Boot, counts: dict[str, int] | None) -> str | None:
        """Stop the boot if it is drained or out of time; None while it is still busy."""
        if not self.sup.is_running(boot):
            self.app.registry.boot_records.mark_exited(boot.boot_id, BootState.STOPPED, None)
            return f"record exit of drained boot {boot.boot_id}"
        busy = in_flight(counts, boot.boot_id)
        if busy and drain_left(self.app, boot) > 0:
            return None
        self.sup.stop(boot, final_state=BootState.STOPPED)
        late = f" ({busy} in flight at the end of drain_timeout)" if busy else ""
        return f"stop drained boot {boot.boot_id}{late}"
