"""The router's registry watcher sleeps while the registry is idle and wakes on a commit.

The slow belt-and-braces read is pushed out of the test's reach, so the route can
only follow the switch through the inotify wake-up on the registry's files; while
nothing is written, the watcher must not ask SQLite anything.
"""

from __future__ import annotations

import asyncio

from bgdeploy.registry.store import Registry
from bgdeploy.router import routes
from bgdeploy.router.routes import RegistryWatcher, RouteTable

SERVICE = "default"


def switch_to(registry, port: int) -> str:
    """One generation whose active boot listens on port (as tools/bench.py does)."""
    row = registry.deployment(SERVICE)
    res = registry.transition(SERVICE, "begin", generation=row.generation, version=f"p{port}")
    boot_id = res.row.candidate_boot_id
    registry.boot_records.assign_port(boot_id, (port, port), lambda p: True)
    registry.transition(SERVICE, "candidate_ready", generation=res.row.generation)
    registry.transition(SERVICE, "switch", generation=res.row.generation)
    registry.transition(SERVICE, "finalize", generation=res.row.generation)
    return boot_id


def test_an_idle_watcher_asks_nothing_and_a_commit_wakes_it(tmp_path, monkeypatch):
    # SQLite only: a PostgreSQL registry is followed by LISTEN/NOTIFY (router/pg_watch.py).
    registry = Registry(f"sqlite:///{tmp_path / 'state' / 'registry.db'}")
    monkeypatch.setattr(routes, "SLOW_POLL_S", 3600.0)
    first = switch_to(registry, 20001)

    async def scenario() -> tuple[list[str], str, str | None]:
        table = RouteTable(asyncio.get_running_loop(), max_connections=10)
        watcher = RegistryWatcher(registry, SERVICE, table)
        assert watcher.refresh().boot_id == first
        statements: list[str] = []
        watcher._conn.set_trace_callback(statements.append)
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.5)  # idle: nothing may be asked
        idle = list(statements)
        second = await asyncio.to_thread(switch_to, registry, 20002)
        for _ in range(500):  # bounded: up to 10 s
            if table.active is not None and table.active.boot_id == second:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        return idle, second, table.active.boot_id if table.active else None

    try:
        idle, second, followed = asyncio.run(scenario())
    finally:
        registry.close()
    assert idle == [], f"the idle watcher queried SQLite {len(idle)} times"
    assert followed == second, "the route did not follow the switch without a poll"
