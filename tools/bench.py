#!/usr/bin/env python3
"""`make bench`: the router against references measured in the same run.

1. In front of one nginx backend (1 worker, 100-byte answer): nginx
   (worker_processes 1), HAProxy (nbthread 1), Caddy (GOMAXPROCS=1), the router's
   compiled build and its pure-Python build (BGDEPLOY_NO_EXTENSIONS=1), and a byte
   relay with no HTTP handling (tools/relay_reference.py, the ceiling of the
   router's design); wrk at c=16 and c=64, with the CPU time each proxy (and its
   children) spends per request, user + system.
2. The same proxies in front of a fast Python backend (tools/uvicorn_app.py), and
   direct, at c=16 and c=64.
3. Router vs direct in front of the demo daemon, c=16.
4. Switch propagation: registry commit -> first response from the new boot,
   p50/p99 over 50 switches, with a SQLite registry (inotify on its files) and with
   a PostgreSQL one (LISTEN/NOTIFY) on a throw-away server (tools/pgserver.py);
   and each router build's CPU while idle. `python tools/bench.py --propagation`
   measures only the two propagations, against two demo daemons.
   `python tools/bench.py --user` runs only tools/bench_user.py (the router as a
   user runs it, `bgdeploy up` with its defaults, against nginx, HAProxy, the relay).
5. The router's own Python work per request of each build (tools/router_cost.py).
`make bench` installs nginx, wrk, HAProxy and Caddy with apt-get where it can.
Loopback only; every load run is bounded by wrk's -d.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import (
    DURATION,
    REPO,
    ROUNDS,
    RouterUnderTest,
    cpu_seconds,
    free_port,
    paired,
    pct,
    wait_port,
    wrk,
)
from bench_peers import nginx_proxies, start_caddy, start_haproxy, start_nginx

BODY = "x" * 99 + "\n"
TOOLS = ("nginx", "wrk", "haproxy", "caddy")
IDLE_S = 10.0


def check_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        raise SystemExit(
            f"bench: {', '.join(missing)} not found; install them (`make bench` does, with "
            "apt-get, when run as root)."
        )


def interleaved(targets: list[tuple[int, int | None]], conns: int) -> list[dict]:
    """ROUNDS rounds, each a run of every (port, pid) target in turn; each target's runs
    summed up against the first target's (bench_common.paired)."""
    runs: list[list[dict]] = [[] for _ in targets]
    for _ in range(ROUNDS):
        for i, (port, pid) in enumerate(targets):
            runs[i].append(wrk(port, conns, pid))
    return paired(runs)


def switch_propagation(router: RouterUnderTest, ports: tuple[int, int], n: int = 50) -> list[float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=5)
    samples = []
    for i in range(n):
        boot_id, t_commit, finish = router.switch_to(ports[i % 2])
        while True:
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("X-Bgdeploy-Boot") == boot_id:
                break
            if time.perf_counter() - t_commit > 5:
                raise SystemExit("bench: the router did not follow a switch within 5 s")
        samples.append((time.perf_counter() - t_commit) * 1000)
        finish()
    conn.close()
    return samples


def postgres_switch_propagation(work: Path, ports: tuple[int, int]) -> list[float] | str:
    """Switch propagation with the registry on a throw-away PostgreSQL server; the
    reason instead when no server can be started here."""
    sys.path.insert(0, str(REPO / "tools"))
    from pgserver import PgServer

    try:
        server = PgServer()
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return f"skipped: {e}"
    router = None
    try:
        router = RouterUnderTest(work, "router-pg", registry_url=server.new_database())
        router.point_at(ports[1])  # the measured switches start with ports[0]
        router.start()
        return switch_propagation(router, ports)
    finally:
        if router is not None:
            router.stop()
            router.app.close()
        server.destroy()


def propagation_line(name: str, samples: list[float] | str) -> str:
    head = f"switch propagation, {name} (registry commit -> first response from the new boot)"
    if isinstance(samples, str):
        return f"{head}: {samples}"
    return (
        f"{head}, {len(samples)} switches: p50 {statistics.median(samples):.1f} ms, "
        f"p99 {pct(samples, 99):.1f} ms, max {max(samples):.1f} ms"
    )


