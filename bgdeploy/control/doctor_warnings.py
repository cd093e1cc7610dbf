"""Doctor's warnings about what happened and about the machine: the boot port range
against the kernel's ephemeral ports, a daemon crash in the last hour, a failed last `up`.

Kept apart from ``doctor.py`` (the checks of the present state); each function returns
one ``Check`` or None when there is nothing to say.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bgdeploy.config import Config
from bgdeploy.control.app import App
from bgdeploy.control.checks import PASS, WARN, Check
from bgdeploy.registry.models import utcnow
from bgdeploy.timefmt import iso

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
CRASH_WINDOW = timedelta(hours=1)


def ephemeral_ports(path: Path = EPHEMERAL) -> tuple[int, int] | None:
    """The kernel's range for outgoing connections' local ports (None where unknown)."""
    try:
        low, high = (int(p) for p in path.read_text().split()[:2])
    except (OSError, ValueError):
        return None
    return low, high


def port_range(config: Config, path: Path = EPHEMERAL) -> Check | None:
    ephemeral = ephemeral_ports(path)
    if ephemeral is None:
        return None
    low, high = config.daemon.port_range
    e_low, e_high = ephemeral
    shown = f"daemon.port_range [{low}, {high}]"
    if low <= e_high and e_low <= high:
        below = max(1024, e_low - 200)
        return Check(
            "boot ports",
            WARN,
            f"{shown} overlaps the kernel's ephemeral ports ({e_low}-{e_high}): an outgoing "
            "connection can take a boot's port, and that deploy then fails",
            f"Set daemon.port_range below {e_low}, e.g. [{below}, {below + high - low}] "
            "(or [17800, 17999], the default).",
        )
    return Check("boot ports", PASS, f"{shown} lies outside the ephemeral ports {e_low}-{e_high}")


def ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def recent_crash(app: App) -> Check | None:
    """The newest daemon exit of the last hour (a heal leaves the service serving, so
    nothing else would show that the daemon died)."""
    now = utcnow()
    for ev in app.registry.events(app.service, limit=500):  # newest first
        if now - ev.ts > CRASH_WINDOW:
            return None
        if ev.event == "exit":
            what = (ev.reason or "a boot exited").split("; last log lines:")[0]
            boot = what.split()[1] if what.startswith("boot ") else None
            logs = f"`bgdeploy logs {boot}`" if boot else "`bgdeploy logs BOOT`"
            return Check(
                "daemon crash",
                WARN,
                f"{what}, {ago((now - ev.ts).total_seconds())} ({iso(ev.ts)})",
                f"{logs} and `bgdeploy history` show why; the warning ends an hour after it.",
            )
    return None


def failed_deploy(app: App) -> Check | None:
    """The newest generation's deploy, when it was aborted: a failed first `up` leaves
    nothing deployed, and without this doctor would only say so."""
    reg = app.registry
    row = reg.deployment(app.service)
    for ev in reg.events(app.service, limit=500):
        if ev.generation != row.generation:
            return None
        if ev.event == "abort":
            command = ev.actor_command or "a deploy"
            when = ago((utcnow() - ev.ts).total_seconds())
            if row.active_boot_id is None:
                kept = "nothing serves (the router answers 503)"
            else:
                kept = f"{row.active_boot_id} still serves"
            boot = f"`bgdeploy logs {ev.candidate_boot_id}`" if ev.candidate_boot_id else "its log"
            return Check(
                "last deploy",
                WARN,
                f"generation {ev.generation} ({command}) failed {when}: "
                f"{(ev.reason or 'aborted').rstrip('.')}; {kept}",
                f"See {boot}, fix the cause, then `bgdeploy deploy`.",
            )
    return None


def last_rollback(app: App) -> Check | None:
    """The newest generation's automatic or manual rollback, with its reason: a traffic
    analysis rollback leaves a healthy-looking service, and only history said why."""
    reg = app.registry
    row = reg.deployment(app.service)
    events = [e for e in reg.events(app.service, limit=500) if e.generation == row.generation]
    rollback = next((e for e in events if e.event == "rollback"), None)
    if rollback is None:
        return None
    switch = next((e for e in events if e.event == "switch"), None)
    boot = reg.boot(switch.active_boot_id) if switch and switch.active_boot_id else None
    version = boot.version if boot is not None else "the new version"
    reason = (rollback.reason or "rolled back").rstrip(".")
    when = ago((utcnow() - rollback.ts).total_seconds())
    if reason.startswith("traffic analysis: "):
        why = f"by traffic analysis (what users got, while its health checks passed): {reason[18:]}"
    else:
        why = f"({reason})"
    quarantined = version in reg.quarantined_versions(app.service)
    logs = f"`bgdeploy logs {boot.boot_id}`" if boot is not None else "`bgdeploy history`"
    return Check(
        "last rollback",
        WARN,
        f"generation {rollback.generation} ({version}) was rolled back {when} {why}"
        + (f"; {version} is quarantined" if quarantined else ""),
        f"See {logs}; deploy a fixed version"
        + (
            f", or `bgdeploy deploy --force --version {version}` to retry it."
            if quarantined
            else "."
        ),
    )
