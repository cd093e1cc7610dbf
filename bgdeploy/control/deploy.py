"""One blue/green deploy; the steps that finish one (finalize, rollback) are in finish.py.

Every function here expects the caller to hold the lifecycle lock; each state
change is one fenced transition, so a crash between steps leaves a row that the
next ``reconcile`` can finish or undo. Draining a boot that lost the route is the
one long wait (up to drain_timeout + stop_timeout), and it needs no lock: the
registry no longer routes to the boot, which is recorded ``draining``. So finalize
and rollback only commit and claim the boot's drain; the caller drains it with
``drains.finish`` after releasing the lock, and if that caller dies, the next
reconcile pass stops the boot (``control/drain.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bgdeploy.boots import BootProcesses
from bgdeploy.control import crashes, replica_set
from bgdeploy.control.app import App
from bgdeploy.control.drain import (
    ROUTER_FOLLOW_TIMEOUT_S,
    Drains,
    Inflight,
    Progress,
    no_progress,
)
from bgdeploy.control.finish import FinishingSteps
from bgdeploy.errors import BgdeployError, BootError, OperationFailed
from bgdeploy.failpoints import failpoint
from bgdeploy.hooks import HookResult, run_hook
from bgdeploy.installed import installed_version
from bgdeploy.machine import DeploymentFields
from bgdeploy.registry.models import Boot
from bgdeploy.registry.store import TransitionResult
from bgdeploy.states import BootState
from bgdeploy.states import DeploymentEvent as Ev
from bgdeploy.states import DeploymentState as St

# Rounds of "attach what is missing, then try the switch": another round is needed
# only when a workspace was attached to the old boot between the two.
ATTACH_ROUNDS = 10


@dataclass
class DeployResult:
    ok: bool
    generation: int
    version: str
    boot_id: str | None
    message: str
    steps: list[dict[str, object]] = field(default_factory=list)
    held: bool = False  # stopped at ready, waiting for `promote`
    applied: bool = True  # False: a stale or repeated promote/abort changed nothing
    canary: tuple[int, ...] = ()  # canary steps begun: the control loop takes it from here

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "generation": self.generation,
            "version": self.version,
            "boot_id": self.boot_id,
            "message": self.message,
            "steps": self.steps,
            "held": self.held,
            "applied": self.applied,
            "canary": list(self.canary),
        }


class Steps:
    """Times each step and reports it to the progress callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.t0 = time.monotonic()
        self.last = self.t0
        self.done: list[dict[str, object]] = []

    def __call__(self, step: str, detail: str) -> None:
        now = time.monotonic()
        self.done.append({"step": step, "detail": detail, "seconds": round(now - self.last, 3)})
        self.last = now
        self.progress(step, detail)


