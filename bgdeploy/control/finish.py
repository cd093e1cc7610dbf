"""The steps that finish a deploy: settle what a dead process left, finalize, roll back.

Each is one fenced transition under the caller's lifecycle lock. Finalize and rollback
commit and claim the demoted boot's drain; the caller drains it after releasing the
lock (``drains.finish``), and if that caller dies the next reconcile pass stops it.
``Deployer`` (deploy.py) has these steps; they use its registry, boot processes,
drains, hooks, health wait and workspace attach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bgdeploy.control import replica_set
from bgdeploy.control.drain import ROUTER_FOLLOW_TIMEOUT_S, Drain, Drains, Progress, no_progress
from bgdeploy.errors import BgdeployError, BootError, OperationFailed
from bgdeploy.failpoints import failpoint
from bgdeploy.machine import DeploymentFields
from bgdeploy.registry.models import Boot
from bgdeploy.registry.store import TransitionResult
from bgdeploy.states import BootState
from bgdeploy.states import DeploymentEvent as Ev
from bgdeploy.states import DeploymentState as St

if TYPE_CHECKING:
    from bgdeploy.boots import BootProcesses
    from bgdeploy.control.app import App
    from bgdeploy.hooks import HookResult
    from bgdeploy.registry.store import Registry


class FinishingSteps:
    """settle, finalize and rollback, for ``Deployer``."""

    app: App
    reg: Registry
    sup: BootProcesses
    drains: Drains

    if TYPE_CHECKING:  # Deployer's, which these steps use

        def run_hook(self, name: str, row: DeploymentFields) -> HookResult | None: ...

        def abort_candidate(self, generation: int, boot_id: str, reason: str) -> None: ...

        def _wait_healthy(self, boot: Boot) -> None: ...

        def _attach_workspaces(self, boot: Boot) -> int: ...

        def _commit_once_attached(
            self, boot: Boot, commit: Callable[[], TransitionResult]
        ) -> TransitionResult: ...

    def settle(self, steps: Progress = no_progress) -> DeploymentFields:
        """Bring a deployment left mid-way (by a dead process) to idle, safely; a held
        candidate is dropped for the new deploy."""
        row = self.reg.deployment(self.app.service)
        if row.state in (St.STARTING, St.READY) and row.candidate_boot_id:
            self.abort_candidate(
                row.generation,
                row.candidate_boot_id,
                "replaced by a new deploy while held"
                if row.held_ts is not None
                else "the deploying process stopped before the switch",
            )
            steps(
                "aborted", f"stale candidate {row.candidate_boot_id} of generation {row.generation}"
            )
        elif row.state == St.SWITCHED:
            self.finalize(row)
            steps("finalized", f"generation {row.generation}")
        elif row.state == St.ROLLING_BACK:
            self.complete_rollback(row)
            steps("rolled back", f"generation {row.generation}")
        return self.reg.deployment(self.app.service)

    def finalize(self, row: DeploymentFields, reason: str | None = None) -> None:
        """switched -> idle: the old boot is recorded draining (drained by finish_drains)."""
        drain = self.drains.claim(row.old_boot_id, Ev.FINALIZE)
        res = self.reg.transition(
            self.app.service,
            Ev.FINALIZE,
            generation=row.generation,
            state=St.SWITCHED,
            reason=reason,
        )
        failpoint("after_finalize_commit")
        self.drains.keep(drain, res.applied)
        if res.applied:
            self.run_hook("post_finalize", res.row)

    def rollback(self, row: DeploymentFields, reason: str) -> DeploymentFields:
        """switched -> rolling_back -> idle: the old boot (or a fresh one of its version)
        takes the route at once, once it has attached every workspace; the failed boot is
        quarantined and recorded draining (drained by finish_drains).

        If the target cannot serve (a fresh boot unhealthy, an attach refused), nothing is
        committed: ``last_error`` and a ``rollback_failed`` event say why, and it raises.
        """
        old = self.reg.boot(row.old_boot_id)
        if old is None:
            raise OperationFailed(f"Generation {row.generation} has no old boot to roll back to.")
        drain = self.drains.claim(row.active_boot_id, Ev.ROLLBACK)
        try:
            return self._rollback_to(row, old, reason, drain)
        finally:
            self.drains.release(drain)

    def _rollback_to(
        self, row: DeploymentFields, old: Boot, reason: str, drain: Drain | None
    ) -> DeploymentFields:
        restore = None
        target = old
        if not self.sup.is_running(old):
            restore = self.reg.create_boot(self.app.service, row.generation, old.version)
            target = self.sup.spawn(restore, replica_set.wanted(self.app))
            failpoint("after_restore_boot_spawn")
        try:
            if restore is not None:
                self._wait_healthy(target)
            self._attach_workspaces(target)
            res = self._commit_once_attached(
                target,
                lambda: self.reg.transition(
                    self.app.service,
                    Ev.ROLLBACK,
                    generation=row.generation,
                    state=St.SWITCHED,
                    reason=reason,
                    restore_boot_id=restore,
                ),
            )
        except BgdeployError as e:
            if restore is not None:
                self.sup.stop(target, final_state=BootState.FAILED)
            why = f"rollback to {target.boot_id} ({target.version}) not done: {e.message}"
            self.reg.note(
                self.app.service,
                "rollback_failed",
                why,
                fence=(row.generation, St.SWITCHED),
                last_error=True,
            )
            raise BootError(
                f"Generation {row.generation}: {why}",
                hint=f"{row.active_boot_id} stays active. {e.hint or ''}".strip(),
            ) from None
        if not res.applied:
            return res.row
        self._record_if_dead(row.active_boot_id)
        failpoint("after_rollback_commit")
        if res.row.active_boot_id:
            self.app.router.follows(res.row.active_boot_id, ROUTER_FOLLOW_TIMEOUT_S)
        self.complete_rollback(res.row, drain)
        return self.reg.deployment(self.app.service)

    def _record_if_dead(self, boot_id: str | None) -> None:
        """A boot that lost the route because its process died is failed, not draining."""
        boot = self.reg.boot(boot_id)
        if boot is not None and boot.state == BootState.DRAINING and not self.sup.is_running(boot):
            self.reg.boot_records.mark_exited(boot.boot_id, BootState.FAILED, None)

    def complete_rollback(self, row: DeploymentFields, drain: Drain | None = None) -> None:
        """rolling_back -> idle: the route already left the failed boot, so the rollback is
        done; the failed boot is drained after the lock is released."""
        if drain is None:  # a rollback left half-way by a process that died
            drain = self.drains.claim(row.old_boot_id, Ev.ROLLBACK)
        res = self.reg.transition(
            self.app.service, Ev.ROLLBACK_DONE, generation=row.generation, state=St.ROLLING_BACK
        )
        self.drains.keep(drain, res.applied)
        if res.applied:
            self.run_hook("post_rollback", row)
