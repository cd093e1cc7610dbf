"""One idempotent pass that looks at the world and moves it one safe step on.

The router's control loop runs ``reconcile`` every ``health.interval``; so does
``bgdeploy reconcile`` (once, or with --watch). A busy lifecycle lock means
someone else is acting: the pass skips quietly.

Draining boots (they lost the route) are finished after the lock is released, in
every pass: one is stopped once the router reports nothing in flight on it, or
once its drain_timeout is over. No pass waits for a drain, so a drain holds up
neither the lock nor the next health check; and a boot whose drainer died is
still stopped (invariant 5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bgdeploy import health
from bgdeploy.boots import Supervisor
from bgdeploy.control import crashes, hold
from bgdeploy.control.app import App
from bgdeploy.control.deploy import Deployer, Drain, Inflight, drain_left, in_flight
from bgdeploy.control.lock import DrainClaim
from bgdeploy.errors import BgdeployError, LockBusy
from bgdeploy.installed import installed_version
from bgdeploy.registry.models import utcnow
from bgdeploy.states import BootState
from bgdeploy.states import DeploymentState as St

log = logging.getLogger("bgdeploy.reconcile")

KEEP_LOGS = 20


@dataclass
class ReconcileReport:
    actions: list[str] = field(default_factory=list)
    skipped: str | None = None

    def did(self, what: str) -> None:
        log.info("reconcile: %s", what)
        self.actions.append(what)


class Reconciler:
    def __init__(
        self,
        app: App,
        *,
        supervisor: Supervisor | None = None,
        inflight: Inflight | None = None,
        auto_deploy: bool = True,
        deploy_if_none: bool = False,
        holder: str = "bgdeploy reconcile",
    ) -> None:
        self.holder = holder
        self.app = app
        self.deploy_if_none = deploy_if_none
        self.sup = supervisor or Supervisor(app.config, app.registry)
        self.deployer = Deployer(app, self.sup, inflight)
        self.auto_deploy = auto_deploy
        self._http = httpx.Client()
        self.drains: dict[str, Drain] = {}  # boots this process claimed to drain

    def run(self, *, dry_run: bool = False, wait: float | None = None) -> ReconcileReport:
        report = ReconcileReport()
        self.sup.reap()  # boots this process started that another one stopped
        lock = self.app.lock()
        try:
            lock.acquire(wait=wait, command=self.holder)
        except LockBusy as e:
            report.skipped = e.message
        else:
            try:
                self.step(report, dry_run)
            finally:
                lock.release()
        # This pass's own demotions join the drains it finishes below, without waiting.
        for drain in self.deployer.draining:
            self.drains[drain.boot_id] = drain
        self.deployer.draining.clear()
        self._finish_drains(report, dry_run)
        return report

    def step(self, report: ReconcileReport, dry_run: bool) -> None:
        row = self.app.registry.deployment(self.app.service)
        d = self.deployer
        if row.state == St.READY and row.held_ts is not None:
            # Held for `promote`: it stays while it lives.
            candidate = self.app.registry.boot(row.candidate_boot_id)
            if candidate is None or not self.sup.is_running(candidate):
                what = (
                    f"held candidate {candidate.boot_id} {self.sup.describe_exit(candidate)}"
                    if candidate is not None
                    else "the held candidate is gone"
                )
                report.did(f"abort generation {row.generation}: {what}")
                if not dry_run:
                    hold.abort(d, what, row.generation)
        elif row.state in (St.STARTING, St.READY):
            # A deploy whose process died (we hold the lock, so none is running).
            report.did(f"abort generation {row.generation}: the deploying process is gone")
            if not dry_run:
                d.settle()
        elif row.state == St.ROLLING_BACK:
            report.did(f"complete the rollback of generation {row.generation}")
            if not dry_run:
                d.complete_rollback(row)
        elif row.state == St.SWITCHED:
            # Observe: streaks, then rollback or finalize.
            self._observe(row, report, dry_run)
        else:
            # Idle: self-heal a dead active boot, auto-deploy a new installed version.
            self._heal_or_update(report, dry_run)
        # In every state: a live boot the row does not name is an orphan.
        self._stop_orphans(report, dry_run)
        if not dry_run:
            self._settle_crashes(report)
            self._prune_logs()

    def _settle_crashes(self, report: ReconcileReport) -> None:
        """A running active boot ends the router's hold; one that lived past the crash
        window ends the crash loop."""
        row = self.app.registry.deployment(self.app.service)
        active = self.app.registry.boot(row.active_boot_id)
        if active is None or not self.sup.is_running(active):
            return
        crashes.end_healing(self.app)
        lived = (utcnow() - active.started_ts).total_seconds()
        if lived >= self.app.config.daemon.crash_window and crashes.end_crash_loop(self.app):
            report.did(f"crash loop over: {active.boot_id} runs for {lived:.0f} s")

    def _observe(self, row, report: ReconcileReport, dry_run: bool) -> None:  # noqa: ANN001
        reg, cfg = self.app.registry, self.app.config
        active = reg.boot(row.active_boot_id)
        ok = False
        detail = "no active boot"
        if active is not None:
            if not self.sup.is_running(active):
                self._active_exited_while_switched(row, active, report, dry_run)
                return
            else:
                result = health.check(self._http, cfg, active)
                ok, detail = result.ok, result.detail
        if dry_run:
            report.did(f"health check of {row.active_boot_id}: {'ok' if ok else detail}")
            return
        res = reg.record_health(self.app.service, row.generation, ok)
        streaks = res.row
        if not ok:
            log.warning(
                "generation %d: health check failed (%d/%d): %s",
                row.generation,
                streaks.health_fail_streak,
                cfg.health.failure_threshold,
                detail,
            )
        if streaks.health_fail_streak >= cfg.health.failure_threshold:
            reason = (
                f"{streaks.health_fail_streak} consecutive failed health checks (last: {detail})"
            )
            report.did(f"roll back generation {row.generation}: {reason}")
            try:
                self.deployer.rollback(streaks, reason)
            except BgdeployError as e:
                report.did(f"rollback failed: {e.message}")
        elif streaks.health_ok_streak >= cfg.health.stable_checks:
            report.did(
                f"finalize generation {row.generation} after "
                f"{streaks.health_ok_streak} healthy checks"
            )
            self.deployer.finalize(streaks)

    def _active_exited_while_switched(self, row, active, report, dry_run: bool) -> None:  # noqa: ANN001
        """An exit is a failed health check that counts failure_threshold at once: back
        to the warm old boot now. Without a live old boot (a self-heal's generation)
        there is nothing to go back to: finalize, and the idle path restarts it."""
        reg, cfg = self.app.registry, self.app.config
        old = reg.boot(row.old_boot_id)
        warm = old is not None and self.sup.is_running(old)
        what = f"active boot {active.boot_id} {self.sup.describe_exit(active, honest=True)}"
        if dry_run:
            report.did(f"{what}: {'roll back' if warm else 'finalize and restart'}")
            return
        if not warm:
            report.did(f"{what} while switched and the old boot is down: finalize, restart")
            self.deployer.finalize(row)
            self._heal_or_update(report, dry_run)
            return
        crashes.record_exit(self.app, self.sup, active, counts=False)
        streaks = row
        for _ in range(max(1, cfg.health.failure_threshold - row.health_fail_streak)):
            streaks = reg.record_health(self.app.service, row.generation, False).row
        reason = f"{what} (counts as {cfg.health.failure_threshold} failed health checks)"
        report.did(f"roll back generation {row.generation}: {reason}")
        self.deployer.rollback(streaks, reason)

    def _heal_or_update(self, report: ReconcileReport, dry_run: bool) -> None:
        reg = self.app.registry
        row = reg.deployment(self.app.service)
        active = reg.boot(row.active_boot_id)
        if not self.auto_deploy:
            return
        try:
            installed = installed_version(self.app.config)
        except BgdeployError as e:
            if active is None or not self.sup.is_running(active):
                report.did(f"cannot deploy: {e.message}")
            return
        dead = active is not None and not self.sup.is_running(active)
        if dead:
            if dry_run:
                report.did(f"self-heal: active boot {active.boot_id} is down; deploy {installed}")
                return
            if active.state not in (BootState.FAILED, BootState.STOPPED):
                # First sight of this exit: history, the crash series, the router's hold.
                crashes.record_exit(self.app, self.sup, active)
                reg.boot_records.mark_exited(
                    active.boot_id, BootState.FAILED, self.sup.exit_code(active)
                )
                if self._failed_auto_deploy(active, report):
                    return
            wait = crashes.next_try_in(self.app)
            if wait > 0:
                loop = crashes.read_crash_loop(self.app)
                report.did(loop.line() if loop else f"next try in {wait:.1f} s")
                return
            report.did(f"self-heal: active boot {active.boot_id} is down; deploy {installed}")
        elif active is None:
            if not self.deploy_if_none:
                return  # nothing was ever deployed: that is `bgdeploy up`/`deploy`'s job
            report.did(f"first deploy: {installed}")
        elif installed != active.version:
            if installed in reg.quarantined_versions(self.app.service):
                return
            if self._last_attempt_failed(row, installed):
                return  # it aborted last time: retrying every interval would only churn
            report.did(
                f"auto-deploy: installed version {installed} differs from active {active.version}"
            )
        else:
            return
        if dry_run:
            return
        if not dead:
            crashes.note_auto_deploy(self.app, installed, active.version)
        try:
            self.deployer.deploy(installed, force=dead, heal=dead)
        except BgdeployError as e:
            report.did(f"deploy failed: {e.message}")
            if dead:
                self._count_failed_restart()

    def _failed_auto_deploy(self, active, report: ReconcileReport) -> bool:  # noqa: ANN001
        """A version the control loop auto-deployed that crash-loops is a failed deploy:
        quarantined, and the version it replaced (which ran) is deployed again."""
        loop = crashes.read_crash_loop(self.app)
        previous = crashes.auto_deployed_over(self.app, active.version) if loop else None
        if loop is None or previous is None:
            return False
        reason = f"{active.version} is {loop.line()} after an auto-deploy: a failed deploy"
        report.did(f"{reason}; quarantine it and deploy {previous}")
        crashes.quarantine(self.app, active.version, reason)
        try:
            self.deployer.deploy(previous, force=True)
        except BgdeployError as e:
            report.did(f"deploy of {previous} failed: {e.message}")
        return True

    def _count_failed_restart(self) -> None:
        """A restart whose boot died before it was routed is one more exit of the loop."""
        reg = self.app.registry
        row = reg.deployment(self.app.service)
        for boot in reg.boots(self.app.service):
            if boot.generation == row.generation and boot.state == BootState.FAILED:
                crashes.record_exit(self.app, self.sup, boot)
                return

    def _last_attempt_failed(self, row, version: str) -> bool:  # noqa: ANN001
        """The newest generation tried this version and aborted: leave it to a person
        (`bgdeploy deploy` retries it; a new install is tried again)."""
        if row.last_error is None or row.generation == 0:
            return False
        return any(
            b.generation == row.generation and b.version == version and b.state == BootState.FAILED
            for b in self.app.registry.boots(self.app.service)
        )

    def _stop_orphans(self, report: ReconcileReport, dry_run: bool) -> None:
        reg = self.app.registry
        row = reg.deployment(self.app.service)
        referenced = {row.active_boot_id, row.candidate_boot_id, row.old_boot_id}
        for boot in reg.boots(self.app.service, live_only=True):
            if boot.boot_id in referenced or boot.state == BootState.DRAINING:
                continue  # a draining boot is _finish_drains' to stop
            running = self.sup.is_running(boot)
            report.did(f"{'stop orphaned' if running else 'record exit of'} boot {boot.boot_id}")
            if dry_run:
                continue
            if running:
                self.sup.stop(boot)
            else:
                reg.boot_records.mark_exited(boot.boot_id, BootState.FAILED, None)

    def _finish_drains(self, report: ReconcileReport, dry_run: bool) -> None:
        """Stop each draining boot whose requests finished or whose drain_timeout is over,
        among those this process claimed or nobody (alive) has claimed."""
        reg = self.app.registry
        inflight: dict[str, int] | None = None
        asked = False
        draining = [
            b for b in reg.boots(self.app.service, live_only=True) if b.state == BootState.DRAINING
        ]
        for gone in set(self.drains) - {b.boot_id for b in draining}:
            self.drains.pop(gone).claim.release()  # stopped by someone else (`down`)
        for boot in draining:
            if dry_run:
                report.did(f"finish the drain of boot {boot.boot_id}")
                continue
            drain = self.drains.get(boot.boot_id) or self._claim(boot.boot_id)
            if drain is None:
                continue  # a live process drains it
            if self.sup.is_running(boot):
                if not asked:
                    inflight, asked = self.deployer.inflight(), True
                busy = in_flight(inflight, boot.boot_id)
                if busy and drain_left(self.app, boot) > 0:
                    continue  # still finishing its requests: a later pass looks again
                late = f" ({busy} in flight at the end of drain_timeout)" if busy else ""
                report.did(f"stop drained boot {boot.boot_id}{late}")
                self.sup.stop(boot, final_state=BootState.STOPPED)
            else:
                report.did(f"record exit of drained boot {boot.boot_id}")
                reg.boot_records.mark_exited(boot.boot_id, BootState.STOPPED, None)
            self.drains.pop(boot.boot_id, None)
            drain.claim.release()
            drain.stopped()

    def _claim(self, boot_id: str) -> Drain | None:
        claim = DrainClaim(self.app.config.state_dir, boot_id)
        if not claim.try_claim():
            return None
        drain = self.drains[boot_id] = Drain(boot_id, None, claim)
        return drain

    def _prune_logs(self) -> None:
        logs = self.app.config.logs_dir
        if not logs.is_dir():
            return
        live = {b.boot_id for b in self.app.registry.boots(self.app.service, live_only=True)}
        old = sorted(
            (p for p in logs.glob("*.log") if p.stem not in live), key=lambda p: p.stat().st_mtime
        )
        for path in old[:-KEEP_LOGS] if len(old) > KEEP_LOGS else []:
            Path(path).unlink(missing_ok=True)