def propagation_only() -> int:
    """Both registries' switch propagation, against two demo daemons (no nginx, no wrk)."""
    procs = []
    with tempfile.TemporaryDirectory(prefix="bgdeploy-bench-") as tmp:
        work = Path(tmp)
        router = None
        try:
            ports = (free_port(), free_port())
            for port in ports:
                demo = [str(REPO / "tools" / "demo_daemon.py"), "--port", str(port)]
                procs.append(subprocess.Popen([sys.executable, *demo], stdout=subprocess.DEVNULL))
                wait_port(port)
            router = RouterUnderTest(work)
            router.point_at(ports[1])  # the measured switches start with ports[0]
            router.start()
            sqlite = switch_propagation(router, ports)
            router.stop()
            router = None
            pg = postgres_switch_propagation(work, ports)
        finally:
            if router is not None:
                router.stop()
            for p in procs:
                p.terminate()
                p.wait(timeout=10)
    print(propagation_line("SQLite registry (inotify)", sqlite))
    print(propagation_line("PostgreSQL registry (LISTEN/NOTIFY)", pg))
    return 0


def main() -> int:
    check_tools()
    procs: list[subprocess.Popen[bytes]] = []
    routers: list[RouterUnderTest] = []
    with tempfile.TemporaryDirectory(prefix="bgdeploy-bench-") as tmp:
        work = Path(tmp)
        try:
            b1, b2, uv = free_port(), free_port(), free_port()
            backend = (
                f'server {{ listen 127.0.0.1:{b1}; location / {{ return 200 "{BODY}"; }} }}'
                f'\n  server {{ listen 127.0.0.1:{b2}; location / {{ return 200 "{BODY}"; }} }}'
            )
            procs.append(start_nginx(work, "backend", backend))
            script = str(REPO / "tools" / "uvicorn_app.py")
            procs.append(subprocess.Popen([sys.executable, script, str(uv)]))
            # Each peer proxies one port to the nginx backend and one to uvicorn.
            peers = {name: (free_port(), free_port()) for name in ("nginx", "haproxy", "caddy")}
            pairs = {name: [(p, b1), (q, uv)] for name, (p, q) in peers.items()}
            starts = {"nginx": None, "haproxy": start_haproxy, "caddy": start_caddy}
            pids = {}
            for name, start in starts.items():
                if start is None:
                    proc = start_nginx(work, "proxy", nginx_proxies(pairs[name]))
                else:
                    proc = start(work, pairs[name])
                procs.append(proc)
                pids[name] = proc.pid
            for p in (b1, b2, uv, *(x for pair in peers.values() for x in pair)):
                wait_port(p)
            for name, env in (("compiled", {}), ("pure", {"BGDEPLOY_NO_EXTENSIONS": "1"})):
                router = RouterUnderTest(work, f"router-{name}", env)
                router.point_at(b1)
                router.start()
                routers.append(router)
            relay_port = free_port()
            relay_script = str(REPO / "tools" / "relay_reference.py")
            relay = subprocess.Popen([sys.executable, relay_script, str(b1), str(relay_port)])
            procs.append(relay)
            wait_port(relay_port)
            compiled, pure = routers
            names = ["nginx", "haproxy", "caddy", "router compiled", "router pure-python"]
            targets = [(peers[n][0], pids[n]) for n in ("nginx", "haproxy", "caddy")]
            targets += [(r.port, r.proc.pid) for r in routers]
            rows = [(c, interleaved([*targets, (relay_port, relay.pid)], c)) for c in (16, 64)]

            for r in routers:
                r.point_at(uv)
                r.wait_serving()
            uv_targets = [(uv, None), *((peers[n][1], None) for n in peers)]
            uv_targets += [(r.port, None) for r in routers]
            uv_rows = [(c, interleaved(uv_targets, c)) for c in (16, 64)]

            demo_port = free_port()
            demo = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tools" / "demo_daemon.py"),
                    "--port",
                    str(demo_port),
                    "--version",
                    "bench",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(demo)
            wait_port(demo_port)
            compiled.point_at(demo_port)
            compiled.wait_serving()
            direct, via = interleaved([(demo_port, None), (compiled.port, None)], 16)

            samples = switch_propagation(compiled, (b1, b2))
            idle = idle_cpu([r.proc.pid for r in routers])
            for r in routers:
                r.stop()
            routers = []
            pg_samples = postgres_switch_propagation(work, (b1, b2))
            import bench_workers  # the router's worker processes: its own section

            with contextlib.redirect_stdout(io.StringIO()) as workers_section:
                bench_workers.report(work, (b1, b2))
        finally:
            for r in routers:
                r.stop()
            for p in procs:
                p.terminate()
                p.wait(timeout=10)

    print(
        f"\nproxies in front of one nginx backend, 100-byte keep-alive GET, one worker/thread "
        f"each, wrk -t2 -d{DURATION}, {ROUNDS} rounds; each figure the median over the rounds, "
        "each ratio to nginx the median of the ratios within a round; ratio runs: the req/s "
        "ratio's range over the rounds"
    )
    print(
        f"{'c':>3}  {'proxy':<19} {'req/s':>7} {'/nginx':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'p99/nginx':>9}  {'cpu us/req u+s':>14} {'cpu/nginx':>9}  {'ratio runs':>9}  runs req/s"
    )
    for c, results in rows:
        for name, r in zip([*names, "byte relay"], results, strict=True):
            print(
                f"{c:>3}  {name:<19} {r['rps']:>7.0f} {r['rps_ratio']:>7.2f} "
                f"{r['p50']:>7.3f} {r['p99']:>7.3f} {r['p99_ratio']:>9.2f}  "
                f"{cpu(r):>14} {r['cpu_ratio']:>9.2f}  {r['ratio_spread']:>9}  {r['spread']}"
            )
    print("\nin front of uvicorn (tools/uvicorn_app.py, 1 worker), same 100-byte answer")
    print(f"{'c':>3}  {'path':<19} {'req/s':>7} {'/direct':>7} {'p99 ms':>7}  runs req/s")
    for c, results in uv_rows:
        for name, r in zip(["direct", *names], results, strict=True):
            print(
                f"{c:>3}  {name:<19} {r['rps']:>7.0f} {r['rps_ratio']:>7.2f} "
                f"{r['p99']:>7.3f}  {r['spread']}"
            )
    print(
        f"\nin front of the demo daemon, c=16: direct {direct['rps']:.0f} req/s "
        f"(p99 {direct['p99']:.2f} ms), via router {via['rps']:.0f} req/s "
        f"(p99 {via['p99']:.2f} ms), router/direct {via['rps_ratio']:.2f}"
    )
    print("\n" + propagation_line("SQLite registry (inotify)", samples))
    print(propagation_line("PostgreSQL registry (LISTEN/NOTIFY)", pg_samples))
    print(
        f"idle router over {IDLE_S:.0f} s: compiled {idle[0]:.2f}% of a core, "
        f"pure-python {idle[1]:.2f}% of a core"
    )
    print("\nthe router's own Python per request, no sockets (tools/router_cost.py):")
    for env in ({}, {"BGDEPLOY_NO_EXTENSIONS": "1"}):
        cost = subprocess.run(
            [sys.executable, str(REPO / "tools" / "router_cost.py")],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        print("  " + cost.stdout.strip())
    print(workers_section.getvalue(), end="")
    errs = [r for _, results in rows + uv_rows for r in results if r["errors"]]
    errs += [r for r in (direct, via) if r["errors"]]
    if errs:
        print(f"\nnon-2xx answers seen: {errs}")
    return 0


def cpu(r: dict) -> str:
    return f"{r['user_us']:.1f}+{r['sys_us']:.1f}"


def idle_cpu(pids: list[int]) -> list[float]:
    """Each process's CPU (with its children) over IDLE_S seconds of no traffic, % of a core."""
    before = [sum(cpu_seconds(p)) for p in pids]
    t0 = time.monotonic()
    time.sleep(IDLE_S)
    elapsed = time.monotonic() - t0
    return [(sum(cpu_seconds(p)) - b) / elapsed * 100 for p, b in zip(pids, before, strict=True)]


if __name__ == "__main__":
    if "--user" in sys.argv[1:]:  # the router as a user runs it: tools/bench_user.py
        import bench_user

        sys.exit(bench_user.main([a for a in sys.argv[1:] if a != "--user"]))
    sys.exit(propagation_only() if "--propagation" in sys.argv[1:] else main())
