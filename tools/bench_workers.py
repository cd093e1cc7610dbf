"""The router's worker processes in `make bench` (called from tools/bench.py's main).

1. router.workers = 1 and 2 against nginx with worker_processes 1 and 2 (upstream
   keepalive), same nginx backend, c=16 and c=64, medians over interleaved rounds
   (the ratio: the median of the ratios within a round, bench_common.paired),
   with the CPU time per request summed over all of each proxy's worker processes.
2. switch propagation per worker: registry commit -> the route applied in each
   worker (the time it noted, asked over its unix socket), p50/p99/max over 50
   switches.
3. each worker's RSS idle, and holding 5000 idle client connections.
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import bench_common
import httpx
import psutil
from bench_peers import start_nginx

from bgdeploy.router import ipc

IDLE_CONNECTIONS = 5000


class WorkersRouter(bench_common.RouterUnderTest):
    """The bench's router with router.workers = n (and a long header timeout, so that
    idle connections stay open for the memory figure)."""

    def __init__(self, workdir: Path, workers: int) -> None:
        from bgdeploy.config import load_config
        from bgdeploy.control.app import App

        self.env = dict(os.environ)
        self.dir = workdir / f"router-{workers}w"
        self.dir.mkdir()
        self.n = workers
        self.port, self.admin = bench_common.free_port(), bench_common.free_port()
        (self.dir / "bgdeploy.toml").write_text(
            f"[router]\nport = {self.port}\nadmin_port = {self.admin}\nworkers = {workers}\n"
            f"header_timeout = 600.0\n"
            f'[daemon]\ncommand = ["true"]\n[health]\ninterval = 3600.0\n'
        )
        self.app = App(load_config(self.dir / "bgdeploy.toml"))
        self.proc = None

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 30
        while len(self.workers()) < self.n:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the router's workers did not start")
            time.sleep(0.1)

    def workers(self) -> list[dict[str, Any]]:
        try:
            info = httpx.get(f"http://127.0.0.1:{self.admin}/api/router", timeout=5).json()
        except httpx.HTTPError:
            return []
        return [w for w in info["workers"] if not w["draining"]]


def _seconds() -> float:
    return float(bench_common.DURATION.rstrip("s"))


def wrk_cpu(port: int, conns: int, pids: list[int]) -> dict[str, Any]:
    """One wrk run and the CPU time per request summed over pids (us)."""
    procs = [psutil.Process(p) for p in pids]
    before = [p.cpu_times() for p in procs]
    result = bench_common.wrk(port, conns)
    after = [p.cpu_times() for p in procs]
    count = result["rps"] * _seconds()
    if count:
        result["user_us"] = (
            sum(a.user - b.user for a, b in zip(after, before, strict=True)) / count * 1e6
        )
        result["sys_us"] = (
            sum(a.system - b.system for a, b in zip(after, before, strict=True)) / count * 1e6
        )
    return result


def throughput(work: Path, backend: int) -> list[tuple[int, int, dict, dict]]:
    """(workers, c, nginx run, router run) rows."""
    rows = []
    for n in (1, 2):
        proxy = bench_common.free_port()
        nginx = start_nginx(
            work,
            f"proxy-{n}w",
            f"""
  upstream be {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://be; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}""",
            workers=n,
        )
        router = WorkersRouter(work, n)
        router.point_at(backend)
        try:
            bench_common.wait_port(proxy)
            router.start()
            nginx_pids = [c.pid for c in psutil.Process(nginx.pid).children()]
            router_pids = [w["pid"] for w in router.workers()]
            for c in (16, 64):
                ng_runs, ro_runs = [], []
                for _ in range(bench_common.ROUNDS):
                    ng_runs.append(wrk_cpu(proxy, c, nginx_pids))
                    ro_runs.append(wrk_cpu(router.port, c, router_pids))
                rows.append((n, c, *bench_common.paired([ng_runs, ro_runs])))
        finally:
            router.stop()
            nginx.terminate()
            nginx.wait(timeout=10)
    return rows


