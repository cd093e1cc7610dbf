#!/usr/bin/env python3
"""The router as a user runs it (issue 22), against the proxies a user would compare it to.

`bgdeploy up` with the default settings (health checks every second, one router
worker, the control loop on) in a temporary state folder, its daemon an nginx
(1 worker, a 100-byte answer on ``{port}``) that bgdeploy starts and deploys
(`bgdeploy up`, then `bgdeploy deploy` of a second version, finalized); the router
on a free port. Against, in the same run: an nginx reverse proxy (1 worker,
upstream keep-alive) and HAProxy (nbthread 1) in front of an identical nginx, the
byte relay (tools/relay_reference.py), the router's pure-Python build
(BGDEPLOY_NO_EXTENSIONS=1 for the `bgdeploy up` processes) and the compiled router
with ``--no-control`` (`bgdeploy up --foreground --no-control`, then `bgdeploy
deploy`: no health checks, no reconcile passes). wrk -t1 and -t2 at 16 and 64
connections, the targets alternated in each of BENCH_ROUNDS rounds (default 5) of
BENCH_DURATION (3s); each figure the median over the rounds, each ratio to nginx the
median of the ratios within a round (bench_common.paired). CPU per request: user + system
time of the proxy's processes (the router's supervisor and workers, never its
daemon), psutil, us per request.

After the table: what each router's worker was asked per second besides forwarding
(control requests by command, registry change checks and route reads) and its
supervisor's CPU, over the whole measurement.

``--stall``: the routers only, each measured without and with a silent client of its
worker's control socket (connected, saying nothing; connected again whenever the
worker drops it), alternated: p99 and max latency before and after it connects.

Usage: bench_user.py [--stall]. Loopback only; every load run is bounded by wrk's -d.
``nginx-daemon PORT FOLDER`` is the daemon command bgdeploy runs (it execs nginx).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from bench_common import DURATION, REPO, free_port, free_port_block, paired, wait_port, wrk
from bench_peers import nginx_bin, nginx_proxies, start_haproxy, start_nginx, write_nginx_conf

BODY = "x" * 99 + "\n"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
LOADS = ((1, 16), (1, 64), (2, 16), (2, 64))  # (wrk threads, connections)
CLI_TIMEOUT_S = 120


def answer_server(port: int) -> str:
    return f'server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY}"; }} }}'


def nginx_daemon(port: int, folder: Path) -> None:
    """The daemon bgdeploy starts: nginx, 1 worker, BODY on every path (so /healthz too)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_nginx_conf(folder, answer_server(port))
    nginx = nginx_bin()
    os.execv(nginx, [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf")])


class UserRouter:
    """A bgdeploy state folder, its config, and the router a user starts on it."""

    def __init__(self, work: Path, name: str, env: dict[str, str], control: bool = True):
        self.dir = work / name
        self.dir.mkdir()
        self.env = {**os.environ, **env}
        self.control = control
        self.port, self.admin = free_port(), free_port()
        low, high = free_port_block(20)
        me = Path(__file__).resolve()
        boots = f"{self.dir}/boots/{{boot_id}}"
        command = [sys.executable, str(me), "nginx-daemon", "{port}", boots]
        (self.dir / "VERSION").write_text("1\n")
        self.config = self.dir / "bgdeploy.toml"
        self.config.write_text(
            f"[router]\nport = {self.port}\nadmin_port = {self.admin}\n"
            f"[daemon]\ncommand = {json.dumps(command)}\n"
            f'version_file = "VERSION"\nport_range = [{low}, {high}]\n'
        )
        self.foreground: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "bgdeploy", "--config", str(self.config), *args]
        done = subprocess.run(
            cmd, env=self.env, cwd=self.dir, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
        if done.returncode != 0:
            why = done.stdout + done.stderr
            raise SystemExit(f"bench: `bgdeploy {' '.join(args)}` failed:\n{why}")
        return done.stdout

    def start(self) -> None:
        if self.control:
            self.cli("up")  # the router, and a deploy of version 1
            (self.dir / "VERSION").write_text("2\n")
            self.cli("deploy")  # blue/green to version 2; finalized by the control loop
        else:
            log = open(self.dir / "router-foreground.log", "wb")  # noqa: SIM115 - the child's
            self.foreground = subprocess.Popen(
                [sys.executable, "-m", "bgdeploy", "--config", str(self.config)]
                + ["up", "--foreground", "--no-control"],
                env=self.env,
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            wait_port(self.port)
            self.cli("deploy")  # nothing finalizes it: no control loop
        self.wait_steady()

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json"))

    def router_info(self) -> dict:
        url = f"http://127.0.0.1:{self.admin}/api/router"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def wait_steady(self, timeout: float = 90.0) -> None:
        """Until the router answers from the active boot and (control on) the deploy is
        finalized: after its stable checks and a traffic verdict, so some traffic is sent
        (analysis.min_requests, 20 by default)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            boots = set()
            for _ in range(30):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as r:
                    boots.add(r.headers.get("X-Bgdeploy-Boot"))
            settled = st["state"] == "idle" or not self.control
            if st["active"] and boots == {st["active"]["boot_id"]} and settled:
                return
            time.sleep(0.5)
        raise SystemExit(f"bench: {self.dir.name} did not settle in {timeout:.0f}s")

    def pids(self) -> list[int]:
        """The router's processes: its supervisor and its workers (not the daemon)."""
        info = self.router_info()
        return [info["pid"], *(w["pid"] for w in info["workers"])]

    def worker_address(self) -> str:
        from bgdeploy.config import load_config
        from bgdeploy.router import ipc

        (worker,) = [w for w in self.router_info()["workers"] if not w["draining"]]
        return ipc.worker_address(ipc.namespace(load_config(self.config).state_dir), worker["pid"])

    def asked(self) -> dict[str, float]:
        """The worker's counts of what it was asked besides forwarding, and the supervisor's
        CPU seconds (this call is one stats request itself)."""
        info = self.router_info()
        counts: dict[str, float] = {"supervisor_cpu": sum(cpu([info["pid"]]))}
        for w in info["workers"]:
            for cmd, n in (w.get("control_requests") or {}).items():
                counts[cmd] = counts.get(cmd, 0) + n
            for key in ("registry_checks", "registry_reads"):
                if w.get(key) is not None:
                    counts[key] = counts.get(key, 0) + w[key]
        return counts

    def build(self) -> str:
        return ",".join(sorted({str(w.get("build")) for w in self.router_info()["workers"]}))

    def stop(self) -> None:
        try:
            self.cli("down")
        finally:
            if self.foreground is not None:
                if self.foreground.poll() is None:
                    self.foreground.send_signal(signal.SIGTERM)
                self.foreground.wait(timeout=30)


class SilentClient:
    """One client of a worker's control socket that connects and says nothing, connected
    again whenever the worker drops it: a thread, until stop() (at most MAX_CONNECTS)."""

    MAX_CONNECTS = 10_000

    def __init__(self, address: str) -> None:
        self.address = address
        self.connects = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SilentClient:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stopping.is_set() and self.connects < self.MAX_CONNECTS:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.1)
                try:
                    sock.connect(self.address)
                except OSError:
                    self.stopping.wait(0.1)
                    continue
                self.connects += 1
                while not self.stopping.is_set():
                    try:
                        if sock.recv(1) == b"":
                            break  # dropped by the worker: connect again
                    except TimeoutError:
                        continue
                    except OSError:
                        break


def timeouts(r: dict) -> int:
    """wrk's requests with no answer within its 2 s (absent from its latency figures)."""
    m = re.search(r"timeout (\d+)", r["socket_errors"])
    return int(m.group(1)) if m else 0


def stall(routers: list[tuple[str, UserRouter]]) -> None:
    """Each router without and with a silent control client, alternated, per load."""
    print(
        f"\na silent client of the worker's control socket (connected again whenever dropped), "
        f"wrk -d{DURATION}, median of {ROUNDS} alternated runs; each column: without > with it"
    )
    print(
        f"{'wrk':>6}  {'router':<20} {'req/s':>15} {'p99 ms':>17} {'max ms':>17} "
        f"{'wrk timeouts':>13}  silent connects"
    )
    for threads, conns in LOADS:
        runs: dict[str, list[list[dict]]] = {name: [[], []] for name, _ in routers}
        connects = dict.fromkeys(runs, 0)
        for _ in range(ROUNDS):
            for name, router in routers:
                runs[name][0].append(wrk(router.port, conns, threads=threads))
                with SilentClient(router.worker_address()) as silent:
                    runs[name][1].append(wrk(router.port, conns, threads=threads))
                connects[name] += silent.connects
        for name, (quiet, stalled) in runs.items():
            a, b = median(quiet), median(stalled)
            print(
                f"{f't{threads} c{conns}':>6}  {name:<20} {a['rps']:>7.0f}>{b['rps']:<7.0f} "
                f"{a['p99']:>8.2f}>{b['p99']:<8.2f} {a['max']:>8.1f}>{b['max']:<8.1f} "
                f"{timeouts(a):>6}>{timeouts(b):<6}  {connects[name]}"
            )


def cpu(pids: list[int]) -> tuple[float, float]:
    user = system = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        user, system = user + t.user, system + t.system
    return user, system


def with_children(pid: int) -> list[int]:
    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


def run(port: int, pids: list[int], threads: int, conns: int) -> dict:
    """One wrk run, and the CPU the listed processes spent per request."""
    before = cpu(pids)
    r = wrk(port, conns, threads=threads)
    after = cpu(pids)
    n = max(1, r["count"])
    r["user_us"] = (after[0] - before[0]) / n * 1e6
    r["sys_us"] = (after[1] - before[1]) / n * 1e6
    return r


def median(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["rps"])
    result = dict(ordered[len(ordered) // 2])
    result["spread"] = f"{ordered[0]['rps']:.0f}-{ordered[-1]['rps']:.0f}"
    return result


def measure(targets: list[tuple[str, int, list[int]]]) -> dict[tuple[int, int], list[dict]]:
    """Per load, each target's runs summed up against nginx's (bench_common.paired); the
    targets alternated within each round."""
    out = {}
    for threads, conns in LOADS:
        runs: list[list[dict]] = [[] for _ in targets]
        for _ in range(ROUNDS):
            for i, (_name, port, pids) in enumerate(targets):
                runs[i].append(run(port, pids, threads, conns))
        out[threads, conns] = paired(runs)
    return out


def table(names: list[str], results: dict[tuple[int, int], list[dict]]) -> None:
    print(
        f"{'wrk':>6}  {'proxy':<20} {'req/s':>7} {'/nginx':>6} {'p99 ms':>7} {'/nginx':>6} "
        f"{'max ms':>7}  {'cpu us/req u+s':>14} {'/nginx':>6}  {'ratio runs':>9}  runs req/s"
    )
    for (threads, conns), rows in results.items():
        for name, r in zip(names, rows, strict=True):
            print(
                f"{f't{threads} c{conns}':>6}  {name:<20} {r['rps']:>7.0f} "
                f"{r['rps_ratio']:>6.2f} {r['p99']:>7.2f} {r['p99_ratio']:>6.2f} "
                f"{r['max']:>7.1f}  {r['user_us']:>6.1f}+{r['sys_us']:<6.1f} "
                f"{r['cpu_ratio']:>7.2f}  {r['ratio_spread']:>9}  {r['spread']}"
            )


def asked_table(routers: list[tuple[str, UserRouter]], before: dict, after: dict) -> None:
    print(
        "\nwhat each router's worker was asked per second besides forwarding, over the "
        "whole measurement (under load a sixth of it), and its supervisor's CPU"
    )
    for name, _router in routers:
        (t0, a), (t1, b) = before[name], after[name]
        rate = {k: (b.get(k, 0) - a.get(k, 0)) / (t1 - t0) for k in b if k != "supervisor_cpu"}
        if "stats" in rate:
            rate["stats"] -= 1 / (t1 - t0)  # our own question
        sup = (b["supervisor_cpu"] - a["supervisor_cpu"]) / (t1 - t0) * 100
        said = ", ".join(f"{k} {v:.2f}/s" for k, v in sorted(rate.items()))
        said = said or "no counts (an older worker)"
        print(f"  {name:<20} {said}; supervisor {sup:.1f}% of a core")


def main(argv: list[str]) -> int:
    if argv[:1] == ["nginx-daemon"]:
        nginx_daemon(int(argv[1]), Path(argv[2]))
        return 0
    stalling = "--stall" in argv
    procs: list[subprocess.Popen[bytes]] = []
    routers: list[UserRouter] = []
    with tempfile.TemporaryDirectory(prefix="bgdeploy-bench-user-") as tmp:
        work = Path(tmp)
        try:
            backend, nginx_port, haproxy_port, relay_port = (free_port() for _ in range(4))
            procs.append(start_nginx(work, "backend", answer_server(backend)))
            wait_port(backend)
            proxy = start_nginx(work, "proxy", nginx_proxies([(nginx_port, backend)]))
            haproxy = start_haproxy(work, [(haproxy_port, backend)])
            relay = subprocess.Popen(  # quiet: it logs each connection wrk cuts at the end
                [sys.executable, str(REPO / "tools" / "relay_reference.py"), str(backend)]
                + [str(relay_port)],
                stderr=subprocess.DEVNULL,
            )
            procs += [proxy, haproxy, relay]
            for port in (nginx_port, haproxy_port, relay_port):
                wait_port(port)
            targets = [
                ("nginx", nginx_port, with_children(proxy.pid)),
                ("haproxy", haproxy_port, [haproxy.pid]),
                ("byte relay", relay_port, [relay.pid]),
            ]
            shapes = (
                ("router compiled", {}, True, "compiled"),
                ("router pure-python", {"BGDEPLOY_NO_EXTENSIONS": "1"}, True, "pure-python"),
                ("router --no-control", {}, False, "compiled"),
            )
            for i, (name, env, control, build) in enumerate(shapes):
                router = UserRouter(work, f"router-{i}", env, control)
                routers.append(router)
                router.start()
                runs = router.build()
                label = name if runs == build else f"{name} [{runs}]"  # no compiler here
                targets.append((label, router.port, router.pids()))
            named = [(t[0], r) for t, r in zip(targets[3:], routers, strict=True)]
            if stalling:
                stall(named)
                return 0
            before = {name: (time.monotonic(), r.asked()) for name, r in named}
            results = measure(targets)
            after = {name: (time.monotonic(), r.asked()) for name, r in named}
        finally:
            for r in routers:
                try:
                    r.stop()
                except (SystemExit, subprocess.TimeoutExpired) as e:
                    print(f"bench: stopping {r.dir.name}: {e}", file=sys.stderr)
            for p in procs:
                p.terminate()
                p.wait(timeout=10)
    print(
        f"\nthe router as a user runs it (`bgdeploy up`, defaults: health checks every 1 s, "
        f"1 worker, control loop on) and peers, each in front of an nginx (1 worker, 100-byte "
        f"answer); keep-alive GET, wrk -d{DURATION}, {ROUNDS} rounds, the proxies alternated in "
        "each; each figure the median over the rounds, each ratio to nginx the median of the "
        "ratios within a round; ratio runs: the req/s ratio's range over the rounds; cpu: "
        "the proxy's processes (router: supervisor + workers)"
    )
    table([name for name, _, _ in targets], results)
    asked_table(named, before, after)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
