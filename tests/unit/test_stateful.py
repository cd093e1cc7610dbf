"""Stateful property test: actors with stale views interleave every event on one registry.

After every step: at most one active boot and it is the one the row names; switch and
rollback at most once per generation; the events replay into the row; a transition
applies only for an actor whose view was current; generation counts the begins.

It runs on a SQLite file and on the throw-away PostgreSQL server (fewer examples there:
each step is a few network round trips).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import select

from bgdeploy.errors import IllegalTransition
from bgdeploy.registry.models import Boot, Event
from bgdeploy.registry.store import Registry

ACTORS = 3
EVENTS = ["begin", "candidate_ready", "abort", "switch", "finalize", "rollback", "rollback_done"]
_TEMPLATE: Path | None = None


def template_db() -> Path:
    """One migrated registry, copied for each example (migrating each time is slow)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        folder = Path(tempfile.mkdtemp(prefix="bgdeploy-stateful-"))
        Registry(f"sqlite:///{folder / 'template.db'}").close()
        _TEMPLATE = folder / "template.db"
    return _TEMPLATE


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="bgdeploy-ex-"))
        self.reg = Registry(self.fresh_url())
        row = self.reg.deployment("default")
        self.views = [(row.generation, row.state)] * ACTORS
        self.applied: Counter[str] = Counter()

    def fresh_url(self) -> str:
        shutil.copy(template_db(), self.dir / "registry.db")
        return f"sqlite:///{self.dir / 'registry.db'}"

    def teardown(self) -> None:
        self.reg.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(actor=st.integers(0, ACTORS - 1))
    def observe(self, actor: int) -> None:
        row = self.reg.deployment("default")
        self.views[actor] = (row.generation, row.state)

    @rule(actor=st.integers(0, ACTORS - 1), event=st.sampled_from(EVENTS))
    def fire(self, actor: int, event: str) -> None:
        generation, state = self.views[actor]
        current = self.reg.deployment("default")
        fresh = (current.generation, current.state) == (generation, state)
        try:
            res = self.reg.transition(
                "default",
                event,
                generation=generation,
                state=state,
                reason=f"actor {actor}",
                version=f"v{actor}",
            )
        except IllegalTransition:
            assert fresh, "a stale actor must get a no-op, not an error"
            return
        if res.applied:
            assert fresh, "a transition applied for a stale view"
            self.applied[event] += 1
            self.views[actor] = (res.row.generation, res.row.state)
        else:
            assert not fresh
            assert res.row.generation == current.generation

    @rule(actor=st.integers(0, ACTORS - 1), ok=st.booleans())
    def health(self, actor: int, ok: bool) -> None:
        generation, _ = self.views[actor]
        before = self.reg.deployment("default")
        res = self.reg.record_health("default", generation, ok)
        assert res.applied == (before.state == "switched" and before.generation == generation)

    @invariant()
    def one_active_boot_named_by_the_row(self) -> None:
        row = self.reg.deployment("default")
        with self.reg.reading() as s:
            active = [b.boot_id for b in s.scalars(select(Boot).where(Boot.state == "active"))]
        assert active == ([row.active_boot_id] if row.active_boot_id else [])

    @invariant()
    def events_replay_into_the_row(self) -> None:
        row = self.reg.deployment("default")
        with self.reg.reading() as s:
            events = list(s.scalars(select(Event).order_by(Event.id)))
        state = "idle"
        for e in events:
            assert e.from_state == state
            state = e.to_state
        assert state == row.state
        per_gen = Counter(
            (e.generation, e.event) for e in events if e.event in ("switch", "rollback")
        )
        assert all(n == 1 for n in per_gen.values())
        assert Counter(e.event for e in events) == self.applied
        assert row.generation == self.applied["begin"]


TestRegistryMachine = RegistryMachine.TestCase
TestRegistryMachine.settings = settings(
    max_examples=200,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_registry_machine_on_postgresql(pg_server):
    class PgRegistryMachine(RegistryMachine):
        def fresh_url(self) -> str:
            return pg_server.clean_database()

    run_state_machine_as_test(
        PgRegistryMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.fixture(scope="module", autouse=True)
def _cleanup_template():
    yield
    if _TEMPLATE is not None:
        shutil.rmtree(_TEMPLATE.parent, ignore_errors=True)
