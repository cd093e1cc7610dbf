"""Boots of several processes (``daemon.replicas``): how many, when a set is ready,
attach on every replica, and the tending of the active set.

A set is ready when ``daemon.min_ready`` of its replicas (default: all) are
healthy; after the switch it counts as healthy as long as that many answer. A
replica that exits, or fails ``health.failure_threshold`` checks in a row, leaves
the rotation (``boots.ports``, which the router follows) and is started again on
its own crash-loop backoff while the others serve. Only when no replica of the
active set lives does the boot count as dead, and the heal of a single boot takes
over: a new boot with the same number of replicas.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx

from bgdeploy import health
from bgdeploy.boots import BootProcesses, log_tail
from bgdeploy.config import Config
from bgdeploy.control.app import App
from bgdeploy.control.crashes import backoff
from bgdeploy.errors import BootError
from bgdeploy.health import HealthResult
from bgdeploy.registry.models import Boot, Replica, utcnow
from bgdeploy.registry.replicas import OUT, SERVING, STARTING, STOPPED

Did = Callable[[str], None]


def wanted(app: App) -> int:
    """The replicas a new boot gets: ``bgdeploy scale``'s count, else daemon.replicas."""
    n = app.registry.intents.read(app.service).replicas or app.config.daemon.replicas
    return (os.cpu_count() or 1) if n == "auto" else int(n)


def min_ready(config: Config, count: int) -> int:
    m = config.daemon.min_ready
    return count if m is None else max(1, min(m, count))


def name(rep: Replica) -> str:
    return f"replica {rep.replica} of boot {rep.boot_id}"


def live(rows: list[Replica]) -> list[Replica]:
    return [r for r in rows if r.state != STOPPED]


# -- a new set: ready, attached --------------------------------------------------------------


def wait_ready(app: App, sup: BootProcesses, boot: Boot) -> None:
    """Wait until the boot is healthy; for a set, until ``min_ready`` replicas are,
    which then enter the rotation (the others are restarted by the tending)."""
    reps = app.registry.replicas
    rows = reps.rows(boot.boot_id)
    if not rows:
        health.wait_healthy(
            app.config,
            boot,
            is_running=lambda: sup.is_running(boot),
            describe_exit=lambda: sup.describe_exit(boot),
            log_tail=lambda: log_tail(boot.log_path),
        )
        return
    ready: list[Replica] = []
    errors: list[BootError] = []
    for rep in live(rows):
        try:
            health.wait_healthy(
                app.config,
                boot,
                is_running=lambda rep=rep: sup.replica_running(rep),
                describe_exit=lambda rep=rep: sup.describe_replica_exit(rep),
                log_tail=lambda rep=rep: log_tail(rep.log_path),
                port=rep.port,
                what=f"Replica {rep.replica} of boot {boot.boot_id}",
            )
            ready.append(rep)
        except BootError as e:
            errors.append(e)
    need = min_ready(app.config, len(live(rows)))
    if len(ready) < need:
        first = errors[0]
        raise BootError(
            f"{len(ready)} of {len(live(rows))} replicas became healthy ({need} needed): "
            f"{first.message}",
            hint=first.hint,
            log_tail=getattr(first, "log_tail", ""),
        )
    for rep in ready:
        reps.into_rotation(boot.boot_id, rep.replica)
    for rep in live(rows):
        if rep not in ready:  # the tending starts it again
            sup.stop_replicas([rep], timeout=app.config.daemon.stop_timeout, state=OUT)


def attach(app: App, boot: Boot, workspace: str, replicas: list[Replica] | None = None) -> None:
    """Attach ``workspace`` on every replica of the boot in rotation (or on
    ``replicas``); raises at the first refusal, so that an attachment is recorded only
    when all did. A replica out of rotation attaches when it is back (``attach_bound``)."""
    rows = replicas
    if rows is None:
        all_rows = app.registry.replicas.rows(boot.boot_id)
        rows = [r for r in all_rows if r.state == SERVING] if all_rows else []
    if not rows:
        health.attach(app.config, boot, workspace)
        return
    for rep in rows:
        try:
            health.attach(app.config, boot, workspace, port=rep.port)
        except BootError as e:
            if len(rows) == 1 and rep.replica == 0:
                raise
            raise BootError(f"{name(rep).capitalize()}: {e.message}", hint=e.hint) from None


def attach_bound(app: App, boot: Boot, rep: Replica) -> None:
    """A replica that (re)starts attaches every workspace its boot serves."""
    bound = [
        w for w, b in app.registry.workspaces.bindings(app.service).items() if b == boot.boot_id
    ]
    for workspace in bound:
        attach(app, boot, workspace, [rep])


# -- the health of a set after its switch ----------------------------------------------------


def check(client: httpx.Client, app: App, boot: Boot) -> HealthResult:
    """One health check of the boot; for a set, of each replica in rotation, which is
    healthy while ``min_ready`` of them answer. Each replica's failures in a row are
    kept for the tending."""
    reps = app.registry.replicas
    rows = reps.rows(boot.boot_id)
    if not rows:
        return health.check(client, app.config, boot)
    good, bad = 0, []
    for rep in rows:
        if rep.state != SERVING:
            continue
        res = health.check(client, app.config, boot, port=rep.port)
        if res.ok:
            good += 1
            if rep.fails:
                reps.update(boot.boot_id, rep.replica, fails=0)
        else:
            reps.update(boot.boot_id, rep.replica, fails=(rep.fails or 0) + 1)
            bad.append(f"replica {rep.replica}: {res.detail}")
    count = len(live(rows))
    need = min_ready(app.config, count)
    detail = f"{good} of {count} replicas healthy ({need} needed)"
    return HealthResult(good >= need, detail + ("; " + "; ".join(bad) if bad else ""))


