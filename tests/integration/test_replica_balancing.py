"""The router's side of replicas (issue 23): a boot of several processes, one port each.

Spawning replicas is the control plane's job; here a 2-replica boot is made by hand:
one boot deployed as usual, a second demo daemon process of the same boot on another
free port, and the registry's ``boots.ports`` set to both (what the control plane
writes). Real router, real processes, real loopback sockets; the demo daemon says
which process answered (its pid in the body).

The balancing test's requests take the daemon 5 ms (GET /slow?ms=5), as a real
daemon's do: least outstanding requests sends more to the replica that answers
sooner, and with answers of microseconds on this shared 2-core machine, which of two
equal processes is quicker is the scheduler's doing (shares of 25/75 were seen).
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import psutil
import pytest
from sqlalchemy import text

from tests.conftest import DEMO_DAEMON, REPORT, poll_until
from tests.integration.conftest import serve

crashload = pytest.importorskip("crashload")


class Replica:
    """A second process of a boot, started by hand on a free port of its port range."""

    def __init__(self, app, boot_id: str) -> None:  # noqa: ANN001 - App
        self.port = free_port_in(app, exclude={app.registry.boot(boot_id).port})
        self.log = open(app.config.path.parent / f"replica-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(DEMO_DAEMON),
                "--port",
                str(self.port),
                "--version",
                "1.0",
                "--boot-id",
                boot_id,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        poll_until(self._healthy, 30, interval=0.05, what="the second replica to listen")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the replica exited with {self.proc.returncode}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """kill -9, and wait until it is gone (reaped)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def free_port_in(app, exclude: set[int]) -> int:  # noqa: ANN001 - App
    low, high = app.config.daemon.port_range
    for port in range(high, low - 1, -1):  # from the top: the boots take the lowest
        if port in exclude:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port in the port range")


def set_ports(app, boot_id: str, ports: list[int] | None) -> None:  # noqa: ANN001 - App
    """What the control plane writes when replicas go in or out of rotation."""
    value = ",".join(str(p) for p in ports) if ports else None
    with app.registry.writing() as s:
        s.execute(
            text("UPDATE boots SET ports = :p WHERE boot_id = :b"), {"p": value, "b": boot_id}
        )
        app.registry.route_changed(s, app.service)


def pid_of(body: bytes) -> int:
    return json.loads(body)["pid"]


def answered_by(url: str, n: int, path: str = "/") -> Counter:
    """Pids of the processes that answered n sequential keep-alive GETs."""
    pids: Counter = Counter()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(n):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body
            pids[pid_of(body)] += 1
    finally:
        conn.close()
    return pids


def two_replicas(stack, **kw):  # noqa: ANN001, ANN201
    """A router in front of a boot of two processes: (app, router, boot id, first pid,
    the second Replica), once the router sends requests to both."""
    app, router, boot_id = serve(stack, **kw)
    boot = app.registry.boot(boot_id)
    second = Replica(app, boot_id)
    set_ports(app, boot_id, [boot.port, second.port])
    poll_until(
        lambda: second.proc.pid in answered_by(router.url, 20),
        20,
        interval=0.05,
        what="the router to send requests to the second replica",
    )
    return app, router, boot_id, boot.pid, second


def replicas_json(router, boot_id: str) -> dict:  # noqa: ANN001
    return httpx.get(f"{router.admin_url}/api/route", timeout=5).json()["replicas"][boot_id]


