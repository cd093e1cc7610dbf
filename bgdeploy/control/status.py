"""The status object (DESIGN section 6) and the history list, as plain dicts.

``status --json`` and the admin listener's ``/api/status`` print exactly this.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bgdeploy import __version__
from bgdeploy.config import Config, config_digest
from bgdeploy.control.analysis import fetch_traffic
from bgdeploy.control.app import App
from bgdeploy.control.crashes import read_crash_loop
from bgdeploy.control.pause_maintenance import read_controls
from bgdeploy.control.router_api import build_of_workers
from bgdeploy.processes import process_matches
from bgdeploy.registry.models import Boot, Event, Replica, Router, utcnow
from bgdeploy.registry.replicas import single
from bgdeploy.registry.store import Registry
from bgdeploy.states import LIVE_BOOT_STATES, BootState
from bgdeploy.timefmt import iso


def seen_state(boot: Boot) -> str:
    """The boot's state as its process tells it: one recorded live whose process is gone
    shows as the reconcile pass will record it (stopped if it was draining, else failed),
    so that status never calls a dead process active."""
    if (
        boot.state in LIVE_BOOT_STATES
        and boot.pid
        and not process_matches(boot.pid, boot.pid_create_time)
    ):
        return BootState.STOPPED if boot.state == BootState.DRAINING else BootState.FAILED
    return boot.state


def replica_dict(rep: Replica) -> dict[str, Any]:
    return {
        "replica": rep.replica,
        "port": rep.port,
        "pid": rep.pid,
        "state": rep.state,
        "started_ts": iso(rep.started_ts),
        "restarts": rep.restarts or 0,
        "next_try": iso(rep.next_ts) if rep.state == "out" else None,
    }


def boot_dict(
    boot: Boot | None,
    inflight: dict[str, int] | None = None,
    traffic: dict[str, Any] | None = None,
    replicas: list[Replica] | None = None,
) -> dict[str, Any] | None:
    """A boot as status shows it; ``traffic``: each boot's figures from the router;
    ``replicas``: its processes (a boot of one process is its own replica 0)."""
    if boot is None:
        return None
    figures = (traffic or {}).get(boot.boot_id)
    return {
        "boot_id": boot.boot_id,
        "version": boot.version,
        "port": boot.port,
        "pid": boot.pid,
        "state": seen_state(boot),
        "started_ts": iso(boot.started_ts),
        "inflight": (inflight or {}).get(boot.boot_id, 0),
        # Over analysis.window, as the router counted: null when no router runs.
        "traffic": None
        if traffic is None
        else {
            "answers": figures.answers if figures else 0,
            "error_ratio": figures.error_ratio if figures else None,
            "p99_ms": figures.p99_ms if figures else None,
        },
        "replicas": [replica_dict(r) for r in (replicas or [single(boot)]) if r.state != "stopped"],
    }


def _rows(reg: Registry, boot: Boot | None) -> list[Replica] | None:
    return reg.replicas.rows(boot.boot_id) if boot is not None else None


def config_current(router: Router, config: Config) -> bool:
    """Whether the running router loaded this bgdeploy.toml as it is now."""
    return router.config_digest == config_digest(config)


def router_dict(
    router: Router | None, info: dict[str, Any] | None, app_config: Config | None = None
) -> dict[str, Any] | None:
    """The supervisor's row, with what it reports of itself and its workers (``info``,
    None when it did not answer)."""
    if router is None:
        return None
    return {
        "pid": router.pid,
        "url": router.url,
        "admin_url": router.admin_url,
        "build": build_of_workers(info),
        "config_current": config_current(router, app_config) if app_config else None,
        "started_ts": iso(router.started_ts),
        "version": info["version"] if info else None,
        "installed_version": __version__,
        "workers": [
            {**w, "started": iso(datetime.fromtimestamp(w["started"], UTC))}
            for w in (info["workers"] if info else [])
        ],
    }


def status(
    app: App, inflight: dict[str, int] | None = None, router: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``router``: the supervisor's own report, when the supervisor itself asks."""
    reg = app.registry
    row = reg.deployment(app.service)
    with reg.reading() as s:
        active = s.get(Boot, row.active_boot_id) if row.active_boot_id else None
        candidate = s.get(Boot, row.candidate_boot_id) if row.candidate_boot_id else None
        old = s.get(Boot, row.old_boot_id) if row.old_boot_id else None
    holder = app.lock().holder()
    running = app.router.running()
    traffic = fetch_traffic(app.router, app.config.analysis.window)
    if running is not None and router is None:
        router = app.router.info()
    return {
        "service": row.service,
        "generation": row.generation,
        "state": row.state,
        "active": boot_dict(active, inflight, traffic, _rows(reg, active)),
        "candidate": boot_dict(candidate, inflight, traffic, _rows(reg, candidate)),
        "old": boot_dict(old, inflight, traffic, _rows(reg, old)),
        "switch_ts": iso(row.switch_ts),
        "health_fail_streak": row.health_fail_streak,
        "health_ok_streak": row.health_ok_streak,
        "rollback_reason": row.rollback_reason,
        "rollback_ts": iso(row.rollback_ts),
        "last_error": row.last_error,
        "quarantined_versions": reg.quarantined_versions(app.service),
        "router": router_dict(running, router, app.config),
        "lock": holder.as_dict() if holder else None,
        "held": None
        if row.held_ts is None
        else {
            "since": iso(row.held_ts),
            "seconds": round((utcnow() - row.held_ts).total_seconds(), 1),
        },
        "canary": _canary(row),
        **read_controls(app).as_dict(),
        "crash_loop": _crash_loop(app, active),
        **intent_and_decision(app),
    }