# -- tending the active set ---------------------------------------------------------------------


class Tending:
    """One pass over the active set's replicas: exits noted and taken out of rotation,
    restarts when their backoff is over, started ones put in rotation once healthy,
    and (with ``check``) serving ones checked, failing ones restarted."""

    def __init__(self, app: App, sup: BootProcesses, client: httpx.Client) -> None:
        self.app = app
        self.sup = sup
        self.client = client

    def run(self, boot: Boot, did: Did, *, check: bool, rows: list[Replica] | None = None) -> None:
        """``rows``: the boot's replica rows where the caller read them just now."""
        rows = live(self.app.registry.replicas.rows(boot.boot_id) if rows is None else rows)
        if not rows:
            return
        running = {r.replica: self.sup.replica_running(r) for r in rows}
        if not any(running.values()):
            return  # the whole set is down: the heal of the boot takes over
        checked = {}
        if check:  # every serving replica first: a failing one goes only if another passes
            for rep in rows:
                if running[rep.replica] and rep.state == SERVING:
                    checked[rep.replica] = health.check(
                        self.client, self.app.config, boot, port=rep.port
                    )
        passing = sum(1 for res in checked.values() if res.ok)
        for rep in rows:
            if running[rep.replica]:
                if rep.state == STARTING:
                    self._starting(boot, rep, did)
                elif rep.replica in checked:
                    self._serving(boot, rep, checked[rep.replica], passing, did)
            elif rep.state in (SERVING, STARTING):
                self._exited(boot, rep, did)
            elif rep.state == OUT and (rep.next_ts is None or utcnow() >= rep.next_ts):
                self._restart(boot, rep, did)

    def _exited(self, boot: Boot, rep: Replica, did: Did) -> None:
        cfg = self.app.config
        lived = (utcnow() - rep.started_ts).total_seconds()
        how = self.sup.describe_replica_exit(rep)
        delay = self.app.registry.replicas.exited(
            boot.boot_id,
            rep.replica,
            self.sup.replica_exit_code(rep),
            crash_window=cfg.daemon.crash_window,
            backoff=backoff,
        )
        what = f"{name(rep)} ({boot.version}) {how} after {lived:.1f} s; out of rotation"
        what += f", restart in {delay:g} s" if delay else ", restarted now"
        tail = log_tail(rep.log_path, 5)
        self.app.registry.note(
            self.app.service, "replica-exit", what + ("; last log lines:\n" + tail if tail else "")
        )
        did(what)
        if not delay:
            fresh = self.app.registry.replicas.get(boot.boot_id, rep.replica)
            if fresh is not None:
                self._restart(boot, fresh, did)

    def _restart(self, boot: Boot, rep: Replica, did: Did) -> None:
        reps = self.app.registry.replicas
        try:
            self.sup.spawn_replica(boot, rep.replica, prefer_port=rep.port)
        except BootError as e:
            reps.update(boot.boot_id, rep.replica, state=OUT, next_ts=utcnow())
            did(f"{name(rep)} could not start again: {e.message}")
            return
        reps.update(boot.boot_id, rep.replica, state=STARTING, restarts=(rep.restarts or 0) + 1)
        did(f"{name(rep)} started again")

    def _starting(self, boot: Boot, rep: Replica, did: Did) -> None:
        cfg = self.app.config
        res = health.check(self.client, cfg, boot, port=rep.port, timeout=cfg.health.timeout)
        if res.ok:
            try:
                attach_bound(self.app, boot, rep)
            except BootError as e:
                self._take_out(boot, rep, f"refused its workspaces: {e.message}", did)
                return
            self.app.registry.replicas.into_rotation(boot.boot_id, rep.replica)
            self.app.registry.note(
                self.app.service, "replica-ready", f"{name(rep)} is healthy: back in rotation"
            )
            did(f"{name(rep)} back in rotation")
            return
        started = (utcnow() - rep.started_ts).total_seconds()
        if started >= cfg.daemon.startup_timeout:
            self._take_out(boot, rep, f"not healthy within {cfg.daemon.startup_timeout:g} s", did)

    def _serving(self, boot: Boot, rep: Replica, res: HealthResult, passing: int, did: Did) -> None:
        """A serving replica's check: after failure_threshold failures in a row it is
        restarted, while another replica passes (a set that fails as a whole is the
        boot failing: the rollback's business while switched, left serving when idle)."""
        cfg = self.app.config
        reps = self.app.registry.replicas
        if res.ok:
            if rep.fails:
                reps.update(boot.boot_id, rep.replica, fails=0)
            return
        fails = (rep.fails or 0) + 1
        reps.update(boot.boot_id, rep.replica, fails=fails)
        if fails >= cfg.health.failure_threshold and passing > 0:
            self._take_out(boot, rep, f"{fails} failed health checks ({res.detail})", did)

    def _take_out(self, boot: Boot, rep: Replica, why: str, did: Did) -> None:
        """Out of rotation, stopped, and started again on its backoff."""
        cfg = self.app.config
        reps = self.app.registry.replicas
        reps.out_of_rotation(boot.boot_id, rep.replica, OUT)
        self.sup.stop_replicas([rep], timeout=cfg.daemon.stop_timeout, state=OUT)
        fresh = reps.get(boot.boot_id, rep.replica)
        delay = reps.exited(
            boot.boot_id,
            rep.replica,
            fresh.exit_code if fresh else None,
            crash_window=cfg.daemon.crash_window,
            backoff=backoff,
        )
        what = f"{name(rep)} {why}; out of rotation, restart in {delay:g} s"
        self.app.registry.note(self.app.service, "replica-out", what)
        did(what)
