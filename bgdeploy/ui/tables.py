"""Rich renderings of the status object and the history list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

STATE_STYLES = {
    "idle": "green",
    "starting": "cyan",
    "ready": "cyan",
    "switched": "yellow",
    "rolling_back": "bold red",
}
BOOT_STYLES = {
    "active": "bold green",
    "healthy": "cyan",
    "starting": "cyan",
    "standby": "yellow",
    "draining": "magenta",
    "stopped": "dim",
    "failed": "red",
}


def uptime(started: str | None) -> str:
    if not started:
        return "-"
    then = datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{secs // 86400}d"


ROLES = ("active", "candidate", "old")


def _traffic_cells(t: dict[str, Any] | None) -> tuple[str, str, str]:
    """answers, 5xx ratio and p99 over analysis.window ("" without a router)."""
    if t is None:
        return "", "", ""
    ratio = t["error_ratio"]
    p99 = t["p99_ms"]
    return (
        str(t["answers"]),
        "-" if ratio is None else f"{ratio * 100:.1f}%",
        "-" if p99 is None else f"{p99:.0f} ms",
    )


REPLICA_STYLES = {"serving": "green", "starting": "yellow", "out": "red"}


def status_renderable(st: dict[str, Any], tree: bool = False) -> Group:
    """The status: the boots once (a table, or with ``tree`` Argo's tree), then the facts."""
    state = st["state"]
    head = Text.assemble(
        ("service ", "dim"),
        (st["service"], "bold"),
        ("  generation ", "dim"),
        (str(st["generation"]), "bold"),
        ("  state ", "dim"),
        (state, STATE_STYLES.get(state, "")),
    )
    boots = Table(box=None, header_style="bold", pad_edge=False)
    cols = ("role", "boot", "version", "state", "port", "pid", "uptime", "in flight")
    # Traffic columns once a boot has answers in the window (a narrow terminal keeps the
    # boot columns whole while nothing is served).
    served = any((st[r] or {}).get("traffic") and st[r]["traffic"]["answers"] for r in ROLES)
    if served:
        cols += ("answers", "5xx", "p99")
    for col in cols:
        boots.add_column(col, justify="left" if col in cols[:4] or col == "uptime" else "right")
    for role in ROLES:
        b = st[role]
        if b is None:
            boots.add_row(role, Text("-", "dim"), *[""] * (len(cols) - 2))
            continue
        boots.add_row(
            role,
            Text(b["boot_id"], "bold"),
            b["version"],
            Text(b["state"], BOOT_STYLES.get(b["state"], "")),
            str(b["port"] or "-"),
            str(b["pid"] or "-"),
            uptime(b["started_ts"]),
            str(b["inflight"]),
            *(_traffic_cells(b.get("traffic")) if served else ()),
        )
        replicas = b.get("replicas") or []
        for r in replicas if len(replicas) > 1 else ():
            state = r["state"] + (f", {r['restarts']} restarts" if r["restarts"] else "")
            boots.add_row(
                "",
                Text(f"└ replica {r['replica']}", "dim"),
                "",
                Text(state, REPLICA_STYLES.get(r["state"], "")),
                str(r["port"] or "-"),
                str(r["pid"] or "-"),
                uptime(r["started_ts"]),
                *[""] * (len(cols) - 7),
            )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row(
        "health streaks", f"{st['health_fail_streak']} failed / {st['health_ok_streak']} ok"
    )
    if st["switch_ts"]:
        facts.add_row("switched at", st["switch_ts"])
    if st["rollback_reason"] or st["rollback_ts"]:
        facts.add_row("rollback", Text(f"{st['rollback_reason']} at {st['rollback_ts']}", "red"))
    if st["last_error"]:
        facts.add_row("last error", Text(st["last_error"], "red"))
    facts.add_row("quarantined", ", ".join(st["quarantined_versions"]) or "none")
    intent = st.get("intent")
    if intent:
        down = intent["run"] == "down"
        facts.add_row(
            "intent",
            Text(
                "down by operator (bgdeploy up starts it)"
                if down
                else intent["sentence"]
                + (" (bgdeploy unpin ends it)" if intent["mode"] != "installed" else ""),
                "yellow" if down or intent["mode"] != "installed" else "",
            ),
        )
    if st.get("decision"):
        facts.add_row("decision", st["decision"])
    if st["held"] and not st.get("canary"):
        facts.add_row(
            "held",
            Text(
                f"{st['candidate']['boot_id'] if st['candidate'] else 'candidate'} held at "
                f"ready for {st['held']['seconds']:.0f}s (preview: X-Bgdeploy-Preview: 1; "
                "bgdeploy promote / abort)",
                "cyan",
            ),
        )
    if st.get("canary"):
        c = st["canary"]
        steps = ", ".join(f"{w}%" for w in c["steps"])
        facts.add_row(
            "canary",
            Text(
                f"step {c['step']}/{len(c['steps'])}: the candidate gets {c['share']}% of new "
                f"requests, {c['step_left_s']:.0f}s left (steps {steps}; bgdeploy promote "
                "skips them, bgdeploy abort ends the canary)",
                "cyan",
            ),
        )
    if st["pause"]:
        facts.add_row(
            "paused",
            Text(
                f"since {st['pause']['since']}, new requests held for at most "
                f"{st['pause']['max_seconds']:g}s (bgdeploy resume)",
                "yellow",
            ),
        )
    if st.get("crash_loop"):
        loop = st["crash_loop"]
        facts.add_row("crash loop", Text(loop["line"], "red"))
        if loop["log_tail"]:
            facts.add_row("its log", Text(loop["log_tail"], "dim"))
    if st["maintenance"]:
        m = st["maintenance"]
        facts.add_row(
            "maintenance",
            Text(
                f"on since {m['since']}: 503, Retry-After {m['retry_after']} "
                f"({m['message']}) (bgdeploy maintenance off)",
                "yellow",
            ),
        )
    router = st["router"]
    facts.add_row(
        "router",
        f"{router['url']} (pid {router['pid']}, admin {router['admin_url']})"
        if router
        else Text("not running (bgdeploy up)", "yellow"),
    )
    if router:
        facts.add_row("router build", router["build"] or "unknown")
        if router.get("config_current") is False:
            facts.add_row(
                "router config",
                Text(
                    "older than bgdeploy.toml: `bgdeploy up` or `bgdeploy router reload` "
                    "applies it",
                    "yellow",
                ),
            )
    lock = st["lock"]
    facts.add_row(
        "lock",
        Text(f"held by pid {lock['pid']} ({lock['command']}) since {lock['since']}", "yellow")
        if lock
        else "free",
    )
    parts = [status_tree(st)] if tree else [head, Text(""), boots]
    parts += [Text(""), facts]
    if router:
        parts += [Text(""), router_table(router)]
    return Group(*parts)


def router_table(router: dict[str, Any]) -> Table:
    """The supervisor and each worker: pid, uptime, code version, connections, requests."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("router", "pid", "bgdeploy", "uptime", "open conns", "requests"):
        table.add_column(
            col, justify="right" if col in ("pid", "open conns", "requests") else "left"
        )
    installed = router.get("installed_version")
    version = router.get("version") or "?"
    table.add_row(
        "supervisor",
        str(router["pid"]),
        Text(version, "" if version == installed else "yellow"),
        uptime(router.get("started_ts")),
        "",
        "",
    )
    for w in router.get("workers", []):
        table.add_row(
            Text(
                "worker (draining)" if w["draining"] else "worker",
                "magenta" if w["draining"] else "",
            ),
            str(w["pid"]),
            Text(w["version"], "" if w["version"] == installed else "yellow"),
            uptime(w["started"]),
            str(w["connections"]),
            str(w["requests"]),
        )
    if installed and (version != installed):
        table.caption = f"installed bgdeploy is {installed}: `bgdeploy up` reloads the router"
    return table


def services_table(statuses: list[dict[str, Any]]) -> Table:
    """`status --all`: one row per service of the registry."""
    table = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("service", "gen", "state", "active", "version", "candidate", "router", "lock"):
        table.add_column(col, no_wrap=True)
    for st in statuses:
        active, candidate = st["active"], st["candidate"]
        table.add_row(
            Text(st["service"], "bold"),
            str(st["generation"]),
            Text(st["state"], STATE_STYLES.get(st["state"], "")),
            active["boot_id"] if active else "-",
            active["version"] if active else "-",
            candidate["boot_id"] if candidate else "-",
            st["router"]["url"] if st["router"] else "-",
            f"pid {st['lock']['pid']}" if st["lock"] else "free",
        )
    return table


def history_table(events: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("time (UTC)", "gen", "event", "from -> to", "boots"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason", overflow="fold")
    table.add_column("actor", no_wrap=True)
    for ev in events:
        boots = [
            f"{role}={ev[key]}"
            for role, key in (
                ("active", "active_boot_id"),
                ("candidate", "candidate_boot_id"),
                ("old", "old_boot_id"),
            )
            if ev[key]
        ]
        table.add_row(
            ev["ts"].replace("T", " ").rstrip("Z"),
            str(ev["generation"]),
            Text(ev["event"], "bold"),
            f"{ev['from_state']} -> {ev['to_state']}",
            " ".join(boots) or "-",
            ev["reason"] or "",
            f"pid {ev['actor_pid']}",
        )
    return table


DOCTOR_STYLES = {"pass": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "bold red")}


def doctor_table(checks: list[dict[str, str]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result")
    for c in checks:
        mark, style = DOCTOR_STYLES[c["status"]]
        result = Text(c["message"])
        if c["fix"] and c["status"] != "pass":
            result.append(f"\n→ {c['fix']}", style="dim")
        table.add_row(Text(mark, style), Text(c["name"], "bold"), result)
    return table


def status_tree(st: dict[str, Any]) -> Tree:
    """Argo-style: the deployment, then its boots by role."""
    state = st["state"]
    tree = Tree(
        Text.assemble(
            (f"{st['service']} ", "bold"),
            ("generation ", "dim"),
            (str(st["generation"]), "bold"),
            ("  ", ""),
            (f"⟳ {state}" if state != "idle" else "✔ idle", STATE_STYLES.get(state, "")),
        )
    )
    for role in ("active", "candidate", "old"):
        b = st[role]
        if b is None:
            continue
        tree.add(
            Text.assemble(
                (f"{role:<9} ", "dim"),
                (b["boot_id"], "bold"),
                (f"  {b['version']}  ", ""),
                (b["state"], BOOT_STYLES.get(b["state"], "")),
                (
                    f"  :{b['port']}  pid {b['pid']}  {uptime(b['started_ts'])}"
                    f"  {b['inflight']} in flight",
                    "dim",
                ),
            )
        )
    return tree