def intent_and_decision(app: App) -> dict[str, Any]:
    """The desired state (``intent``) and what the decision function would do now, in
    its own sentence (``decision``)."""
    from bgdeploy.boots import BootProcesses
    from bgdeploy.control.decide import decide
    from bgdeploy.control.world import gather

    world = gather(app, BootProcesses(app.config, app.registry))
    i = world.intent
    return {
        "intent": {
            "run": i.run,
            "run_since": iso(i.run_ts),
            "mode": i.mode,
            "version": i.version,
            "reason": i.reason,
            "since": iso(i.mode_ts),
            "by": i.mode_by,
            "installed_seen": i.installed_seen,
            "sentence": i.describe() if not i.down else "down by operator",
        },
        "installed_version": world.installed,
        "decision": decide(world).sentence,
    }


def all_statuses(
    app: App, inflight: dict[str, int] | None = None, router: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The status object of every service in the registry (this config's one included,
    even before its first deploy), by name. In-flight counts (and ``router``, the
    supervisor's own report) are this router's only."""
    names = sorted({*app.registry.services(), app.service})
    out = []
    for name in names:
        own = name == app.service
        if own:
            out.append(status(app, inflight, router))
            continue
        other = App(app.config, name)
        other.__dict__["registry"] = app.registry  # one connection pool for them all
        try:
            out.append(status(other, None, None))
        finally:
            other.router.close()
    return out


def _canary(row: Any) -> dict[str, Any] | None:
    """The canary while its steps run: the candidate's share now and the step."""
    if not row.canary_steps or row.canary_step is None:
        return None
    steps = [int(w) for w in row.canary_steps.split(",")]
    elapsed = (utcnow() - row.canary_step_ts).total_seconds() if row.canary_step_ts else 0.0
    return {
        "share": row.canary_weight,
        "step": row.canary_step + 1,
        "steps": steps,
        "step_seconds": row.canary_step_s,
        "step_left_s": round(max(0.0, (row.canary_step_s or 0.0) - elapsed), 1),
    }


def _crash_loop(app: App, active: Boot | None) -> dict[str, Any] | None:
    """The crash loop while it lasts: the active boot is down between tries."""
    if active is not None and process_matches(active.pid, active.pid_create_time):
        return None
    loop = read_crash_loop(app)
    return loop.as_dict() if loop is not None else None


def event_dict(ev: Event) -> dict[str, Any]:
    return {
        "id": ev.id,
        "generation": ev.generation,
        "event": ev.event,
        "from_state": ev.from_state,
        "to_state": ev.to_state,
        "active_boot_id": ev.active_boot_id,
        "candidate_boot_id": ev.candidate_boot_id,
        "old_boot_id": ev.old_boot_id,
        "reason": ev.reason,
        "actor_pid": ev.actor_pid,
        "actor_command": ev.actor_command,
        "ts": iso(ev.ts),
    }


def history(app: App, limit: int | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    return [event_dict(e) for e in app.registry.events(app.service, limit)]