class Deployer(FinishingSteps):
    """A blue/green deploy of one service (``deploy``, the switch, the hooks and the
    workspace attach); its finishing steps (settle, finalize, rollback) come from
    ``FinishingSteps`` (control/finish.py)."""

    def __init__(
        self,
        app: App,
        processes: BootProcesses | None = None,
        inflight: Inflight | None = None,
        drains: Drains | None = None,
    ) -> None:
        self.app = app
        self.reg = app.registry
        self.sup = processes or BootProcesses(app.config, app.registry)
        self.inflight = inflight or app.router.inflight
        # Boots this deployer demoted to draining and claimed, to drain without the lock.
        self.drains = drains or Drains(app, self.sup, self.inflight)

    # -- deploy ------------------------------------------------------------------------------

    def deploy(
        self,
        version: str | None = None,
        *,
        force: bool = False,
        hold: bool | None = None,
        progress: Progress = no_progress,
        heal: bool = False,
        reason: str | None = None,
        canary: tuple[int, ...] | None = None,
        canary_step: float | None = None,
    ) -> DeployResult:
        """Start, check and switch to a candidate; with ``hold`` (default: not
        ``deploy.auto_promote``) stop at ready for `promote`. A deploy that is not
        the control loop's restart of a dead boot (``heal``) ends a crash loop.
        ``reason`` (the intent it serves) goes into the ``begin`` event. Only an
        operator's ``force`` starts a quarantined version, never a heal.

        With canary steps (``canary``, default ``deploy.canary``) the candidate stops
        at ready with the first step's share of new requests, and the router's control
        loop judges each step and switches after the last (control/canary.py). A heal
        and a first deploy have no live active boot to compare with: no canary."""
        app, reg = self.app, self.reg
        if hold is None:
            hold = not app.config.deploy.auto_promote
        version = version or installed_version(app.config)
        steps = Steps(progress)
        row = reg.deployment(app.service)
        active = reg.boot(row.active_boot_id)
        if (
            row.state == St.SWITCHED
            and active is not None
            and active.version == version
            and not force
        ):
            return DeployResult(
                True,
                row.generation,
                version,
                active.boot_id,
                f"Version {version} is already active ({active.boot_id}, "
                "switched and under observation).",
                steps.done,
            )
        # A previous generation left mid-way is finished first (a new deploy promotes a
        # switched one: the old boot is drained and stopped).
        row = self.settle(steps)
        quarantined = reg.quarantined_versions(app.service)
        if version in quarantined:
            if not force or heal:
                raise OperationFailed(
                    f"Version {version} is quarantined: a rollback took it out before.",
                    hint="Deploy another version, or pass --force to try it again.",
                )
            self.reg.intents.lift_quarantine(app.service, version, "deployed again with --force")
        active = reg.boot(row.active_boot_id)
        if (
            active is not None
            and active.version == version
            and not force
            and self.sup.is_running(active)
        ):
            return DeployResult(
                True,
                row.generation,
                version,
                active.boot_id,
                f"Version {version} is already active ({active.boot_id}); "
                "nothing to do (--force redeploys it).",
                steps.done,
            )
        canary_plan = self._canary_plan(canary, canary_step, hold, heal, row.active_boot_id)
        res = reg.transition(
            app.service,
            Ev.BEGIN,
            generation=row.generation,
            state=St.IDLE,
            version=version,
            reason=reason,
        )
        if not res.applied:
            raise OperationFailed(f"Another deploy got there first: {res.message}")
        gen, boot_id = res.row.generation, res.row.candidate_boot_id
        assert boot_id is not None
        failpoint("after_begin_commit")
        steps("begin", f"generation {gen}: candidate {boot_id} ({version})")
        try:
            boot = self.sup.spawn(boot_id, replica_set.wanted(app))
            failpoint("after_candidate_spawn")
            steps("starting", f"{boot_id} pid {boot.pid} on port {boot.port}")
            self._wait_healthy(boot)
            failpoint("after_candidate_healthy")
            steps("healthy", f"{boot_id} answers {app.config.daemon.health_path}")
            n = self._attach_workspaces(boot)
            failpoint("after_workspaces_attached")
            steps("attached", f"{n} workspace{'s' if n != 1 else ''}")
        except BgdeployError as e:
            self.abort_candidate(gen, boot_id, e.message)
            steps("aborted", e.message)
            raise BootError(
                f"Deploy of {version} aborted: {e.message}",
                hint=f"{self.kept()} {e.hint or ''}".strip(),
                log_tail=getattr(e, "log_tail", ""),
            ) from None
        if canary_plan is not None:
            shares = ", ".join(f"{w}%" for w in canary_plan[0])
            ready_reason = f"canary steps {shares}, {canary_plan[1]:g} s each"
        else:
            ready_reason = "held at ready for `bgdeploy promote`" if hold else None
        reg.transition(
            app.service,
            Ev.CANDIDATE_READY,
            generation=gen,
            state=St.STARTING,
            hold=hold,
            canary=canary_plan,
            reason=ready_reason,
        )
        failpoint("after_candidate_ready_commit")
        if canary_plan is not None:
            first = canary_plan[0][0]
            steps("canary", f"{boot_id} gets {first}% of new requests ({ready_reason})")
            return DeployResult(
                True,
                gen,
                version,
                boot_id,
                f"Generation {gen}: canary of {version} on {boot_id} begun ({ready_reason}); "
                "the router's control loop judges each step and switches after the last.",
                steps.done,
                held=True,
                canary=canary_plan[0],
            )
        if hold:
            steps("held", f"{boot_id} waits at ready (preview: X-Bgdeploy-Preview: 1)")
            return DeployResult(
                True,
                gen,
                version,
                boot_id,
                f"Generation {gen}: {version} is held at ready on {boot_id}; "
                "`bgdeploy promote` switches to it, `bgdeploy abort` drops it.",
                steps.done,
                held=True,
            )
        result = self.switch_candidate(gen, boot_id, version, steps)
        if not heal:
            crashes.end_crash_loop(app)
            crashes.end_healing(app)
        return result

    def _canary_plan(
        self,
        canary: tuple[int, ...] | None,
        step_s: float | None,
        hold: bool,
        heal: bool,
        active_boot_id: str | None,
    ) -> tuple[tuple[int, ...], float] | None:
        """The canary steps this deploy takes, or None for a plain switch (or a hold)."""
        cfg = self.app.config.deploy
        shares = cfg.canary if canary is None else tuple(canary)
        if canary and hold and not heal:
            # A canary switches by itself after its last step; a held deploy waits for
            # `promote`. Asked for both, say so rather than drop one.
            raise OperationFailed(
                "--canary cannot be combined with a held deploy (--hold, or "
                "deploy.auto_promote = false): a canary switches by itself after its "
                "last step.",
                hint="Pass --no-hold to run the canary, or leave out --canary to hold.",
            )
        if not shares or hold or heal:
            return None
        active = self.reg.boot(active_boot_id)
        if active is None or not self.sup.is_running(active):
            return None  # nothing to compare with, and nobody to keep the rest of traffic
        if self.app.router.running() is None:
            raise OperationFailed(
                "A canary needs the router: no router runs to send the candidate its share.",
                hint="Start it with `bgdeploy up`, or deploy without canary steps "
                "(--canary '' or [deploy] canary = []).",
            )
        return shares, cfg.canary_step if step_s is None else step_s

    def kept(self) -> str:
        """What an aborted deploy left serving, for its error's hint."""
        if self.reg.deployment(self.app.service).active_boot_id is None:
            return "Nothing was deployed before, so nothing serves yet (the router answers 503)."
        return "The active boot is unchanged."

    def switch_candidate(
        self, gen: int, boot_id: str, version: str, steps: Steps, reason: str | None = None
    ) -> DeployResult:
        """ready -> switched, behind the pre_switch gate; post_switch after."""
        app, reg = self.app, self.reg
        gate = self.run_hook("pre_switch", reg.deployment(app.service))
        if gate is not None and not gate.ok:
            reason = f"{gate.describe()} (see `bgdeploy logs --hooks`)"
            self.abort_candidate(gen, boot_id, reason)
            steps("aborted", reason)
            raise OperationFailed(
                f"Deploy of {version} aborted: {reason}.",
                hint=self.kept(),
            )
        candidate = reg.boot(boot_id)
        assert candidate is not None
        try:
            sw = self._commit_once_attached(
                candidate,
                lambda: reg.transition(
                    app.service, Ev.SWITCH, generation=gen, state=St.READY, reason=reason
                ),
            )
        except BgdeployError as e:
            self.abort_candidate(gen, boot_id, e.message)
            steps("aborted", e.message)
            raise BootError(
                f"Deploy of {version} aborted: {e.message}",
                hint=self.kept(),
            ) from None
        if not sw.applied:
            raise OperationFailed(f"The switch did not apply: {sw.message}")
        failpoint("after_switch_commit")
        followed = app.router.follows(boot_id, ROUTER_FOLLOW_TIMEOUT_S)
        steps("switched", f"{boot_id} active" + (" (router follows)" if followed else ""))
        self.run_hook("post_switch", sw.row)
        return DeployResult(
            True,
            gen,
            version,
            boot_id,
            f"Generation {gen}: {version} is active on {boot_id}.",
            steps.done,
        )

    # -- hooks -----------------------------------------------------------------------------

    def run_hook(self, name: str, row: DeploymentFields) -> HookResult | None:
        """Run a configured hook with the row's fields in its env; record it in history."""
        if getattr(self.app.config.hooks, name) is None:
            return None
        fields: dict[str, object] = {
            "service": row.service,
            "generation": row.generation,
            "state": row.state,
            "rollback_reason": row.rollback_reason,
        }
        for role in ("active", "candidate", "old"):
            boot = self.reg.boot(getattr(row, f"{role}_boot_id"))
            if boot is not None:
                fields.update(
                    {
                        f"{role}_boot_id": boot.boot_id,
                        f"{role}_version": boot.version,
                        f"{role}_port": boot.port,
                    }
                )
        router = self.app.router.running()
        if router is not None:
            fields["router_url"] = router.url
        result = run_hook(self.app.config, name, fields)
        assert result is not None
        self.reg.note(self.app.service, "hook", result.describe())
        return result

    def _wait_healthy(self, boot: Boot) -> None:
        replica_set.wait_ready(self.app, self.sup, boot)

    def _attach_workspaces(self, boot: Boot) -> int:
        """Attach every bound workspace that ``boot`` has not attached yet; raise on the
        first refusal. Each success is recorded: only then may a binding name the boot."""
        records = self.reg.workspaces
        done = 0
        for _ in range(ATTACH_ROUNDS):
            missing = records.unattached(self.app.service, boot.boot_id)
            if not missing:
                return done
            for name in missing:
                replica_set.attach(self.app, boot, name)
                records.record_attach(boot.boot_id, name)
                done += 1
        raise _attach_race_lost(boot)

    def _commit_once_attached(
        self, boot: Boot, commit: Callable[[], TransitionResult]
    ) -> TransitionResult:
        """Commit a switch or rollback to ``boot``; the registry refuses it while a bound
        workspace is not attached to ``boot`` (one attached to the old boot a moment ago),
        so attach those and try again."""
        for _ in range(ATTACH_ROUNDS):
            res = commit()
            if res.applied or not res.unattached:
                return res
            self._attach_workspaces(boot)
        raise _attach_race_lost(boot)

    def abort_candidate(self, generation: int, boot_id: str, reason: str) -> None:
        boot = self.reg.boot(boot_id)
        if boot is not None:
            self.sup.stop(boot, final_state=BootState.FAILED)
        failpoint("after_abort_candidate_stopped")
        row = self.reg.deployment(self.app.service)
        if row.state in (St.STARTING, St.READY):
            self.reg.transition(
                self.app.service, Ev.ABORT, generation=generation, state=row.state, reason=reason
            )


def _attach_race_lost(boot: Boot) -> OperationFailed:
    return OperationFailed(
        f"Workspaces kept being attached while {boot.boot_id} caught up; gave up "
        f"after {ATTACH_ROUNDS} rounds.",
        hint="Run the command again.",
    )
