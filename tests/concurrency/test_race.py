"""8 OS processes x 50 rounds race begin/switch/rollback/abort on one registry: a SQLite
file, and a database on the throw-away PostgreSQL server."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from bgdeploy.registry.models import Boot, Event
from bgdeploy.registry.store import Registry
from tests.conftest import REPORT, run_together

WORKERS = 8
ROUNDS = 50


@pytest.mark.slow
def test_racing_processes_never_double_switch_or_lose_updates(tmp_path, registry_url):
    url = registry_url
    Registry(url).close()  # migrated before the race; the race is about transitions
    go = tmp_path / "go"
    worker = Path(__file__).with_name("race_worker.py")
    argvs = [[url, str(ROUNDS), str(seed), str(go)] for seed in range(WORKERS)]
    outputs = run_together(worker, argvs, go, timeout=300)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    # Each worker times its own rounds (after the go file), so start-up is not counted.
    race_s = max(r["seconds"] for r in results)

    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]  # no "database is locked", no illegal transition
    applied = Counter()
    for r in results:
        applied.update(r["applied"])

    reg = Registry(url)
    with reg.reading() as s:
        events = list(s.scalars(select(Event).order_by(Event.id)))
        active = list(s.scalars(select(Boot).where(Boot.state == "active")))
    row = reg.deployment("default")
    reg.close()

    # Zero lost updates: every transition a caller saw applied is in the events, and no more.
    assert Counter(e.event for e in events) == applied
    assert sum(applied.values()) > WORKERS * ROUNDS // 10  # the race made real progress
    # Zero double switches or rollbacks (of which there were some, or this checks nothing).
    assert applied["switch"] > 0 and applied["rollback"] > 0, applied
    per_gen = Counter((e.generation, e.event) for e in events)
    assert all(n == 1 for (g, ev), n in per_gen.items() if ev in ("switch", "rollback"))
    # The events replay into the final row: a chain of states with no gap.
    state = "idle"
    for e in events:
        assert e.from_state == state, (
            f"event {e.id} {e.event} from {e.from_state}, chain at {state}"
        )
        state = e.to_state
    assert row.state == state
    assert row.generation == applied["begin"] == max(e.generation for e in events)
    # Exactly one active boot, and it is the one the row names.
    assert [b.boot_id for b in active] == ([row.active_boot_id] if row.active_boot_id else [])
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    REPORT.append(
        f"race ({dialect}): {WORKERS} processes x {ROUNDS} rounds in {race_s:.1f} s, "
        f"{sum(applied.values())} transitions applied, 0 double switches, 0 lost updates"
    )
