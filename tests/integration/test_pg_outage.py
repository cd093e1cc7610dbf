"""A PostgreSQL registry that goes away: the router keeps forwarding on the last known
route, says so once, says once when the server is back, and follows switches again; a
deploy in the middle aborts with one sentence, and the next reconcile settles it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import httpx
import pytest
from loadgen import LoadGen
from pgserver import PASSWORD, PgServer

from bgdeploy.registry.store import Registry
from bgdeploy.router import pg_watch
from bgdeploy.router.routes import RouteTable
from tests.conftest import REPO, REPORT, poll_until
from tests.integration.conftest import deploy, settle
from tests.integration.test_failpoints import check_invariants, reconcile_until_quiet

OUTAGE_S = 5.0


@pytest.fixture
def own_pg_server():
    """A server of this test's own: it is stopped and started again under load."""
    try:
        server = PgServer()
        server.start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no PostgreSQL server for the outage test: {e}")
    yield server
    server.destroy()


@pytest.mark.slow
def test_postgres_down_for_5s_under_load_loses_no_request(own_pg_server, stack):
    # own_pg_server first: it is torn down after the stack has stopped its boots.
    app, router = stack(registry_url=own_pg_server.new_database())
    first = deploy(app, "1.0")
    assert first.ok and router.route() == first.boot_id
    log_path = app.config.path.parent / "router.log"

    def log_lines(text: str) -> list[str]:
        return [line for line in log_path.read_text().splitlines() if text in line]

    load = LoadGen(router.url, clients=4, seconds=120).start()
    try:
        poll_until(lambda: load.stats.requests > 200, 20, what="load to start")
        own_pg_server.stop()
        down_at = time.monotonic()
        poll_until(lambda: log_lines("unreachable"), 15, what="the router to notice the outage")
        before = load.stats.requests
        # Stay down OUTAGE_S while the load goes on; the router must serve throughout.
        poll_until(
            lambda: time.monotonic() - down_at >= OUTAGE_S and load.stats.requests > before,
            OUTAGE_S + 10,
            interval=0.1,
            what="the outage to last its 5 s",
        )
        during = load.stats.requests - before
        own_pg_server.start()
        poll_until(lambda: log_lines("reachable again"), 20, what="the router to reconnect")
        # The route follows a switch made after the recovery (LISTEN again, not only polls).
        second = deploy(app, "2.0")
        assert second.ok
        poll_until(lambda: router.route() == second.boot_id, 10, what="the route to follow")
    finally:
        stats = load.stop()
    REPORT.append(
        f"postgresql down {OUTAGE_S:g} s under load: {stats.requests} requests "
        f"({during} during the outage), {stats.failures} failed"
    )
    assert stats.failures == 0, stats.errors
    assert during > 0 and first.boot_id in stats.boots and second.boot_id in stats.boots
    # Once each, not once per poll.
    assert len(log_lines("unreachable")) == 1, log_lines("unreachable")
    assert len(log_lines("reachable again")) == 1, log_lines("reachable again")
    assert len(log_lines("control loop pass failed")) <= 1  # its reconcile passes, likewise


@pytest.mark.slow
def test_server_gone_mid_deploy_aborts_cleanly_and_reconcile_settles(
    own_pg_server, stack, tmp_path
):
    app, router = stack(
        registry_url=own_pg_server.new_database(),
        flags=["--fail-health-file", str(tmp_path / "unhealthy-{version}")],
        startup=30,
    )
    first = deploy(app, "1.0")
    settle(app)
    (tmp_path / "unhealthy-2.0").touch()  # the candidate waits, unhealthy, until we say
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgdeploy", "--config", str(app.config.path), "deploy",
         "--version", "2.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        poll_until(
            lambda: app.registry.deployment(app.service).state == "starting",
            30,
            what="the deploy to start its candidate",
        )
        own_pg_server.stop()
        (tmp_path / "unhealthy-2.0").unlink()  # healthy now: the deploy must write next
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0].startswith("Error: Lost the registry at postgresql+psycopg://postgres:***@")
    assert PASSWORD not in out + err and "Traceback" not in err
    # Forwarding never stopped: the old boot still serves.
    resp = httpx.get(router.url + "/", timeout=5)
    assert resp.headers["x-bgdeploy-boot"] == first.boot_id

    own_pg_server.start()
    reconcile_until_quiet(app)
    row = app.registry.deployment(app.service)
    assert row.state == "idle" and row.generation == 2
    check_invariants(app, router)  # one active boot serving, no orphan, no lock left


def test_router_watcher_follows_a_switch_by_notify_alone(pg_server, monkeypatch):
    """With the fallback poll pushed out to 10 minutes, only the switch's NOTIFY can move
    the route."""
    monkeypatch.setattr(pg_watch, "SLOW_POLL_S", 600.0)
    url = pg_server.clean_database()
    reg = Registry(url)

    def switch_to(port: int) -> str:
        row = reg.deployment("default")
        if row.state == "switched":
            row = reg.transition("default", "finalize", generation=row.generation).row
        res = reg.transition("default", "begin", generation=row.generation, version=str(port))
        boot_id = res.row.candidate_boot_id
        reg.boot_records.assign_port(boot_id, (port, port), lambda p: True)
        reg.transition("default", "candidate_ready", generation=res.row.generation)
        assert reg.transition("default", "switch", generation=res.row.generation).applied
        return boot_id

    first = switch_to(40001)
    loop = asyncio.new_event_loop()
    table = RouteTable(loop, 10)
    watcher = pg_watch.PgRouteWatcher(url, "default", table)
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    task = asyncio.run_coroutine_threadsafe(watcher.run(), loop)
    try:
        poll_until(lambda: table.active and table.active.boot_id == first, 10, what="start")
        second = switch_to(40002)
        poll_until(
            lambda: table.active.boot_id == second and table.active.port == 40002,
            10,
            what="the route to follow the NOTIFY",
        )
    finally:
        task.cancel()
        poll_until(task.done, 10, what="the watcher to stop")
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=10)
        loop.close()
        reg.close()
