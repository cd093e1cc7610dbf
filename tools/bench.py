#!/usr/bin/env python3
"""`make bench`: the router against references measured in the same run.

1. router vs an nginx reverse proxy (1 worker, upstream keepalive), both in front
   of the same nginx backend (1 worker, 100-byte answer): wrk at c=1, 16, 64; with
   the CPU time each proxy process spends per request (user + system). A third
   column, a byte relay with no HTTP handling (tools/relay_reference.py), shows
   the ceiling of the router's design (asyncio Protocols on uvloop, one process).
2. router vs direct, in front of the demo daemon, c=16.
3. switch propagation: registry commit -> first response from the new boot,
   p50/p99 over 50 switches, with a SQLite registry (data_version polling) and with
   a PostgreSQL one (LISTEN/NOTIFY) on a throw-away server (tools/pgserver.py).
   `python tools/bench.py --propagation` measures only these two, against two demo
   daemons.
Installs nginx-light and wrk with apt-get when they are missing. Loopback only;
every load run is bounded by wrk's -d.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DURATION = os.environ.get("BENCH_DURATION", "3s")
# The machine is shared: each pair is measured ROUNDS times, interleaved, and the
# median run (by req/s) of each side is reported.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BODY = "x" * 99 + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tools() -> None:
    missing = [
        t
        for t in ("nginx", "wrk")
        if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()
    ]
    if not missing:
        return
    print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    pkgs = ["nginx-light" if t == "nginx" else t for t in missing]
    subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], check=True, env=env)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(workdir: Path, name: str, servers: str) -> subprocess.Popen[bytes]:
    d = workdir / name
    d.mkdir()
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  {servers}
}}
""")
    proc = subprocess.Popen(
        [nginx_bin(), "-p", str(d), "-c", str(d / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing answered on port {port}")


def wrk(port: int, conns: int, pid: int | None = None, path: str = "/") -> dict[str, float]:
    """One wrk run; with pid, also that process's CPU time per request (us)."""
    threads = 1 if conns == 1 else 2
    proc = psutil.Process(pid) if pid else None
    before = proc.cpu_times() if proc else None
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
        "p50": _latency(out, "50%"),
        "p99": _latency(out, "99%"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock_err.group(1) if sock_err else "",
        "user_us": float("nan"),
        "sys_us": float("nan"),
    }
    if proc is not None and before is not None and count:
        after = proc.cpu_times()
        result["user_us"] = (after.user - before.user) / count * 1e6
        result["sys_us"] = (after.system - before.system) / count * 1e6
    return result


def interleaved(targets: list[tuple[int, int | None]], conns: int) -> list[dict]:
    """ROUNDS interleaved runs of each (port, pid) target; the median run of each."""
    runs: list[list[dict]] = [[] for _ in targets]
    for _ in range(ROUNDS):
        for i, (port, pid) in enumerate(targets):
            runs[i].append(wrk(port, conns, pid))

    def median(rs: list[dict]) -> dict:
        ordered = sorted(rs, key=lambda r: r["rps"])
        result = dict(ordered[len(ordered) // 2])
        result["spread"] = f"{ordered[0]['rps']:.0f}-{ordered[-1]['rps']:.0f}"
        return result

    return [median(rs) for rs in runs]


def _latency(out: str, pct: str) -> float:
    m = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)\b", out)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


class RouterUnderTest:
    """A real router process whose registry points at backends we name by port."""

    def __init__(self, workdir: Path, registry_url: str | None = None) -> None:
        from bgdeploy.config import load_config
        from bgdeploy.control.app import App

        self.dir = workdir / ("router" if registry_url is None else "router-pg")
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
        from bgdeploy.states import BootState

        reg, svc = self.app.registry, self.app.service
        row = reg.deployment(svc)
        res = reg.transition(svc, "begin", generation=row.generation, version=f"port-{port}")
        boot_id = res.row.candidate_boot_id
        reg.boot_records.assign_port(boot_id, (port, port), lambda p: True)
        reg.transition(svc, "candidate_ready", generation=res.row.generation)
        reg.transition(svc, "switch", generation=res.row.generation)
        switched_at = time.perf_counter()
        fin = reg.transition(svc, "finalize", generation=res.row.generation)
        if fin.row.old_boot_id is None and row.active_boot_id:
            reg.boot_records.mark_exited(row.active_boot_id, BootState.STOPPED, 0)
        return boot_id, switched_at

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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def switch_propagation(router: RouterUnderTest, ports: tuple[int, int], n: int = 50) -> list[float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=5)
    samples = []
    for i in range(n):
        boot_id, t_commit = router.point_at(ports[i % 2])
        while True:
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("X-Bgdeploy-Boot") == boot_id:
                break
            if time.perf_counter() - t_commit > 5:
                raise SystemExit("bench: the router did not follow a switch within 5 s")
        samples.append((time.perf_counter() - t_commit) * 1000)
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
        router = RouterUnderTest(work, server.new_database())
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
    print(propagation_line("SQLite registry (data_version)", sqlite))
    print(propagation_line("PostgreSQL registry (LISTEN/NOTIFY)", pg))
    return 0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    ensure_tools()
    procs: list[subprocess.Popen[bytes]] = []
    router = None
    with tempfile.TemporaryDirectory(prefix="bgdeploy-bench-") as tmp:
        work = Path(tmp)
        try:
            b1, b2, proxy = free_port(), free_port(), free_port()
            backend = (
                f'server {{ listen 127.0.0.1:{b1}; location / {{ return 200 "{BODY}"; }} }}'
                f'\n  server {{ listen 127.0.0.1:{b2}; location / {{ return 200 "{BODY}"; }} }}'
            )
            procs.append(start_nginx(work, "backend", backend))
            procs.append(
                start_nginx(
                    work,
                    "proxy",
                    f"""
  upstream be {{ server 127.0.0.1:{b1}; keepalive 64; }}
  server {{ listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://be; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}""",
                )
            )
            for p in (b1, b2, proxy):
                wait_port(p)
            router = RouterUnderTest(work)
            router.point_at(b1)
            router.start()
            relay_port = free_port()
            relay_script = str(REPO / "tools" / "relay_reference.py")
            relay = subprocess.Popen([sys.executable, relay_script, str(b1), str(relay_port)])
            procs.append(relay)
            wait_port(relay_port)
            nginx_worker = psutil.Process(procs[1].pid).children()[0].pid
            assert router.proc is not None

            rows = []
            for c in (1, 16, 64):
                targets = [
                    (proxy, nginx_worker),
                    (router.port, router.proc.pid),
                    (relay_port, relay.pid),
                ]
                ng, ro, rl = interleaved(targets, c)
                rows.append((c, ng, ro, rl))

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
            router.point_at(demo_port)
            time.sleep(0.2)
            direct, via = interleaved([(demo_port, None), (router.port, None)], 16)

            samples = switch_propagation(router, (b1, b2))
            router.stop()
            router = None
            pg_samples = postgres_switch_propagation(work, (b1, b2))
        finally:
            if router is not None:
                router.stop()
            for p in procs:
                p.terminate()
                p.wait(timeout=10)

    print(
        "\nrouter vs nginx reverse proxy (1 worker, upstream keepalive), nginx backend, "
        f"100-byte GET, wrk -d{DURATION}, median of {ROUNDS} interleaved runs each"
    )
    print(
        f"{'c':>3}  {'nginx req/s':>11} {'p50 ms':>7} {'p99 ms':>7}   {'router req/s':>12} "
        f"{'p50 ms':>7} {'p99 ms':>7}   {'req/s ratio':>11} {'p99 ratio':>9}"
    )
    for c, ng, ro, _ in rows:
        print(
            f"{c:>3}  {ng['rps']:>11.0f} {ng['p50']:>7.3f} {ng['p99']:>7.3f}   "
            f"{ro['rps']:>12.0f} {ro['p50']:>7.3f} {ro['p99']:>7.3f}   "
            f"{ro['rps'] / ng['rps']:>11.2f} {ro['p99'] / ng['p99']:>9.2f}"
            f"   (runs: nginx {ng['spread']}, router {ro['spread']})"
        )
    print(
        "\nCPU time per request of each proxy process (user + system, us), and the "
        "ceiling of the router's design:\na byte relay on the same asyncio + uvloop "
        "(tools/relay_reference.py: no HTTP handling, no routing)"
    )
    print(
        f"{'c':>3}  {'nginx cpu/req':>14}  {'router cpu/req':>15}  {'relay cpu/req':>14}"
        f"  {'relay req/s':>11} {'p99 ms':>7}  {'relay/nginx':>11}"
    )

    def cpu(r: dict) -> str:
        return f"{r['user_us']:.0f}+{r['sys_us']:.0f}"

    for c, ng, ro, rl in rows:
        print(
            f"{c:>3}  {cpu(ng):>14}  {cpu(ro):>15}  {cpu(rl):>14}"
            f"  {rl['rps']:>11.0f} {rl['p99']:>7.3f}  {rl['rps'] / ng['rps']:>11.2f}"
        )
    print(
        f"\nin front of the demo daemon, c=16: direct {direct['rps']:.0f} req/s "
        f"(p99 {direct['p99']:.2f} ms), via router {via['rps']:.0f} req/s "
        f"(p99 {via['p99']:.2f} ms), router/direct {via['rps'] / direct['rps']:.2f}"
    )
    print("\n" + propagation_line("SQLite registry (data_version)", samples))
    print(propagation_line("PostgreSQL registry (LISTEN/NOTIFY)", pg_samples))
    errs = [r for _, *runs in rows for r in runs if r["errors"]] + [
        r for r in (direct, via) if r["errors"]
    ]
    if errs:
        print(f"\nnon-2xx answers seen: {errs}")
    return 0


if __name__ == "__main__":
    sys.exit(propagation_only() if "--propagation" in sys.argv[1:] else main())
