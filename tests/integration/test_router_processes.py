"""The fixed endpoint never refuses: reloads, worker kills and a supervisor kill under load.

Load: keep-alive GETs and POST bodies (tools/loadgen.py), a probe that opens a
fresh connection for each request (so a refused connection shows), one long
SSE stream and one WebSocket opened before the first reload.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import threading
import time

import httpx
import psutil
import pytest
import websockets
from loadgen import LoadGen

from bgdeploy.control.router_api import running_router
from bgdeploy.routerd import reload
from tests.conftest import REPORT, poll_until, run_bgdeploy
from tests.integration.conftest import serve

RELOADS = 20
WORKER_KILLS = 5
DRAIN_TIMEOUT = 5.0  # tests/integration/conftest.py FAST


class Probe:
    """A new connection per request, all the time: counts refused and failed ones."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests = 0
        self.refused = 0
        self.failed: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while not self._stop.wait(0.01) and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.requests += 1
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:  # the router's own answers say why: keep it
                    why = body[:200].decode(errors="replace")
                    self.failed.append((time.monotonic(), f"HTTP {resp.status}: {why}"))
            except ConnectionRefusedError:
                self.refused += 1
            except (OSError, http.client.HTTPException) as e:
                self.failed.append((time.monotonic(), f"{type(e).__name__}: {e}"))
            finally:
                conn.close()


class SseReader:
    """Reads one SSE stream in a thread: the events, when and how it ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[int] = []
        self.ended_at: float | None = None
        self.error: str | None = None
        self.opened = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=30) as client, client.stream("GET", self.url) as resp:
                self.opened.set()
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:])["n"])
        except httpx.HTTPError as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.ended_at = time.monotonic()
            self.opened.set()


class WsPinger:
    """A WebSocket that echoes a message every 100 ms until the far side closes it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.echoes = 0
        self.last_echo = 0.0
        self.ended_at: float | None = None
        self.error: str | None = None
        self.opened = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True).start()

    async def _run(self) -> None:
        try:
            async with websockets.connect(self.url) as ws:
                self.opened.set()
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    await ws.send(f"ping {self.echoes}")
                    if (await ws.recv()).endswith(f"ping {self.echoes}"):
                        self.echoes += 1
                        self.last_echo = time.monotonic()
                    await asyncio.sleep(0.1)
        except websockets.ConnectionClosed as e:
            self.error = f"closed: {e}"
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.ended_at = time.monotonic()
            self.opened.set()


def router_info(admin_url: str) -> dict:
    return httpx.get(f"{admin_url}/api/router", timeout=10).json()


def serving_workers(admin_url: str) -> list[dict]:
    return [w for w in router_info(admin_url)["workers"] if not w["draining"]]


def failures(load: LoadGen) -> int:
    with load.stats.lock:
        return load.stats.failures


