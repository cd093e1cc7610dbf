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


def main() -> int:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bgdeploy-bench-replicas-") as tmp:
        router = bench_common.RouterUnderTest(Path(tmp), env={"BGDEPLOY_LOG": "warning"})
        try:
            p1, p2, p3 = free_port(), free_port(), free_port()
            procs += [uvicorn(p1), uvicorn(p2), uvicorn(p3, workers=2)]
            boot_id, _ = router.point_at(p1)
            router.start()
            results: dict[tuple[str, int], list[dict]] = {}
            for conns in CONNS:
                for _ in range(ROUNDS):
                    set_rotation(router, boot_id, [p1])
                    router.wait_serving()
                    results.setdefault(("router, replicas 1", conns), []).append(
                        wrk(router.port, conns)
                    )
                    set_rotation(router, boot_id, [p1, p2])
                    router.wait_serving()
                    results.setdefault(("router, replicas 2", conns), []).append(
                        wrk(router.port, conns)
                    )
                    results.setdefault(("uvicorn --workers 2, direct", conns), []).append(
                        wrk(p3, conns)
                    )
        finally:
            router.stop()
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    print(
        f"\nreplicas: uvicorn (tools/uvicorn_app.py, one process per replica) behind the "
        f"router (1 worker), wrk {bench_common.DURATION}, median of {ROUNDS} interleaved runs"
    )
    print(f"{'':32} {'c':>4} {'req/s':>9} {'p99 ms':>8}")
    for conns in CONNS:
        for name in ("router, replicas 1", "router, replicas 2", "uvicorn --workers 2, direct"):
            runs = sorted(results[(name, conns)], key=lambda r: r["rps"])
            mid = runs[len(runs) // 2]
            print(f"{name:32} {conns:>4} {mid['rps']:>9.0f} {mid['p99']:>8.2f}")
        one = sorted(r["rps"] for r in results[("router, replicas 1", conns)])[ROUNDS // 2]
        two = sorted(r["rps"] for r in results[("router, replicas 2", conns)])[ROUNDS // 2]
        print(f"{'replicas 2 / replicas 1':32} {conns:>4} {two / one:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
