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
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bgdeploy.boots import BootProcesses
from bgdeploy.control import analysis, canary, crashes, hold, replica_set
from bgdeploy.control.app import App
from bgdeploy.control.decide import Act, Decision, World, decide
from bgdeploy.control.deploy import Deployer
from bgdeploy.control.drain import Inflight
from bgdeploy.control.world import Seen, read
from bgdeploy.errors import BgdeployError, LockBusy
from bgdeploy.registry.models import utcnow
from bgdeploy.states import BootState
from bgdeploy.states import DeploymentState as St

log = logging.getLogger("bgdeploy.reconcile")

KEEP_LOGS = 20
PRUNE_EVERY_S = 60.0


@dataclass
class ReconcileReport:
    actions: list[str] = field(default_factory=list)
    skipped: str | None = None
    decision: Decision | None = None  # what the decision function answered this pass
    # Whether the pass's last read saw a draining boot (None: it read nothing).
    draining: bool | None = None
    # Nothing done and nothing waiting: the next pass decides the same unless the
    # registry, the installed version or a process changes (the control loop's quiet tick).
    quiet: bool = False

    def did(self, what: str) -> None:
        log.info("reconcile: %s", what)
        self.actions.append(what)


def _nothing_waits(seen: Seen, decision: Decision | None) -> bool:
    """Idle with one live boot, the active one, alone (not a replica set: the tending
    checks those every pass), and nothing that ends with time: a hold, a crash loop."""
    row = seen.row
    return (
        decision is not None
        and decision.action is Act.NOTHING
        and decision.ends_intent is None
        and row.state == St.IDLE
        and row.held_ts is None
        and row.healing_ts is None
        and not row.crash_exits
        and [b.boot_id for b in seen.live()] == [row.active_boot_id]
        and not seen.replicas.get(row.active_boot_id or "")
    )


