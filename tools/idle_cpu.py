#!/usr/bin/env python3
"""The CPU an idle router costs: its supervisor and its workers, over N seconds.

`bgdeploy up --foreground` with the demo daemon in a temporary folder, on free
loopback ports; once the route is set and the deployment is idle, the CPU time
(user + system) the supervisor process and each worker used over ``--seconds``
(20 by default), from psutil. The supervisor's figure includes the control loop
thread (a health check of the active boot every ``health.interval``, 1 s); the demo
daemon's own CPU is shown apart, and the supervisor's main thread (its event loop:
admin listener, worker watch, the series) apart too. No traffic is sent.

    .venv/bin/python tools/idle_cpu.py [--seconds 20] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"idle_cpu: timed out waiting for {what}")


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def loop_thread_cpu(p: psutil.Process) -> float:
    """The CPU of a process's main thread (the supervisor's event loop), user + system."""
    return next(t.user_time + t.system_time for t in p.threads() if t.id == p.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bgdeploy-idle-") as tmp:
        folder = Path(tmp)
        port, admin = free_port(), free_port()
        low = 20000 + (port % 20000)
        daemon = [sys.executable, str(REPO / "tools" / "demo_daemon.py")]
        argv = ", ".join(
            json.dumps(a) for a in [*daemon, "--port", "{port}", "--version", "{version}"]
        )
        (folder / "VERSION").write_text("1.0\n")
        (folder / "bgdeploy.toml").write_text(
            f'[router]\nhost = "127.0.0.1"\nport = {port}\nadmin_port = {admin}\n'
            f"workers = {args.workers}\n\n[daemon]\ncommand = [{argv}]\n"
            f'version_file = "VERSION"\nport_range = [{low}, {low + 20}]\n'
            "\n[health]\nstable_checks = 3\n\n[analysis]\nmax_wait = 0\n"
        )
        log = open(folder / "router.log", "wb")  # noqa: SIM115
        started: list[psutil.Process] = []
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bgdeploy",
                "--config",
                str(folder / "bgdeploy.toml"),
                "up",
                "--foreground",
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{admin}"
        try:
            wait_for(lambda: get(f"{base}/api/route")["boot_id"], 60, "the first boot's route")
            wait_for(
                lambda: get(f"{base}/api/status").get("state") == "idle", 60, "an idle deployment"
            )
            info = get(f"{base}/api/router")
            sup = psutil.Process(proc.pid)
            workers = [psutil.Process(w["pid"]) for w in info["workers"]]
            others = [c for c in sup.children() if c.pid not in {w.pid for w in workers}]
            procs = {"supervisor": sup, **{f"worker {w.pid}": w for w in workers}}
            procs.update({f"daemon {c.pid}": c for c in others})
            before = {name: cpu(p) for name, p in procs.items()}
            loop_before = loop_thread_cpu(sup)
            passes_before = get(f"{base}/api/status")["control_loop"]
            time.sleep(args.seconds)
            after = {name: cpu(p) for name, p in procs.items()}
            loop_used = loop_thread_cpu(sup) - loop_before
            passes = get(f"{base}/api/status")["control_loop"]
        finally:
            # The boots outlive their router (by design): the daemon is stopped here.
            with contextlib.suppress(psutil.Error):
                started = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for p in started:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            psutil.wait_procs(started, timeout=10)
            log.close()
        used = {name: after[name] - before[name] for name in procs}
        router = sum(n for name, n in used.items() if not name.startswith("daemon"))
        for name, n in used.items():
            print(f"{name:>16}: {n:.3f} s CPU ({100 * n / args.seconds:.2f} % of a core)")
            if name == "supervisor":
                print(
                    f"{'its event loop':>16}: {loop_used:.3f} s CPU (the other threads: the "
                    "control loop, the counters' reads)"
                )
        ran = passes["passes"] - passes_before["passes"]
        quiet = passes["quiet_passes"] - passes_before["quiet_passes"]
        print(f"{'control loop':>16}: {ran} passes, of which {quiet} quiet (read nothing)")
        print(
            f"{'router total':>16}: {router:.3f} s CPU over {args.seconds:g} s "
            f"({100 * router / args.seconds:.2f} % of a core)"
        )


if __name__ == "__main__":
    main()