def switch_per_worker(work: Path, ports: tuple[int, int], n: int = 50) -> dict[int, list[float]]:
    """Per worker pid: ms from the switch commit until that worker routes to the new boot."""
    (work / "switch").mkdir()
    router = WorkersRouter(work / "switch", 2)
    router.point_at(ports[0])
    router.start()
    ns = ipc.namespace(router.app.config.state_dir)
    pids = [w["pid"] for w in router.workers()]
    samples: dict[int, list[float]] = {p: [] for p in pids}
    try:
        for i in range(n):
            boot_id, t_commit = router.point_at(ports[(i + 1) % 2])
            # Each worker notes the wall-clock time it applied a route; asking it (below)
            # only reads that, so the asking does not add to the figure.
            committed = time.time() - (time.perf_counter() - t_commit)
            waiting = set(pids)
            while waiting:
                time.sleep(0.005)
                for pid in list(waiting):
                    stats, _ = ipc.request(ipc.worker_address(ns, pid), {"cmd": "stats"})
                    if stats["route"] and stats["route"][0] == boot_id:
                        samples[pid].append((stats["route_changed_at"] - committed) * 1000)
                        waiting.discard(pid)
                if time.perf_counter() - t_commit > 5:
                    raise SystemExit("bench: a worker did not follow a switch within 5 s")
    finally:
        router.stop()
    return samples


def memory(work: Path, backend: int) -> dict[int, tuple[float, float]]:
    """RSS (MB) of one worker idle after some requests, and holding 5000 idle connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE_CONNECTIONS + 1024), hard))
    (work / "memory").mkdir()
    router = WorkersRouter(work / "memory", 1)
    router.point_at(backend)
    router.start()
    held: list[socket.socket] = []
    try:
        with httpx.Client() as client:
            for _ in range(200):
                client.get(f"http://127.0.0.1:{router.port}/")
        time.sleep(1)  # let each worker settle after the requests (and collect)
        idle = {
            w["pid"]: psutil.Process(w["pid"]).memory_info().rss / 2**20 for w in router.workers()
        }
        for _ in range(IDLE_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", router.port)))
        deadline = time.monotonic() + 30
        while sum(w["connections"] for w in router.workers()) < IDLE_CONNECTIONS:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the workers did not take the idle connections")
            time.sleep(0.2)
        busy = {
            w["pid"]: psutil.Process(w["pid"]).memory_info().rss / 2**20 for w in router.workers()
        }
        return {pid: (idle[pid], busy.get(pid, float("nan"))) for pid in idle}
    finally:
        for s in held:
            s.close()
        router.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def report(work: Path, backends: tuple[int, int]) -> None:
    rows = throughput(work, backends[0])
    samples = switch_per_worker(work, backends)
    rss = memory(work, backends[0])
    print(
        "\nrouter.workers = 1 and 2 vs nginx worker_processes 1 and 2, nginx backend, "
        f"{bench_common.ROUNDS} interleaved rounds, medians over them (ratio: of the ratios within "
        "a round); CPU per request summed over workers"
    )
    print(
        f"{'workers':>7} {'c':>3}  {'nginx req/s':>11} {'p99 ms':>7} {'cpu/req us':>10}   "
        f"{'router req/s':>12} {'p99 ms':>7} {'cpu/req us':>10}   {'ratio':>5}"
    )
    for n, c, ng, ro in rows:
        print(
            f"{n:>7} {c:>3}  {ng['rps']:>11.0f} {ng['p99']:>7.3f} "
            f"{ng['user_us'] + ng['sys_us']:>10.0f}   {ro['rps']:>12.0f} {ro['p99']:>7.3f} "
            f"{ro['user_us'] + ro['sys_us']:>10.0f}   {ro['rps_ratio']:>5.2f}"
        )
    print("\nswitch propagation per worker (commit -> the worker routes to the new boot), ms")
    for pid, values in samples.items():
        print(
            f"  worker {pid}: {len(values)} switches, p50 {statistics.median(values):.1f}, "
            f"p99 {bench_common.pct(values, 99):.1f}, max {max(values):.1f}"
        )
    print(
        f"\nworker RSS (MB), router.workers = 1: idle, and with {IDLE_CONNECTIONS} idle connections"
    )
    for pid, (idle, busy) in rss.items():
        print(f"  worker {pid}: idle {idle:.1f}, with the connections {busy:.1f}")
