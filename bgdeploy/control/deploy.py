"""One blue/green deploy, and the steps that finish one: finalize and rollback.

Every function here expects the caller to hold the lifecycle lock; each state
change is one fenced transition, so a crash between steps leaves a row that the
next ``reconcile`` can finish or undo.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select

from bgdeploy import health
from bgdeploy.boots import Supervisor, log_tail
from bgdeploy.control.app import App
from bgdeploy.control.status import running_router
from bgdeploy.errors import BgdeployError, BootError, OperationFailed
from bgdeploy.failpoints import failpoint
from bgdeploy.hooks import HookResult, run_hook
from bgdeploy.installed import installed_version
from bgdeploy.machine import DeploymentFields
from bgdeploy.registry.models import Boot, Quarantine, Workspace
from bgdeploy.states import BootState
from bgdeploy.states import DeploymentEvent as Ev
from bgdeploy.states import DeploymentState as St

Progress = Callable[[str, str], None]  # (step, detail)
Inflight = Callable[[], dict[str, int]]
ROUTER_FOLLOW_TIMEOUT_S = 2.0


def no_progress(step: str, detail: str) -> None:
    return None


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


def router_inflight(app: App) -> Inflight:
    """In-flight counts as the running router reports them (empty when none runs)."""

    def fetch() -> dict[str, int]:
        url = _router_admin_url(app)
        if url is None:
            return {}
        try:
            return dict(httpx.get(f"{url}/api/route", timeout=1.0).json()["inflight"])
        except (httpx.HTTPError, ValueError, KeyError):
            return {}

    return fetch


def _router_admin_url(app: App) -> str | None:
    router = running_router(app)
    return router.admin_url if router is not None else None


def wait_router_follows(app: App, boot_id: str) -> bool:
    """Wait (briefly) until a running router routes new requests to boot_id."""
    url = _router_admin_url(app)
    if url is None:
        return False
    deadline = time.monotonic() + ROUTER_FOLLOW_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/route", timeout=1.0).json().get("boot_id") == boot_id:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.01)
    return False


class Deployer:
    def __init__(
        self, app: App, supervisor: Supervisor | None = None, inflight: Inflight | None = None
    ) -> None:
        self.app = app
        self.reg = app.registry
        self.sup = supervisor or Supervisor(app.config, app.registry)
        self.inflight = inflight or router_inflight(app)

    # -- deploy ------------------------------------------------------------------------------

    def deploy(
        self,
        version: str | None = None,
        *,
        force: bool = False,
        hold: bool | None = None,
        progress: Progress = no_progress,
    ) -> DeployResult:
        """Start, check and switch to a candidate; with ``hold`` (default: not
        ``deploy.auto_promote``) stop at ready for `promote`."""
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
            if not force:
                raise OperationFailed(
                    f"Version {version} is quarantined: a rollback took it out before.",
                    hint="Deploy another version, or pass --force to try it again.",
                )
            self._lift_quarantine(version)
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
        res = reg.transition(
            app.service, Ev.BEGIN, generation=row.generation, state=St.IDLE, version=version
        )
        if not res.applied:
            raise OperationFailed(f"Another deploy got there first: {res.message}")
        gen, boot_id = res.row.generation, res.row.candidate_boot_id
        assert boot_id is not None
        failpoint("after_begin_commit")
        steps("begin", f"generation {gen}: candidate {boot_id} ({version})")
        try:
            boot = self.sup.spawn(boot_id)
            failpoint("after_candidate_spawn")
            steps("starting", f"{boot_id} pid {boot.pid} on port {boot.port}")
            self._wait_healthy(boot)
            failpoint("after_candidate_healthy")
            steps("healthy", f"{boot_id} answers {app.config.daemon.health_path}")
            n = self._attach_workspaces(boot, row.active_boot_id)
            failpoint("after_workspaces_attached")
            steps("attached", f"{n} workspace{'s' if n != 1 else ''}")
        except BgdeployError as e:
            self.abort_candidate(gen, boot_id, e.message)
            steps("aborted", e.message)
            raise BootError(
                f"Deploy of {version} aborted: {e.message}",
                hint=f"The active boot is unchanged. {e.hint or ''}".strip(),
                log_tail=getattr(e, "log_tail", ""),
            ) from None
        reg.transition(
            app.service,
            Ev.CANDIDATE_READY,
            generation=gen,
            state=St.STARTING,
            hold=hold,
            reason="held at ready for `bgdeploy promote`" if hold else None,
        )
        failpoint("after_candidate_ready_commit")
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
        return self.switch_candidate(gen, boot_id, version, steps)

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
                hint="The active boot is unchanged.",
            )
        sw = reg.transition(app.service, Ev.SWITCH, generation=gen, state=St.READY, reason=reason)
        if not sw.applied:
            raise OperationFailed(f"The switch did not apply: {sw.message}")
        failpoint("after_switch_commit")
        followed = wait_router_follows(app, boot_id)
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
        router = running_router(self.app)
        if router is not None:
            fields["router_url"] = router.url
        result = run_hook(self.app.config, name, fields)
        assert result is not None
        self.reg.note(self.app.service, "hook", result.describe())
        return result

    def _wait_healthy(self, boot: Boot) -> None:
        health.wait_healthy(
            self.app.config,
            boot,
            is_running=lambda: self.sup.is_running(boot),
            describe_exit=lambda: self.sup.describe_exit(boot),
            log_tail=lambda: log_tail(boot.log_path),
        )

    def _attach_workspaces(self, boot: Boot, active_boot_id: str | None) -> int:
        if active_boot_id is None:
            return 0
        with self.reg.reading() as s:
            names = list(
                s.scalars(
                    select(Workspace.workspace).where(
                        Workspace.service == self.app.service, Workspace.boot_id == active_boot_id
                    )
                )
            )
        for name in names:
            health.attach(self.app.config, boot, name)
        return len(names)

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

    def _lift_quarantine(self, version: str) -> None:
        with self.reg.writing() as s:
            q = s.get(Quarantine, (self.app.service, version))
            if q is not None:
                s.delete(q)

    # -- finishing steps -------------------------------------------------------------------

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

    def finalize(self, row: DeploymentFields) -> None:
        """switched -> idle: the old boot is drained, then stopped."""
        res = self.reg.transition(
            self.app.service, Ev.FINALIZE, generation=row.generation, state=St.SWITCHED
        )
        failpoint("after_finalize_commit")
        if res.applied and row.old_boot_id:
            self.drain_and_stop(row.old_boot_id, BootState.STOPPED)
            failpoint("after_old_boot_stopped")
        if res.applied:
            self.run_hook("post_finalize", res.row)

    def rollback(self, row: DeploymentFields, reason: str) -> DeploymentFields:
        """switched -> rolling_back -> idle: the old boot (or a fresh one of its version)
        takes the route at once; the failed boot is drained, stopped and quarantined."""
        old = self.reg.boot(row.old_boot_id)
        restore = None
        if old is None or not self.sup.is_running(old):
            if old is None:
                raise OperationFailed(
                    f"Generation {row.generation} has no old boot to roll back to."
                )
            restore = self.reg.create_boot(self.app.service, row.generation, old.version)
            fresh = self.sup.spawn(restore)
            failpoint("after_restore_boot_spawn")
            try:
                self._wait_healthy(fresh)
            except BootError:
                self.sup.stop(fresh, final_state=BootState.FAILED)
                raise
        res = self.reg.transition(
            self.app.service,
            Ev.ROLLBACK,
            generation=row.generation,
            state=St.SWITCHED,
            reason=reason,
            restore_boot_id=restore,
        )
        if not res.applied:
            return res.row
        failpoint("after_rollback_commit")
        if res.row.active_boot_id:
            wait_router_follows(self.app, res.row.active_boot_id)
        self.complete_rollback(res.row)
        return self.reg.deployment(self.app.service)

    def complete_rollback(self, row: DeploymentFields) -> None:
        if row.old_boot_id:
            self.drain_and_stop(row.old_boot_id, BootState.STOPPED)
            failpoint("after_failed_boot_stopped")
        res = self.reg.transition(
            self.app.service, Ev.ROLLBACK_DONE, generation=row.generation, state=St.ROLLING_BACK
        )
        if res.applied:
            self.run_hook("post_rollback", row)

    def drain_and_stop(self, boot_id: str, final_state: BootState) -> None:
        """Wait until the router reports nothing in flight on the boot (up to
        drain_timeout), then stop it (SIGTERM, SIGKILL after stop_timeout)."""
        boot = self.reg.boot(boot_id)
        if boot is None:
            return
        deadline = time.monotonic() + self.app.config.daemon.drain_timeout
        while self.inflight().get(boot_id, 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.sup.stop(boot, final_state=final_state)


def previous_version(app: App) -> str:
    """The version that was active before the current one (for `rollback` when idle)."""
    reg = app.registry
    row = reg.deployment(app.service)
    current = reg.boot(row.active_boot_id)
    for ev in reg.events(app.service):
        if ev.event != "switch" or not ev.old_boot_id:
            continue
        old = reg.boot(ev.old_boot_id)
        if old is not None and (current is None or old.version != current.version):
            return old.version
    raise OperationFailed(
        "There is no previous version to roll back to.",
        hint="Deploy a version explicitly: bgdeploy deploy --version V.",
    )