@pytest.mark.slow
def test_reloads_worker_kills_and_a_supervisor_kill_refuse_nothing(stack, tmp_path):
    app, router, boot_id = serve(stack, workers=2)
    port = app.config.router.port
    supervisor_pid = router.proc.pid
    load = LoadGen(router.url, clients=8, seconds=500).start()
    probe = Probe(port).start()
    try:
        sse = SseReader(f"{router.url}/sse")
        ws = WsPinger(f"ws://127.0.0.1:{port}/ws")
        assert sse.opened.wait(10) and ws.opened.wait(10)
        poll_until(lambda: len(sse.events) >= 2 and ws.echoes >= 2, 10, what="stream and ws")

        # 20 reloads: new workers each time, the old ones drain.
        first_reload = time.monotonic()
        short = None
        for i in range(RELOADS):
            if i == RELOADS // 2:
                short = SseReader(f"{router.url}/sse?count=20")  # ends on its own, mid-reloads
                assert short.opened.wait(10)
            answer = reload(app, wait=30)
            assert answer["ok"] and answer["supervisor"] == supervisor_pid
            assert sorted(w["pid"] for w in serving_workers(router.admin_url)) == sorted(
                answer["workers"]
            )
        reload_failures = failures(load)
        reload_probe_failed = len(probe.failed)

        # The stream and the WebSocket were on the first workers: they ran until that
        # worker's drain_timeout ended them, not before, and lost nothing on the way.
        poll_until(lambda: sse.ended_at and ws.ended_at, 30, what="the drain to end them")
        assert sse.ended_at - first_reload >= DRAIN_TIMEOUT - 0.5, sse.error
        assert sse.events == list(range(len(sse.events)))
        assert ws.last_echo - first_reload >= DRAIN_TIMEOUT - 1.0, ws.error
        poll_until(lambda: short.ended_at, 30, what="the short stream to end")
        assert short.events == list(range(20)) and short.error is None

        # Five workers killed with -9: each is replaced; only its own requests may fail.
        kill_bound = 0
        for _ in range(WORKER_KILLS):
            before = serving_workers(router.admin_url)
            victim = before[0]
            # Each open connection on it can lose the one request it has in flight, and the
            # probe's connection may have opened after this count was read.
            kill_bound += victim["connections"] + 1
            os.kill(victim["pid"], signal.SIGKILL)
            poll_until(
                lambda v=victim: (
                    len(ws := serving_workers(router.admin_url)) == 2
                    and v["pid"] not in {w["pid"] for w in ws}
                ),
                30,
                what="the supervisor to replace the killed worker",
            )
        kill_failures = failures(load) - reload_failures
        kill_probe_failed = len(probe.failed) - reload_probe_failed

        # The supervisor killed with -9: the workers serve on; `bgdeploy up` starts one
        # that takes the socket from a live worker and replaces the workers.
        old_workers = {w["pid"] for w in serving_workers(router.admin_url)}
        os.kill(supervisor_pid, signal.SIGKILL)
        router.proc.wait(10)
        orphaned_at = load.stats.requests
        poll_until(
            lambda: load.stats.requests > orphaned_at + 200, 20, what="load on orphaned workers"
        )
        up = run_bgdeploy("--config", str(app.config.path), "up", cwd=tmp_path, timeout=120)
        assert up.returncode == 0, up.stderr
        new_sup = running_router(app)
        assert new_sup is not None and new_sup.pid != supervisor_pid
        poll_until(
            lambda: not old_workers & {w["pid"] for w in router_info(router.admin_url)["workers"]},
            30,
            what="the orphaned workers to drain",
        )
        replaced_at = load.stats.requests
        poll_until(lambda: load.stats.requests > replaced_at + 200, 20, what="load on new workers")
    finally:
        probe.stop()
        stats = load.stop()
        again = running_router(app)
        if again is not None and again.pid != supervisor_pid:
            os.kill(again.pid, signal.SIGTERM)
            poll_until(lambda: running_router(app) is None, 30, what="the router to stop")
    supervisor_failures = stats.failures - reload_failures - kill_failures
    supervisor_probe_failed = len(probe.failed) - reload_probe_failed - kill_probe_failed
    REPORT.append(
        f"router processes: {stats.requests} keep-alive + {probe.requests} fresh-connection "
        f"requests; refused {probe.refused}; failed during {RELOADS} reloads "
        f"{reload_failures}+{reload_probe_failed}, during {WORKER_KILLS} worker kills "
        f"{kill_failures}+{kill_probe_failed} (bound {kill_bound}), during the supervisor "
        f"kill and up {supervisor_failures}+{supervisor_probe_failed}; SSE {len(sse.events)} "
        f"events and WebSocket {ws.echoes} echoes, ended by drain after "
        f"{sse.ended_at - first_reload:.1f}s / {ws.ended_at - first_reload:.1f}s"
    )
    assert probe.refused == 0
    assert reload_failures == 0 and reload_probe_failed == 0, stats.errors[:5] + probe.failed
    assert kill_failures + kill_probe_failed <= kill_bound, stats.errors
    assert supervisor_failures == 0 and supervisor_probe_failed == 0, stats.errors[-5:]
    assert not psutil.pid_exists(supervisor_pid) or (
        psutil.Process(supervisor_pid).status() == psutil.STATUS_ZOMBIE
    )