class Reconciler:
    def __init__(
        self,
        app: App,
        *,
        processes: BootProcesses | None = None,
        inflight: Inflight | None = None,
        deploy_if_none: bool = False,
        holder: str = "bgdeploy reconcile",
    ) -> None:
        self.holder = holder
        self.app = app
        self.deploy_if_none = deploy_if_none
        self.sup = processes or BootProcesses(app.config, app.registry)
        self.deployer = Deployer(app, self.sup, inflight)
        self.drains = self.deployer.drains  # this pass's demotions join the drains it finishes
        self._http = httpx.Client()
        self._tending = replica_set.Tending(app, self.sup, self._http)
        self._baselines: dict = {}  # the old boot's figures before this generation's switch
        self._pruned = -PRUNE_EVERY_S

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
        if dry_run:
            for boot in self.drains.draining_boots():
                report.did(f"finish the drain of boot {boot.boot_id}")
        elif report.draining is not False or self.drains.claimed:
            # (An idle pass that saw no draining boot reads nothing more: most passes.)
            for line in self.drains.finish(wait=False):
                report.did(line)
        return report

    def read(self) -> Seen:
        return read(self.app, self.sup, deploy_if_none=self.deploy_if_none)

    def world(self) -> World:
        return self.read().world

    def step(self, report: ReconcileReport, dry_run: bool) -> None:
        seen = self.read()
        if dry_run:
            self._act(seen.world, report, dry_run)
        else:
            self._note_then_act(report, seen)
        # In every state: a live boot the row does not name is an orphan. (A pass that
        # acted reads again; an idle one, the common case, reads once.)
        if report.actions:
            seen = self.read()
        report.draining = any(b.state == BootState.DRAINING for b in seen.boots.values())
        self._stop_orphans(seen, report, dry_run)
        if not dry_run:
            self._settle_crashes(seen, report)
            self._tend_replicas(report, seen)
            self._prune_logs()
            report.quiet = not report.actions and _nothing_waits(seen, report.decision)

    def _act(self, world: World, report: ReconcileReport, dry_run: bool) -> None:
        """Do what the decision function says, once."""
        decision = report.decision = decide(world)
        act, d = decision.action, self.deployer
        if act is Act.NOTHING:
            if decision.ends_intent is not None and not dry_run:
                # The installed version moved on to the version that already runs: the
                # pin or operator rollback ends all the same (design 2a, `intent_ended`).
                self.app.registry.intents.follow_installed(
                    self.app.service, "intent_ended", decision.ends_intent
                )
            return
        if act is Act.CANARY:
            if dry_run:
                report.did(decision.reason)
            else:
                assert world.canary is not None
                row = self.app.registry.marks.snapshot(self.app.service)
                canary.judge_step(self.app, d, row, world.canary, report.did)
            return
        if act in (Act.WAIT, Act.OBSERVE):
            if act is Act.WAIT:
                report.did(decision.reason)
            else:
                self._observe(self.app.registry.deployment(self.app.service), report, dry_run)
            return
        report.did(decision.reason)
        if dry_run:
            return
        row = self.app.registry.deployment(self.app.service)
        if act is Act.ABORT:
            if world.held:
                hold.abort(d, decision.reason.split(": ", 1)[-1], row.generation)
            else:
                d.settle()
        elif act is Act.COMPLETE_ROLLBACK:
            d.complete_rollback(row)
        elif act is Act.ROLLBACK:
            self._rollback_exited(row, report)
        elif act is Act.FINALIZE:
            d.finalize(row)
            self._note_then_act(report)  # the idle path records the exit and restarts it
        elif act is Act.DEPLOY:
            self._deploy(decision, world)

    def _note_then_act(self, report: ReconcileReport, seen: Seen | None = None) -> None:
        seen = seen or self.read()
        noted = self._note_exit(seen, report)
        if noted is None:
            self._act(seen.world, report, dry_run=False)
        elif noted:
            report.decision = decide(self.world())
        else:
            # The exit just noted set the crash loop's wait: act on the world with it
            # (the world read before it said "no wait", and a restart came at once).
            self._act(self.world(), report, dry_run=False)

    def _deploy(self, decision: Decision, world: World) -> None:
        reg, version = self.app.registry, decision.version
        assert version is not None
        if decision.ends_intent is not None:
            reg.intents.follow_installed(self.app.service, "intent_ended", decision.ends_intent)
        if not decision.heal and world.active is not None:
            crashes.note_auto_deploy(self.app, version, world.active.version)
        try:
            self.deployer.deploy(
                version, force=decision.heal, heal=decision.heal, reason=decision.reason
            )
        except BgdeployError as e:
            log.warning("reconcile: deploy of %s failed: %s", version, e.message)
            if decision.heal:
                self._count_failed_restart()

    def _settle_crashes(self, seen: Seen, report: ReconcileReport) -> None:
        """A running active boot ends the router's hold; one that lived past the crash
        window ends the crash loop."""
        row, world = seen.row, seen.world
        if row.healing_ts is None and not row.crash_exits:
            return
        if world.intent.down:
            crashes.end_healing(self.app)  # nothing will take the dead boot's place
            return
        active = seen.boots.get(row.active_boot_id or "")
        if active is None or world.active is None or not world.active.alive:
            return
        crashes.end_healing(self.app)
        lived = (utcnow() - active.started_ts).total_seconds()
        if lived >= self.app.config.daemon.crash_window and crashes.end_crash_loop(self.app):
            report.did(f"crash loop over: {active.boot_id} runs for {lived:.0f} s")

    def _tend_replicas(self, report: ReconcileReport, seen: Seen) -> None:
        """The active set's replicas: restarts, rotation, and (idle) their checks; while
        switched, ``_observe`` has checked them this pass. ``seen``: this pass's rows,
        current unless the orphans' or crashes' step acted (then read again)."""
        if report.actions:
            row = self.app.registry.deployment(self.app.service)
            active, replicas = self.app.registry.boot(row.active_boot_id), None
        else:
            row, active = seen.row, seen.boots.get(seen.row.active_boot_id or "")
            replicas = seen.replicas.get(active.boot_id) if active is not None else None
        if active is not None and row.state in (St.IDLE, St.SWITCHED):
            self._tending.run(active, report.did, check=row.state == St.IDLE, rows=replicas)

    def _observe(self, row, report: ReconcileReport, dry_run: bool) -> None:  # noqa: ANN001
        reg, cfg = self.app.registry, self.app.config
        active = reg.boot(row.active_boot_id)
        ok = False
        detail = "no active boot"
        if active is not None:
            if not self.sup.is_running(active):
                self._act(self.world(), report, dry_run)  # it exited a moment ago
                return
            result = replica_set.check(self._http, self.app, active)
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
        verdict = self._analyse(row)
        reason = None
        if streaks.health_fail_streak >= cfg.health.failure_threshold:
            reason = (
                f"{streaks.health_fail_streak} consecutive failed health checks (last: {detail})"
            )
        elif verdict is not None and verdict.ok is False:
            reason = f"traffic analysis: {verdict.reason}"
        if reason is not None:
            report.did(f"roll back generation {row.generation}: {reason}")
            try:
                self.deployer.rollback(streaks, reason)
            except BgdeployError as e:
                report.did(f"rollback failed: {e.message}")
        elif streaks.health_ok_streak >= cfg.health.stable_checks:
            self._finalize_if_judged(streaks, verdict, report)

    def _analyse(self, row) -> analysis.Verdict | None:  # noqa: ANN001
        """The active boot's traffic since the switch (at most analysis.window), against
        the old boot's over the window before it; None when no router runs to say."""
        cfg = self.app.config.analysis
        if row.switch_ts is None:
            return None
        if self.app.router.running() is None:
            return None
        if self._same_version(row):
            # A restart of the running version (a heal while switched): the old boot was
            # the same version, dead; traffic analysis would judge the crash, not a
            # version, and a rollback would quarantine what runs.
            return analysis.Verdict(True, "a restart of the same version: not analysed")
        now = time.time()
        switched = row.switch_ts.timestamp()
        since = min(cfg.window, max(now - switched, 0.001))
        figures = analysis.fetch_traffic(self.app.router, since)
        if figures is None:  # it runs but did not answer: no verdict yet, and no rollback
            return analysis.Verdict(None, "the router did not answer with traffic figures")
        new = figures.get(row.active_boot_id or "", analysis.Figures())
        return analysis.judge_switched(cfg, new, self._baseline(row, switched))

    def _same_version(self, row) -> bool:  # noqa: ANN001
        if not row.old_boot_id:
            return False
        old, new = (
            self.app.registry.boot(row.old_boot_id),
            self.app.registry.boot(row.active_boot_id),
        )
        return old is not None and new is not None and old.version == new.version

    def _baseline(self, row, switched: float) -> analysis.Figures:  # noqa: ANN001
        """The old boot's figures over the window before the switch, read once per
        generation (the router keeps only five minutes of samples)."""
        if row.old_boot_id is None:
            return analysis.Figures()
        key = (row.generation, row.old_boot_id)
        if self._baselines.get("key") != key:
            window = self.app.config.analysis.window
            before = analysis.fetch_traffic(self.app.router, window, end=switched)
            if before is None:
                return analysis.Figures()  # asked again next pass
            self._baselines = {"key": key, "figures": before.get(row.old_boot_id)}
        return self._baselines["figures"] or analysis.Figures()

    def _finalize_if_judged(
        self,
        streaks,  # noqa: ANN001 - DeploymentFields
        verdict: analysis.Verdict | None,
        report: ReconcileReport,
    ) -> None:
        """Healthy long enough: finalize once the traffic passed analysis too, or once
        analysis.max_wait is over without enough of it (history says so)."""
        checks = f"{streaks.health_ok_streak} healthy checks"
        gen = streaks.generation
        if verdict is None:
            why = f"{checks} (no router runs: traffic not analysed)"
        elif verdict.ok:
            why = f"{checks} and traffic analysis ({verdict.reason})"
        else:
            waited = (utcnow() - streaks.switch_ts).total_seconds() if streaks.switch_ts else 0.0
            if waited < self.app.config.analysis.max_wait:
                return  # too few answers yet: wait for them (up to analysis.max_wait)
            why = f"{checks}; too little traffic to judge after {waited:.0f} s ({verdict.reason})"
        report.did(f"finalize generation {gen} after {why}")
        self.deployer.finalize(streaks, f"after {why}")

    def _rollback_exited(self, row, report: ReconcileReport) -> None:  # noqa: ANN001
        """An exit while switched is a failed health check that counts failure_threshold at
        once: back to the warm old boot now."""
        reg, cfg = self.app.registry, self.app.config
        active = reg.boot(row.active_boot_id)
        assert active is not None
        what = f"active boot {active.boot_id} {self.sup.describe_exit(active, honest=True)}"
        crashes.record_exit(self.app, self.sup, active, counts=False)
        streaks = row
        for _ in range(max(1, cfg.health.failure_threshold - row.health_fail_streak)):
            streaks = reg.record_health(self.app.service, row.generation, False).row
        reason = f"{what} (counts as {cfg.health.failure_threshold} failed health checks)"
        report.did(f"roll back generation {row.generation}: {reason}")
        self.deployer.rollback(streaks, reason)

    def _note_exit(self, seen: Seen, report: ReconcileReport) -> bool | None:
        """First sight of a dead active boot while idle: its exit in history, the crash
        series and the router's hold. True when that alone decided the pass (a crash loop
        after an auto-deploy is a failed deploy), False when it noted an exit only, None
        when there was none to note."""
        reg, row, world = self.app.registry, seen.row, seen.world
        active = seen.boots.get(row.active_boot_id or "")
        if (
            row.state != St.IDLE
            or active is None
            or active.state in (BootState.FAILED, BootState.STOPPED)
            or world.active is None
            or world.active.alive
        ):
            return None
        down = reg.intents.read(self.app.service).down
        # Down by operator: nothing restarts it, so the router must not hold requests for
        # a replacement (they get 502 at once); the exit is history, not a crash series.
        crashes.record_exit(self.app, self.sup, active, counts=not down)
        reg.boot_records.mark_exited(active.boot_id, BootState.FAILED, self.sup.exit_code(active))
        if down:
            return False
        return self._failed_auto_deploy(active, report)

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

    def _stop_orphans(self, seen: Seen, report: ReconcileReport, dry_run: bool) -> None:
        reg, row = self.app.registry, seen.row
        referenced = {row.active_boot_id, row.candidate_boot_id, row.old_boot_id}
        for boot in seen.live():
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

    def _prune_logs(self) -> None:
        """At most once a minute: the logs of all but the newest KEEP_LOGS dead boots."""
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        logs = self.app.config.logs_dir
        if not logs.is_dir():
            return
        live = {b.boot_id for b in self.app.registry.boots(self.app.service, live_only=True)}
        old = sorted(
            # A replica's log is "<boot_id>.r<N>.log".
            (p for p in logs.glob("*.log") if p.stem.split(".r")[0] not in live),
            key=lambda p: p.stat().st_mtime,
        )
        for path in old[:-KEEP_LOGS] if len(old) > KEEP_LOGS else []:
            Path(path).unlink(missing_ok=True)
