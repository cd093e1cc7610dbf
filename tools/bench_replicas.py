#!/usr/bin/env python3
"""Replicas in `make bench`: one uvicorn process per replica behind the router, with
daemon.replicas 1 and 2, against uvicorn --workers 2 reached directly.

The router's registry names the boot's replicas by port (``boots.ports``), as the
control plane writes it once each replica is healthy; the uvicorn processes are
started here. Each side is measured ROUNDS times, interleaved; the median run by
req/s is printed with its p99.

    python tools/bench_replicas.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import bench_common
from bench_common import REPO, ROUNDS, free_port, wait_port, wrk

CONNS = (16, 64)
# "/": the 100-byte answer at once (the proxy is the limit); "/cpu": ~0.5 ms of CPU per
# answer (the daemon is the limit: what replicas are for).
PATHS = ("/", "/cpu")


def uvicorn(port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "uvicorn_app.py"), str(port), str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


def set_rotation(router: bench_common.RouterUnderTest, boot_id: str, ports: list[int]) -> None:
    router.app.registry.replicas.set_rotation(boot_id, ports)


def router_with(workdir: Path, workers: int) -> bench_common.RouterUnderTest:
    router = bench_common.RouterUnderTest(workdir, name=f"router-{workers}w")
    toml = router.dir / "bgdeploy.toml"
    toml.write_text(toml.read_text().replace("[router]\n", f"[router]\nworkers = {workers}\n", 1))
    return router


def main() -> int:
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[tuple[str, str, int], list[dict]] = {}
    names = [
        "router 1 worker, replicas 1",
        "router 1 worker, replicas 2",
        "router 2 workers, replicas 1",
        "router 2 workers, replicas 2",
        "uvicorn --workers 2, direct",
    ]
    with tempfile.TemporaryDirectory(prefix="bgdeploy-bench-replicas-") as tmp:
        routers = [router_with(Path(tmp), 1), router_with(Path(tmp), 2)]
        try:
            p1, p2, p3 = free_port(), free_port(), free_port()
            procs += [uvicorn(p1), uvicorn(p2), uvicorn(p3, workers=2)]
            boots = []
            for router in routers:
                boots.append(router.point_at(p1)[0])
                router.start()
            for path, conns in [(p, c) for p in PATHS for c in CONNS]:
                for _ in range(ROUNDS):
                    for router, boot_id in zip(routers, boots, strict=True):
                        w = "1 worker" if router is routers[0] else "2 workers"
                        for n, ports in ((1, [p1]), (2, [p1, p2])):
                            set_rotation(router, boot_id, ports)
                            router.wait_serving()
                            key = (f"router {w}, replicas {n}", path, conns)
                            results.setdefault(key, []).append(wrk(router.port, conns, path=path))
                    results.setdefault((names[-1], path, conns), []).append(
                        wrk(p3, conns, path=path)
                    )
        finally:
            for router in routers:
                router.stop()
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    print(
        f"\nreplicas: uvicorn (tools/uvicorn_app.py, one process per replica) behind the "
        f"router, wrk {bench_common.DURATION}, median of {ROUNDS} interleaved runs"
    )
    print(f"{'':34} {'path':>5} {'c':>4} {'req/s':>9} {'p99 ms':>8}")

    def median(name: str, path: str, conns: int) -> dict:
        runs = sorted(results[(name, path, conns)], key=lambda r: r["rps"])
        return runs[len(runs) // 2]

    for path, conns in [(p, c) for p in PATHS for c in CONNS]:
        for name in names:
            mid = median(name, path, conns)
            print(f"{name:34} {path:>5} {conns:>4} {mid['rps']:>9.0f} {mid['p99']:>8.2f}")
        for w in ("1 worker", "2 workers"):
            two = median(f"router {w}, replicas 2", path, conns)["rps"]
            one = median(f"router {w}, replicas 1", path, conns)["rps"]
            label = f"{w}: replicas 2 / replicas 1"
            print(f"{label:34} {path:>5} {conns:>4} {two / one:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
