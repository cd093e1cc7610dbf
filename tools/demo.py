#!/usr/bin/env python3
"""`make demo`: the whole story on 127.0.0.1:47777 with the demo daemon.

up with v1 -> load generator running -> deploy v2 -> deploy v3, which turns
unhealthy after its switch and is rolled back to v2 by the router's control
loop -> deploy 4.0-bad, whose health passes while 3 in 10 of its answers to `/`
are 500, rolled back by traffic analysis -> down. The status table after each
step; at the end, requests served and failed: none may fail but the bad
version's own 500s before its rollback.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from loadgen import LoadGen  # noqa: E402

WORK = REPO / ".demo"
CONFIG = f"""\
# Written by tools/demo.py
[router]
host = "127.0.0.1"
port = 47777
admin_port = 47778

[daemon]
command = ["{sys.executable}", "{REPO / "tools" / "demo_daemon.py"}", "--port", "{{port}}",
           "--version", "{{version}}", "--fail-health-file", "unhealthy-{{version}}"]
version_file = "VERSION"
attach_path = "/workspaces"
port_range = [17800, 17899]
startup_timeout = 20.0
stop_timeout = 5.0
drain_timeout = 5.0

[health]
interval = 0.5
timeout = 1.0
failure_threshold = 3
stable_checks = 16
"""


def banner(text: str) -> None:
    print(f"\n\033[1;36m=== {text}\033[0m", flush=True)


def bgdeploy(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "bgdeploy", "--config", str(WORK / "bgdeploy.toml"), *args],
        cwd=WORK,
        text=True,
        capture_output=True,
    )
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `bgdeploy {' '.join(args)}` exited {proc.returncode}")
    return proc


def status() -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bgdeploy",
            "--config",
            str(WORK / "bgdeploy.toml"),
            "status",
            "--json",
        ],
        cwd=WORK,
        text=True,
        capture_output=True,
        check=True,
    )
    return json.loads(proc.stdout)


def wait_for(what: str, predicate, timeout: float = 60.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status()
        if predicate(st):
            return st
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out waiting for {what}")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> int:
    for port in (47777, 47778):
        if not port_free(port):
            print(
                f"demo: 127.0.0.1:{port} is in use; stop what holds it (bgdeploy down?)",
                file=sys.stderr,
            )
            return 1
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    (WORK / "bgdeploy.toml").write_text(CONFIG)
    (WORK / "VERSION").write_text("1.0\n")
    load = None
    bad: set[str] = set()
    try:
        banner("bgdeploy up (installed version 1.0)")
        bgdeploy("up")
        bgdeploy("attach", "workspace-a")
        bgdeploy("status")

        banner("load generator: 8 keep-alive clients (GET / and POST /echo) on :47777")
        load = LoadGen("http://127.0.0.1:47777", clients=8, seconds=300).start()
        time.sleep(1)

        banner("install 2.0 and deploy it (the control loop may see the install first)")
        (WORK / "VERSION").write_text("2.0\n")
        bgdeploy("deploy", "--wait", "30")
        bgdeploy("status")
        wait_for("generation 2 to finalize", lambda s: s["state"] == "idle")
        print("finalized: the old boot was drained and stopped")

        banner("install 3.0 and deploy it; it turns unhealthy after its switch")
        (WORK / "VERSION").write_text("3.0\n")
        bgdeploy("deploy", "--wait", "30")
        (WORK / "unhealthy-3.0").touch()
        bgdeploy("status")
        banner("the control loop sees 3 failed health checks and rolls back by itself")
        st = wait_for(
            "the automatic rollback",
            lambda s: s["state"] == "idle" and s["rollback_reason"] is not None,
        )
        bgdeploy("status")
        assert st["active"]["version"] == "2.0", st

        banner("install 4.0-bad: /healthz passes, but 3 in 10 answers to / are 500")
        seen_before = set(load.stats.boots)
        (WORK / "VERSION").write_text("4.0-bad\n")
        bgdeploy("deploy", "--wait", "30")
        banner("traffic analysis sees what users get and rolls back by itself")
        st = wait_for(
            "the analysis rollback",
            lambda s: (
                s["state"] == "idle" and (s["rollback_reason"] or "").startswith("traffic analysis")
            ),
        )
        bgdeploy("status")
        assert st["active"]["version"] == "2.0", st
        bgdeploy("history", "--limit", "8")
        bgdeploy("doctor", check=False)
        # The bad boot is the one that answered since this step began, other than 2.0's.
        bad = set(load.stats.boots) - seen_before - {st["active"]["boot_id"]}
    finally:
        stats = load.stop() if load is not None else None
        banner("bgdeploy down")
        bgdeploy("down", check=False)
    print(
        f"\nrequests served: {stats.requests}, failed: {stats.failures}, "
        f"mismatched bodies: {stats.mismatches}"
    )
    print(f"by boot: {dict(stats.boots)}")
    expected = sum(n for boot, n in stats.failed_by_boot.items() if boot in bad)
    print(
        f"failed answers of 4.0-bad before its rollback (its own 500s): {expected}; "
        f"any other failure: {stats.failures - expected}"
    )
    return 0 if stats.failures == expected and stats.mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
