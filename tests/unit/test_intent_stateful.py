"""Stateful property test of operator intent: random sequences of operator commands
(deploy, deploy --version [--force], deploy --canary, rollback, down, up, reconcile,
unpin), version-file changes, daemon kills, control-loop ticks, canary steps running out
and disk-full windows.

It drives the real decision function (``control.decide``) over the real intent
store (a real registry: SQLite, and the throw-away PostgreSQL server) with a fake
process table: daemons "start" instantly, a version in BAD fails its health checks
after the switch. That finds more than real processes here: thousands of steps a
run, where a real deploy takes a second. Operator commands record their intent
through the same functions the CLI uses (``control.operator``); ticks act on the
decision as the reconcile pass does.

After every step it checks the rules of the intent issue:
- a quarantined version is never started, except by ``deploy --version V --force``;
- a heal restarts the version that was running (unless quarantined);
- after ``down`` nothing is started until ``up`` or a deploy;
- a pin or an operator rollback holds until a new installed version (not
  quarantined) ends it, or a later operator command;
- a command that fails under a full disk changes no intent (all or nothing);
- one active daemon at most; a canary is a candidate with a share, never a second
  active, and a version in BAD never gets past its canary's first verdict.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as hyp_event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import event

from bgdeploy.config import load_config
from bgdeploy.control import operator
from bgdeploy.control.app import App
from bgdeploy.control.decide import Act, BootSeen, CanarySeen, World, decide
from bgdeploy.control.router_ctl import start_version
from bgdeploy.errors import BgdeployError
from bgdeploy.registry.intent import DOWN, INSTALLED, UP
from bgdeploy.registry.store import Registry

pytestmark = pytest.mark.timeout(400)

VERSIONS = ["1.0", "2.0", "3.0", "4.0"]
BAD = {"3.0"}  # healthy at start, failing after the switch: rolled back and quarantined
_TEMPLATE: Path | None = None


def template_db() -> Path:
    global _TEMPLATE
    if _TEMPLATE is None:
        folder = Path(tempfile.mkdtemp(prefix="bgdeploy-intent-"))
        Registry(f"sqlite:///{folder / 'template.db'}").close()
        _TEMPLATE = folder / "template.db"
    return _TEMPLATE


@dataclass
class Daemon:
    boot_id: str
    version: str
    alive: bool = True

    def seen(self) -> BootSeen:
        return BootSeen(self.boot_id, self.version, self.alive)


# Rows of another service fill the free room left in the pages of the tables the intent
# writes: the decision reads only its own service's rows.
FILLERS = [
    ("INSERT INTO test_filler VALUES (zeroblob(?))", lambda i, n: (n,)),
    (
        "INSERT INTO events (service, generation, event, reason, ts) "
        "VALUES ('filler', 0, 'filler', zeroblob(?), '2026-01-01')",
        lambda i, n: (n,),
    ),
    (
        "INSERT INTO quarantine (service, version, generation, reason, ts) "
        "VALUES ('filler', ?, 0, zeroblob(?), '2026-01-01')",
        lambda i, n: (f"{n}-{i}", n),
    ),
    (
        "INSERT INTO intents (service, run, mode, reason) VALUES (?, 'up', 'installed', "
        "zeroblob(?))",
        lambda i, n: (f"filler-{n}-{i}", n),
    ),
]


def fill(db: sqlite3.Connection) -> None:
    """Fill every page up to max_page_count, largest rows first, until SQLITE_FULL."""
    for sql, args in FILLERS:
        for size in (4096, 1024, 256, 64, 16, 1):
            i = 0
            try:
                while True:
                    i += 1
                    db.execute(sql, args(i, size))
            except sqlite3.OperationalError:
                pass


class IntentMachine(RuleBasedStateMachine):
    pg_url: str | None = None  # set by the PostgreSQL variant

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="bgdeploy-intent-ex-"))
        if self.pg_url is None:
            shutil.copy(template_db(), self.folder / "registry.db")
            url = f"sqlite:///{self.folder / 'registry.db'}"
        else:
            url = self.pg_url
        (self.folder / "bgdeploy.toml").write_text(
            f'[registry]\nurl = "{url}"\n[daemon]\ncommand = ["true"]\nversion_file = "VERSION"\n'
        )
        self.set_installed("1.0")
        self.app = App(load_config(self.folder / "bgdeploy.toml"))
        self.reg = self.app.registry
        self.svc = self.app.service
        self.full = False
        self._page_limit(False)
        self.n = 0
        self.state = "idle"  # idle, ready (a canary) or switched (deploys are instant)
        self.active: Daemon | None = None
        self.candidate: Daemon | None = None  # a canary's held candidate
        self.canary: CanarySeen | None = None
        self.old: Daemon | None = None
        self.started: list[tuple[str, str]] = []  # (version, who) of this step
        self.ran: list[str] = []  # every version started, in order

    def teardown(self) -> None:
        self.app.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the fake world ------------------------------------------------------------------

    def set_installed(self, version: str) -> None:
        (self.folder / "VERSION").write_text(version + "\n")
        self.installed = version

    def world(self, *, deploy_if_none: bool = True) -> World:
        return World(
            intent=self.reg.intents.read(self.svc),
            state=self.state,
            generation=self.n,
            active=self.active.seen() if self.active else None,
            old=self.old.seen() if self.old else None,
            installed=self.installed,
            quarantined={q.version: q.reason for q in self.reg.intents.quarantine(self.svc)},
            deploy_if_none=deploy_if_none,
            held=self.candidate is not None,
            candidate=self.candidate.seen() if self.candidate else None,
            canary=self.canary,
        )

    def start(self, version: str, who: str) -> None:
        """A deploy: the candidate is healthy at once and takes the route. Nothing starts
        a quarantined version (`deploy --force` lifts the quarantine first)."""
        assert version not in self.quarantined(), f"{who} started quarantined {version}"
        self._drop_canary()  # a new deploy drops a held candidate first
        self.ran.append(version)
        self.n += 1
        self.started.append((version, who))
        if self.active is not None and self.active.alive:
            self.old = self.active
            self.state = "switched"
        self.active = Daemon(f"b{self.n}", version)

    def _drop_canary(self) -> None:
        if self.candidate is not None:
            self.candidate.alive = False
        self.candidate, self.canary = None, None
        if self.state == "ready":
            self.state = "idle"

    def quarantined(self) -> set[str]:
        return set(self.reg.quarantined_versions(self.svc))

    def _page_limit(self, full: bool) -> None:
        """A full disk for SQLite, for real: no page beyond those the file has, and their
        free space filled (so a write that needs room fails with SQLITE_FULL, "database or
        disk is full"). PostgreSQL has no such switch, so it runs without."""
        engine = self.reg.engine if hasattr(self, "reg") else None
        if engine is None or engine.dialect.name != "sqlite":
            return
        engine.dispose()
        if getattr(self, "_limit", None) is not None:
            event.remove(engine, "connect", self._limit)
            self._limit = None
        path = self.folder / "registry.db"
        with sqlite3.connect(path, isolation_level=None) as db:
            db.execute("CREATE TABLE IF NOT EXISTS test_filler (b BLOB)")
            db.execute("DELETE FROM test_filler")
            db.execute("DELETE FROM events WHERE service = 'filler'")
            db.execute("DELETE FROM quarantine WHERE service = 'filler'")
            db.execute("DELETE FROM intents WHERE service LIKE 'filler-%'")
            if not full:
                return
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")
            fill(db)

        @event.listens_for(engine, "connect")
        def limit(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            pages = cur.execute("PRAGMA page_count").fetchone()[0]
            cur.execute(f"PRAGMA max_page_count = {pages}")
            cur.close()

        self._limit = limit

    def operator_step(self, fn) -> bool:  # noqa: ANN001
        """Run an operator command's registry work; under a full disk it may fail, and
        then its intent is unchanged (all or nothing)."""
        before = (self.reg.intents.read(self.svc), self.quarantined()) if self.full else None
        try:
            fn()
            return True
        except BgdeployError:
            hyp_event("a command failed under a full disk")
            assert self.full, "a registry write failed with space to spare"
            after = (self.reg.intents.read(self.svc), self.quarantined())
            assert after == before, "a failed command changed the intent half-way"
            return False

    # -- operator commands ---------------------------------------------------------------

    @rule()
    def deploy(self) -> None:
        self.started.clear()
        if self.installed in self.quarantined():
            return  # refused: "quarantined; --force to try it again"
        if self.operator_step(lambda: operator.record_deploy(self.app, None, self.installed)):
            hyp_event("a command applied" + (" under a full disk" if self.full else ""))
            self.start(self.installed, "operator")

    @rule(version=st.sampled_from(VERSIONS), force=st.booleans())
    def deploy_version(self, version: str, force: bool) -> None:
        self.started.clear()
        if version in self.quarantined() and not force:
            return

        def command() -> None:
            if force:
                self.reg.intents.lift_quarantine(self.svc, version, "deployed again with --force")
            operator.record_deploy(self.app, version, self.installed)

        if self.operator_step(command):
            self.start(version, "operator")

    @precondition(lambda self: self.active is not None and self.active.alive)
    @rule(version=st.sampled_from(VERSIONS), steps=st.sampled_from([(50,), (10, 50)]))
    def deploy_canary(self, version: str, steps: tuple[int, ...]) -> None:
        """`deploy --version V --canary 10,50`: the candidate is held at ready with the
        first step's share (the fake world starts it at once)."""
        self.started.clear()
        if version in self.quarantined():
            return
        if not self.operator_step(
            lambda: operator.record_deploy(self.app, version, self.installed)
        ):
            return
        self.start(version, "operator")  # counts the generation; undone just below
        self.ran.pop()  # a candidate never active is no version to roll back to
        self.active, self.state = self.old or self.active, "idle"
        if self.old is not None:
            self.old = None
        self.candidate = Daemon(f"b{self.n}", version)
        self.canary = CanarySeen(steps, 0, 30.0)
        self.state = "ready"
        hyp_event("a canary began")

    @precondition(lambda self: self.canary is not None)
    @rule()
    def canary_step_ends(self) -> None:
        self.started.clear()
        c = self.canary
        self.canary = CanarySeen(c.steps, c.step, 0.0)

    @precondition(lambda self: self.candidate is not None)
    @rule()
    def kill_candidate(self) -> None:
        self.started.clear()
        self.candidate.alive = False

    @precondition(lambda self: self.state != "ready")
    @rule(reason=st.sampled_from(["bad numbers", "slow"]))
    def rollback(self, reason: str) -> None:
        self.started.clear()
        if self.active is None:
            return
        frm = self.active.version
        if self.state == "switched" and self.old is not None and self.old.alive:
            to = self.old.version  # the warm old boot takes the route back
        else:
            quarantined = self.quarantined()
            ran = [v for v in self.ran if v != frm and v not in quarantined]
            if not ran:
                return  # "There is no previous version to roll back to."
            to = ran[-1]
        ok = self.operator_step(
            lambda: operator.record_rollback(self.app, to, frm, reason, self.installed)
        )
        if ok:
            self.state, self.old = "idle", None
            self.n += 1
            self.active = Daemon(f"b{self.n}", to)
            self.started.append((to, "operator"))

    @rule()
    def down(self) -> None:
        self.started.clear()
        if self.operator_step(lambda: self.reg.intents.set_run(self.svc, DOWN, "bgdeploy down")):
            for d in (self.active, self.old, self.candidate):
                if d is not None:
                    d.alive = False

    @rule()
    def up(self) -> None:
        self.started.clear()
        if not self.operator_step(lambda: self.reg.intents.set_run(self.svc, UP, "bgdeploy up")):
            return
        if self.active is None or not self.active.alive:
            try:
                version, _ = start_version(self.world())
            except BgdeployError:
                return  # nothing that may be started
            self.start(version, "up")

    @rule()
    def unpin(self) -> None:
        self.started.clear()
        self.operator_step(lambda: operator.unpin(self.app))

    # -- the machine and the world -------------------------------------------------------

    @rule(version=st.sampled_from(VERSIONS))
    def install(self, version: str) -> None:
        self.started.clear()
        self.set_installed(version)

    @rule()
    def kill(self) -> None:
        self.started.clear()
        if self.active is not None:
            self.active.alive = False

    @rule()
    def kill_old(self) -> None:
        self.started.clear()
        if self.old is not None:
            self.old.alive = False

    @precondition(lambda self: self.pg_url is None)
    @rule(full=st.booleans())
    def disk(self, full: bool) -> None:
        self.started.clear()
        self.full = full
        self._page_limit(full)

    @rule(cron=st.booleans())
    def tick(self, cron: bool) -> None:
        """A control-loop pass (or cron's `bgdeploy reconcile`, which does not deploy
        when nothing ever was), acting on the decision as the reconcile pass does."""
        self.started.clear()
        if self.canary is not None:  # a pass comes a step after the last (30 s)
            c = self.canary
            self.canary = CanarySeen(c.steps, c.step, max(0.0, c.left - 30.0))
        world = self.world(deploy_if_none=not cron)
        decision = decide(world)
        self.last = (world, decision)
        act = decision.action
        try:  # the pass's registry writes first: under a full disk the pass fails whole
            if act is Act.OBSERVE and self.active.version in BAD:
                self.reg.intents.add_quarantine(self.svc, self.active.version, self.n, "checks")
            elif act is Act.ROLLBACK:
                self.reg.intents.add_quarantine(self.svc, self.active.version, self.n, "exited")
            elif act is Act.CANARY and self.candidate.version in BAD:
                self.reg.intents.add_quarantine(self.svc, self.candidate.version, self.n, "5xx")
            elif act is Act.DEPLOY and decision.ends_intent:
                self.reg.intents.follow_installed(self.svc, "intent_ended", decision.ends_intent)
        except BgdeployError:
            assert self.full, "a pass failed with space to spare"
            return  # the control loop logs it and tries again next tick
        if act is Act.CANARY:
            c = self.canary
            if self.candidate.version in BAD:  # its first verdict fails: aborted
                hyp_event("a bad canary aborted")
                self._drop_canary()
            elif c.left <= 0 and c.step + 1 < len(c.steps):
                self.canary = CanarySeen(c.steps, c.step + 1, 30.0)
            elif c.left <= 0:  # the last step passed: switched to, as promote does
                hyp_event("a canary switched")
                self.old, self.active = self.active, self.candidate
                self.candidate, self.canary, self.state = None, None, "switched"
        elif act is Act.ABORT:
            self._drop_canary()
        elif act is Act.OBSERVE:
            if self.active.version in BAD:  # its health checks fail: rolled back
                self.active, self.old, self.state = self.old, None, "idle"
            else:
                self.old, self.state = None, "idle"  # finalized
        elif act in (Act.ROLLBACK, Act.FINALIZE):
            if act is Act.ROLLBACK:
                self.active = self.old
            self.old, self.state = None, "idle"
        elif act is Act.DEPLOY:
            assert decision.version is not None
            self.start(decision.version, "heal" if decision.heal else "loop")

    # -- the rules, after every step -----------------------------------------------------

    @invariant()
    def automatic_starts_follow_the_intent(self) -> None:
        if not hasattr(self, "last") or not self.started:
            return
        who = self.started[-1][1]
        if who not in ("loop", "heal"):
            return
        world, decision = self.last
        version = self.started[-1][0]
        intent = world.intent
        assert intent.run == UP, "something was started after `down`"
        if who == "heal":
            dead = world.active
            assert dead is not None and not dead.alive
            assert version == dead.version or dead.version in world.quarantined, (
                "a heal started another version than the one that was running"
            )
        elif intent.mode != INSTALLED and not decision.ends_intent:
            assert version == intent.version, "the control loop deployed over a pin/rollback"
        if decision.ends_intent:
            assert world.installed != intent.installed_seen
            assert world.installed not in world.quarantined

    @invariant()
    def a_canary_is_a_held_candidate_never_a_second_active(self) -> None:
        if self.state == "ready":
            assert self.candidate is not None and self.canary is not None
            assert self.active is None or self.active.boot_id != self.candidate.boot_id
        else:
            assert self.canary is None
        if self.candidate is not None:
            assert self.candidate.version not in self.quarantined() or not self.candidate.alive

    @invariant()
    def one_active_at_most(self) -> None:
        alive = [d for d in (self.active, self.old) if d is not None and d.alive]
        assert len({d.boot_id for d in alive}) == len(alive)
        if self.state == "idle":
            assert self.old is None


IntentMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestIntentOnSqlite = IntentMachine.TestCase


def test_intent_machine_on_postgresql(pg_server):
    from hypothesis.stateful import run_state_machine_as_test

    class PgIntentMachine(IntentMachine):
        def __init__(self) -> None:
            type(self).pg_url = pg_server.clean_database()  # an emptied database per example
            super().__init__()

    run_state_machine_as_test(
        PgIntentMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.fixture(scope="module", autouse=True)
def _cleanup_template():
    yield
    if _TEMPLATE is not None:
        shutil.rmtree(_TEMPLATE.parent, ignore_errors=True)
