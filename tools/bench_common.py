"""What tools/bench.py and tools/bench_workers.py share: ports, wrk runs, CPU time, and
the router under test (a real `bgdeploy up --foreground` whose registry names backends
by port)."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DURATION = os.environ.get("BENCH_DURATION", "3s")
# The machine is shared: the targets are measured ROUNDS times, one after the other in
# each round, and summed up with paired() below.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(size: int = 40) -> tuple[int, int]:
    """Free ports for a run's daemons, picked at random (parallel runs differ) below the
    kernel's ephemeral range: there, a client's outgoing connection could take a
    daemon's port between its allocation and its bind. The tests use it too."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(50):
        low = rng.randrange(20000, max(20001, ephemeral_low - size))
        try:
            for port in range(low, low + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return low, low + size - 1
    raise RuntimeError("no free port block")


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing answered on port {port}")


def wrk(
    port: int, conns: int, pid: int | None = None, path: str = "/", threads: int | None = None
) -> dict[str, float]:
    """One wrk run (-t2, or -t1 for one connection, unless threads); with pid, also that
    process's CPU time per request (us)."""
    threads = threads or (1 if conns == 1 else 2)
    before = cpu_seconds(pid) if pid else None
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{DURATION}",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    result = {
        "rps": rps,
        "p50": latency_ms(out, "50%"),
        "p99": latency_ms(out, "99%"),
        "max": max_latency_ms(out),
        "count": count,
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock_err.group(1) if sock_err else "",
        "user_us": float("nan"),
        "sys_us": float("nan"),
    }
    if pid and before is not None and count:
        after = cpu_seconds(pid)
        result["user_us"] = (after[0] - before[0]) / count * 1e6
        result["sys_us"] = (after[1] - before[1]) / count * 1e6
    return result


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process and its live children (workers)."""
    proc = psutil.Process(pid)
    times = [p.cpu_times() for p in (proc, *proc.children(recursive=True))]
    return sum(t.user for t in times), sum(t.system for t in times)


def max_latency_ms(out: str) -> float:
    """The slowest answer of a wrk run (its Latency line: avg, stdev, max)."""
    m = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", out)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def latency_ms(out: str, pct: str) -> float:
    m = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)\b", out)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


class RouterUnderTest:
    """A real router process whose registry points at backends we name by port."""

    def __init__(
        self,
        workdir: Path,
        name: str = "router",
        env: dict[str, str] | None = None,
        registry_url: str | None = None,
    ) -> None:
        from bgdeploy.config import load_config
        from bgdeploy.control.app import App

        self.env = {**os.environ, **(env or {})}
        self.dir = workdir / name
        self.dir.mkdir()
        self.port, self.admin = free_port(), free_port()
        registry = f'[registry]\nurl = "{registry_url}"\n' if registry_url else ""
        (self.dir / "bgdeploy.toml").write_text(
            f"[router]\nport = {self.port}\nadmin_port = {self.admin}\n"
            f'[daemon]\ncommand = ["true"]\n[health]\ninterval = 3600.0\n{registry}'
        )
        self.app = App(load_config(self.dir / "bgdeploy.toml"))
        self.proc: subprocess.Popen[bytes] | None = None

    def point_at(self, port: int) -> tuple[str, float]:
        """One full generation whose boot is whatever listens on port.

        Returns the boot id and the perf_counter time right after the switch commit."""
        boot_id, switched_at, finish = self.switch_to(port)
        finish()
        return boot_id, switched_at

    def switch_to(self, port: int) -> tuple[str, float, Callable[[], None]]:
        """A generation switched to whatever listens on port: the boot id, the
        perf_counter time right after the switch commit, and the finalize still to do
        (a switch propagation is timed before it, so its commit is not counted)."""
        from bgdeploy.states import BootState

        reg, svc = self.app.registry, self.app.service
        row = reg.deployment(svc)
        res = reg.transition(svc, "begin", generation=row.generation, version=f"port-{port}")
        boot_id = res.row.candidate_boot_id
        reg.boot_records.assign_port(boot_id, (port, port), lambda p: True)
        reg.transition(svc, "candidate_ready", generation=res.row.generation)
        reg.transition(svc, "switch", generation=res.row.generation)
        switched_at = time.perf_counter()

        def finish() -> None:
            fin = reg.transition(svc, "finalize", generation=res.row.generation)
            if fin.row.old_boot_id is None and row.active_boot_id:
                reg.boot_records.mark_exited(row.active_boot_id, BootState.STOPPED, 0)

        return boot_id, switched_at, finish

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bgdeploy",
                "--config",
                str(self.dir / "bgdeploy.toml"),
                "up",
                "--foreground",
                "--no-deploy",
                "--no-control",  # the boots are processes it did not start: no heal
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env=self.env,
        )
        wait_port(self.port)
        self.wait_serving()

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Until every worker serves and routes where the registry says: the listening
        socket accepts (into its backlog) before any worker runs, so a figure taken
        earlier would count the workers' start (the first switch measured ~1 s)."""
        import json
        import urllib.request

        active = self.app.registry.deployment(self.app.service).active_boot_id
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{self.admin}/api/route"
                with urllib.request.urlopen(url, timeout=1) as r:
                    workers = json.loads(r.read())["workers"]
                if workers and all(w["boot_id"] == active for w in workers):
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise SystemExit("bench: the router's workers did not serve the route in time")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def paired(runs: list[list[dict]]) -> list[dict]:
    """Each target's runs (one per round, the rounds in the same order for every target),
    summed up against the first target's, the reference.

    Each figure (req/s, p50, p99, max, CPU per request) is the median over the rounds,
    and each ratio to the reference (`rps_ratio`, `p99_ratio`, `cpu_ratio`) the median
    of the ratios within each round: a machine that slows down for a while slows both
    sides of the ratios taken then, which a ratio of two medians taken from different
    rounds does not cancel. `spread` is the req/s range over the rounds and
    `ratio_spread` that of the req/s ratio; `errors` counts non-2xx answers over them all.
    """
    ref = runs[0]

    def cpu(r: dict) -> float:
        return r["user_us"] + r["sys_us"]

    def mid(values: list[float]) -> float:
        return statistics.median(values)

    def ratio(a: float, b: float) -> float:  # a round whose reference made nothing: no ratio
        return a / b if b else float("nan")

    summed = []
    for rs in runs:
        rps = [ratio(r["rps"], g["rps"]) for r, g in zip(rs, ref, strict=True)]
        summed.append(
            {
                **{k: mid([r[k] for r in rs]) for k in ("rps", "p50", "p99", "max")},
                "user_us": mid([r["user_us"] for r in rs]),
                "sys_us": mid([r["sys_us"] for r in rs]),
                "rps_ratio": mid(rps),
                "p99_ratio": mid([ratio(r["p99"], g["p99"]) for r, g in zip(rs, ref, strict=True)]),
                "cpu_ratio": mid([ratio(cpu(r), cpu(g)) for r, g in zip(rs, ref, strict=True)]),
                "spread": f"{min(r['rps'] for r in rs):.0f}-{max(r['rps'] for r in rs):.0f}",
                "ratio_spread": f"{min(rps):.2f}-{max(rps):.2f}",
                "errors": sum(r["errors"] for r in rs),
            }
        )
    return summed


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