def metric(router, name: str, **labels: str) -> float:  # noqa: ANN001
    from prometheus_client.parser import text_string_to_metric_families

    page = httpx.get(f"{router.admin_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.mark.slow
def test_requests_are_balanced_over_two_replicas(stack):
    app, router, boot_id, first, second = two_replicas(stack, workers=2)
    try:
        before = replicas_json(router, boot_id)
        clients, each = 4, 300
        counts: list[Counter] = []
        errors: list[BaseException] = []

        def client() -> None:
            try:
                counts.append(answered_by(router.url, each, "/slow?ms=5"))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        pids = sum(counts, Counter())
        total = sum(pids.values())
        assert total == clients * each >= 1000
        assert set(pids) == {first, second.proc.pid}, pids
        shares = {pid: n / total for pid, n in pids.items()}
        REPORT.append(
            f"replicas: {total} GETs over 2 replicas (2 router workers): "
            f"{pids[first]} / {pids[second.proc.pid]} "
            f"({shares[first]:.0%} / {shares[second.proc.pid]:.0%}), 0 failed"
        )
        assert all(0.3 <= s <= 0.7 for s in shares.values()), shares

        # The per-replica figures, summed over the workers: /api/route and /metrics.
        boot = app.registry.boot(boot_id)

        def counted() -> dict:
            after = replicas_json(router, boot_id)
            return {
                port: after[str(port)]["requests"] - before.get(str(port), {}).get("requests", 0)
                for port in (boot.port, second.port)
            }

        poll_until(
            lambda: counted() == {boot.port: pids[first], second.port: pids[second.proc.pid]},
            10,
            what=f"the admin's per-replica counts {counted()} to match {pids}",
        )
        after = replicas_json(router, boot_id)
        for port in (boot.port, second.port):
            assert set(after[str(port)]) == {"requests", "upstream_errors", "outstanding"}
            assert after[str(port)]["upstream_errors"] == 0
            assert after[str(port)]["outstanding"] == 0
        assert metric(
            router, "bgdeploy_replica_requests_total", boot=boot_id, port=str(second.port)
        ) == float(after[str(second.port)]["requests"])
        # The figures of before stay: what the control plane and existing tests read.
        route = httpx.get(f"{router.admin_url}/api/route", timeout=5).json()
        assert route["boot_id"] == boot_id and route["requests_total"] >= total
    finally:
        second.stop()


@pytest.mark.slow
def test_kill_9_of_one_replica_under_load_fails_no_get(stack):
    app, router, boot_id, first, second = two_replicas(stack)
    host, port = router.url.removeprefix("http://").split(":")
    load = crashload.CrashLoad(host, int(port), gets=4, posts=2, seconds=60).start()
    try:
        poll_until(
            lambda: len([r for r in load.log if r.end is not None]) >= 200,
            30,
            what="load through both replicas",
        )
        second.kill()
        at = time.monotonic()
        errors_at = metric(
            router, "bgdeploy_replica_upstream_errors_total", boot=boot_id, port=str(second.port)
        )
        # Load goes on for a while after the kill: every request must be answered.
        poll_until(
            lambda: sum(1 for r in load.log if r.start > at and r.end is not None) >= 300,
            30,
            what="requests after the kill",
        )
        end = time.monotonic()
    finally:
        load.stop()
        second.stop()
    with load.lock:
        log = list(load.log)
    f = load.figures(at, boot_id, end)
    after = [r for r in log if r.start > at and r.end is not None and r.end <= end]
    posts_in_flight = sum(1 for r in log if r.method == "POST" and r.start <= at < (r.end or end))
    failed_posts = f.failed - f.failed_get
    slowest = max(r.end - r.start for r in after)
    REPORT.append(
        f"replicas: kill -9 of one of 2 replicas under keep-alive load: {len(after)} requests "
        f"after it, {f.in_flight} in flight at the kill, failed GET {f.failed_get}, "
        f"failed POST {failed_posts} (POSTs in flight {posts_in_flight}), "
        f"slowest after it {slowest * 1000:.0f} ms"
    )
    assert f.failed_get == 0, f.errors
    assert not [r for r in log if r.status == 503], "no request may be held then refused"
    assert failed_posts <= posts_in_flight, f.errors
    assert all(r.status == 200 for r in after), f.errors
    # New requests skip the dead replica at once: none waited for a replacement (a hold
    # lasts CRASH_HOLD_S, 1 s), and the router tried it at most about once a second.
    assert slowest < 1.0, slowest
    elapsed = end - at
    errors = metric(
        router, "bgdeploy_replica_upstream_errors_total", boot=boot_id, port=str(second.port)
    )
    assert errors - errors_at <= 2 * (elapsed + 1) + f.in_flight, (errors, errors_at, elapsed)
    # What the control plane reads: the live replica answers on; the dead one has none
    # outstanding.
    replicas = replicas_json(router, boot_id)
    assert replicas[str(second.port)]["outstanding"] == 0
    assert replicas[str(app.registry.boot(boot_id).port)]["upstream_errors"] == 0


@pytest.mark.slow
def test_a_port_out_of_rotation_gets_no_new_requests(stack):
    app, router, boot_id, first, second = two_replicas(stack)
    try:
        boot = app.registry.boot(boot_id)
        set_ports(app, boot_id, [boot.port])  # the second goes out of rotation
        poll_until(
            lambda: set(answered_by(router.url, 20)) == {first},
            20,
            interval=0.05,
            what="the router to follow the route",
        )
        served = replicas_json(router, boot_id)[str(second.port)]["requests"]
        pids = answered_by(router.url, 300)
        assert set(pids) == {first}, pids
        assert replicas_json(router, boot_id)[str(second.port)]["requests"] == served

        # Its pooled keep-alive connections were closed: the second process has none from
        # the router left.
        def router_connections() -> int:
            ours = 0
            for c in psutil.Process(second.proc.pid).net_connections(kind="tcp"):
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == second.port:
                    ours += 1
            return ours

        poll_until(
            lambda: router_connections() == 0,
            10,
            what="the router's idle connections to the second replica to close",
        )
        # Back in rotation: it takes requests again.
        set_ports(app, boot_id, [boot.port, second.port])
        poll_until(
            lambda: second.proc.pid in answered_by(router.url, 20),
            20,
            interval=0.05,
            what="the second replica back in rotation",
        )
        REPORT.append(
            f"replicas: a port out of rotation: 300 GETs, all to the other ({pids[first]}); "
            "its idle connections closed; back in rotation, it serves again"
        )
    finally:
        second.stop()
