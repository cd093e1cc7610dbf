"""Stateful property test: actors with stale views interleave every event on one registry.

After every step: at most one active boot and it is the one the row names; switch and
rollback at most once per generation; the events replay into the row; a transition
applies only for an actor whose view was current; generation counts the begins; every
workspace is bound to a boot that recorded a successful attach for it (invariant 4).
Boots are sets of 2 replicas (daemon.replicas = 2) whose replicas exit, come back and
leave: a boot's rotation (``boots.ports``) is exactly its serving replicas' ports, and
no two live processes of live boots hold one port.

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
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from bgdeploy.errors import BootError, IllegalTransition
from bgdeploy.registry.models import Boot, Event, Replica
from bgdeploy.registry.replicas import SERVING, STOPPED
from bgdeploy.registry.store import Registry
from tests.conftest import attached_by

# Its 200 examples take a minute or two on a shared 2-core machine.
pytestmark = pytest.mark.timeout(400)

ACTORS = 3
WORKSPACES = ["ws-a", "ws-b"]
# The events that move a deployment on from each state (so that examples reach far:
# `fire` covers the aborts and every illegal event).
FORWARD = {
    "idle": ["begin"],
    "starting": ["candidate_ready"],
    "ready": ["switch"],
    "switched": ["finalize", "rollback"],
    "rolling_back": ["rollback_done"],
}
EVENTS = ["begin", "candidate_ready", "abort", "switch", "finalize", "rollback", "rollback_done"]
REPLICAS = 2
PORTS = (20000, 20011)  # few enough that ports are reused once their boots are gone
ROLES = ["active", "candidate", "old"]
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
        self.refused = 0

    def fresh_url(self) -> str:
        shutil.copy(template_db(), self.dir / "registry.db")
        return f"sqlite:///{self.dir / 'registry.db'}"

    def teardown(self) -> None:
        self.reg.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(deployed=st.booleans())
    def first_deploy(self, deployed: bool) -> None:
        """Half the examples start with generation 1 switched and a workspace bound to it,
        so that the later switches and rollbacks have bindings to move."""
        if deployed:
            for _ in ("begin", "candidate_ready", "switch"):
                self.forward(0, 0)
            self.attach("ws-a", "active")

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
            if event == "begin":
                self.start_set("candidate")  # its deploy spawns the set at once
        elif res.unattached:
            assert fresh and event in ("switch", "rollback")
            self.refused += 1
        else:
            assert not fresh
            assert res.row.generation == current.generation

    @rule(actor=st.integers(0, ACTORS - 1), choice=st.integers(0, 1))
    def forward(self, actor: int, choice: int) -> None:
        """An actor with a current view moves the deployment on."""
        self.observe(actor)
        options = FORWARD[self.views[actor][1]]
        self.fire(actor, options[choice % len(options)])

    @rule(actor=st.integers(0, ACTORS - 1), ok=st.booleans())
    def health(self, actor: int, ok: bool) -> None:
        generation, _ = self.views[actor]
        before = self.reg.deployment("default")
        res = self.reg.record_health("default", generation, ok)
        assert res.applied == (before.state == "switched" and before.generation == generation)

    @rule(workspace=st.sampled_from(WORKSPACES), role=st.sampled_from(["active", "stale"]))
    def attach(self, workspace: str, role: str) -> None:
        """`bgdeploy attach`: the attach call to the active boot as read (or, for a stale
        reader, to the old boot) succeeded; the binding follows only if it is still active."""
        row = self.reg.deployment("default")
        boot_id = row.active_boot_id if role == "active" else row.old_boot_id
        if boot_id is None:
            return
        bound = self.reg.workspaces.bind("default", workspace, boot_id)
        assert bound == (boot_id == row.active_boot_id)

    @rule(workspace=st.sampled_from(WORKSPACES), to=st.sampled_from(["candidate", "old"]))
    def target_attaches(self, workspace: str, to: str) -> None:
        """A deploy attaching to its candidate, or a rollback to the old boot."""
        row = self.reg.deployment("default")
        boot_id = row.candidate_boot_id if to == "candidate" else row.old_boot_id
        if boot_id is not None:
            self.reg.workspaces.record_attach(boot_id, workspace)

    def _boot_of(self, role: str) -> str | None:
        row = self.reg.deployment("default")
        return {
            "active": row.active_boot_id,
            "candidate": row.candidate_boot_id,
            "old": row.old_boot_id,
        }[role]

    @rule(role=st.sampled_from(ROLES))
    def start_set(self, role: str) -> None:
        """The boot's replicas start (as BootProcesses.spawn does: a row, then a port)."""
        boot_id = self._boot_of(role)
        reps = self.reg.replicas
        if boot_id is None or reps.rows(boot_id):
            return
        for n in range(REPLICAS):
            reps.add(boot_id, n)
            try:
                reps.assign_port(boot_id, n, PORTS, lambda port: True)
            except BootError:
                return  # every port is held by live boots: the deploy would fail here
        reps.set_count(boot_id, REPLICAS)

    @rule(
        role=st.sampled_from(ROLES),
        n=st.integers(0, REPLICAS - 1),
        what=st.sampled_from(["healthy", "exit", "fail", "restart", "scaled_away"]),
    )
    def replica(self, role: str, n: int, what: str) -> None:
        boot_id = self._boot_of(role)
        reps = self.reg.replicas
        if boot_id is None or reps.get(boot_id, n) is None:
            return
        if what == "healthy":
            reps.into_rotation(boot_id, n)
        elif what == "exit":
            reps.exited(boot_id, n, 1, crash_window=10.0, backoff=lambda exits: 0.5 * exits)
        elif what == "fail":
            reps.out_of_rotation(boot_id, n)
        elif what == "restart":
            before = reps.get(boot_id, n)
            assert before is not None
            if before.state != "out":
                return  # the tending starts again only a replica out of rotation
            try:
                reps.assign_port(boot_id, n, PORTS, lambda port: True, prefer=before.port)
            except BootError:
                return
            reps.update(boot_id, n, state="starting")
        else:
            reps.out_of_rotation(boot_id, n, STOPPED)

    @invariant()
    def rotation_is_the_serving_replicas(self) -> None:
        with self.reg.reading() as s:
            for boot in s.scalars(select(Boot)):
                rows = list(s.scalars(select(Replica).where(Replica.boot_id == boot.boot_id)))
                if not rows:
                    assert boot.ports is None
                    continue
                ports = [int(p) for p in boot.ports.split(",")] if boot.ports else []
                assert len(ports) == len(set(ports)), boot.ports
                serving = {r.port for r in rows if r.state == SERVING}
                assert set(ports) == serving, (boot.boot_id, boot.ports, serving)
                zero = next((r for r in rows if r.replica == 0), None)
                assert zero is None or zero.port == boot.port  # replica 0 is mirrored

    @invariant()
    def no_port_held_twice(self) -> None:
        live = ("starting", "healthy", "active", "standby", "draining")
        with self.reg.reading() as s:
            held: list[int] = []
            for boot in s.scalars(select(Boot).where(Boot.state.in_(live))):
                rows = list(s.scalars(select(Replica).where(Replica.boot_id == boot.boot_id)))
                if rows:
                    held += [r.port for r in rows if r.state != STOPPED and r.port is not None]
                elif boot.port is not None:
                    held.append(boot.port)
            assert len(held) == len(set(held)), sorted(held)

    @invariant()
    def workspaces_bound_only_where_attached(self) -> None:
        ws = self.reg.workspaces
        for workspace, boot_id in ws.bindings("default").items():
            assert workspace in attached_by(self.reg, boot_id), (workspace, boot_id)

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
