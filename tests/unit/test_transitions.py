"""The state machine bound to the registry row: every legal and illegal transition."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from bgdeploy.errors import IllegalTransition
from bgdeploy.registry.models import Boot, Event
from bgdeploy.registry.store import Registry
from bgdeploy.states import BootState, DeploymentEvent, DeploymentState
from tests.conftest import attached_by

SVC = "default"
ALLOWED = {
    ("idle", "begin"): "starting",
    ("starting", "candidate_ready"): "ready",
    ("starting", "abort"): "idle",
    ("ready", "abort"): "idle",
    ("ready", "switch"): "switched",
    ("switched", "finalize"): "idle",
    ("switched", "rollback"): "rolling_back",
    ("rolling_back", "rollback_done"): "idle",
}


def fire(reg: Registry, event: str, **kw: object):
    row = reg.deployment(SVC)
    kw.setdefault("version", "1.0")
    return reg.transition(SVC, event, generation=row.generation, state=row.state, **kw)


def deploy(reg: Registry, version: str) -> None:
    """begin -> candidate_ready -> switch with one version."""
    assert fire(reg, "begin", version=version).applied
    assert fire(reg, "candidate_ready").applied
    assert fire(reg, "switch").applied


def drive_to(reg: Registry, state: str) -> None:
    """Put the deployment into state, with an old boot present where there can be one."""
    deploy(reg, "1.0")
    assert fire(reg, "finalize").applied  # gen 1: blue-1 active, idle
    if state == "idle":
        return
    fire(reg, "begin", version="2.0")
    if state == "starting":
        return
    fire(reg, "candidate_ready")
    if state == "ready":
        return
    fire(reg, "switch")
    if state == "switched":
        return
    fire(reg, "rollback", reason="test")
    assert reg.deployment(SVC).state == state


def snapshot(reg: Registry) -> tuple[object, ...]:
    with reg.reading() as s:
        boots = [(b.boot_id, b.state) for b in s.scalars(select(Boot).order_by(Boot.boot_id))]
        events = len(list(s.scalars(select(Event))))
    return (reg.deployment(SVC), tuple(boots), events)


@pytest.mark.parametrize(("start", "event"), sorted(ALLOWED))
def test_each_legal_transition_moves_state_and_records_an_event(registry, start, event):
    drive_to(registry, start)
    before = registry.deployment(SVC)
    result = fire(registry, event, reason="because")
    assert result.applied, result.message
    after = registry.deployment(SVC)
    assert after.state == ALLOWED[(start, event)]
    newest = registry.events(SVC, limit=1)[0]
    assert (newest.event, newest.from_state, newest.to_state) == (event, start, after.state)
    expected_gen = before.generation + 1 if event == "begin" else before.generation
    assert after.generation == newest.generation == expected_gen


ILLEGAL = [
    (s.value, e.value)
    for s in DeploymentState
    for e in DeploymentEvent
    if (s.value, e.value) not in ALLOWED
]


@pytest.mark.parametrize(("start", "event"), ILLEGAL)
def test_each_illegal_transition_raises_and_writes_nothing(registry, start, event):
    drive_to(registry, start)
    before = snapshot(registry)
    with pytest.raises(IllegalTransition, match=f"while the deployment is {start}"):
        fire(registry, event, reason="nope")
    assert snapshot(registry) == before


def test_begin_sets_up_the_candidate_and_clears_last_outcome(registry):
    drive_to(registry, "starting")
    assert fire(registry, "abort", reason="candidate exited with code 3").applied
    assert registry.deployment(SVC).last_error == "candidate exited with code 3"
    res = fire(registry, "begin", version="3.0")
    row = res.row
    assert row.generation == 3 and row.state == "starting"
    assert row.candidate_boot_id == "blue-3"
    assert row.last_error is None and row.rollback_reason is None
    assert (row.health_fail_streak, row.health_ok_streak) == (0, 0)
    boot = registry.boot("blue-3")
    assert (boot.version, boot.state, boot.generation) == ("3.0", "starting", 3)


def test_abort_keeps_active_and_marks_candidate_failed(registry):
    drive_to(registry, "ready")
    res = fire(registry, "abort", reason="attach refused")
    assert res.row.active_boot_id == "blue-1"
    assert res.row.candidate_boot_id is None
    assert res.row.last_error == "attach refused"
    assert registry.boot("green-2").state == BootState.FAILED
    assert registry.boot("blue-1").state == BootState.ACTIVE


def test_switch_moves_active_to_candidate_and_keeps_old_warm(registry):
    drive_to(registry, "ready")
    res = fire(registry, "switch")
    row = res.row
    assert (row.active_boot_id, row.old_boot_id, row.candidate_boot_id) == (
        "green-2",
        "blue-1",
        None,
    )
    assert row.switch_ts is not None
    assert registry.boot("green-2").state == BootState.ACTIVE
    assert registry.boot("blue-1").state == BootState.STANDBY


def test_generation_mismatch_is_a_noop_that_returns_the_current_row(registry):
    drive_to(registry, "ready")
    before = snapshot(registry)
    res = registry.transition(SVC, "switch", generation=1, state="ready")
    assert not res.applied
    assert "generation 1" in res.message and "generation 2" in res.message
    assert res.row.generation == 2 and res.row.state == "ready"
    assert snapshot(registry) == before


def test_state_mismatch_is_a_noop(registry):
    drive_to(registry, "switched")
    before = snapshot(registry)
    res = registry.transition(SVC, "switch", generation=2, state="ready")
    assert not res.applied and res.row.state == "switched"
    assert snapshot(registry) == before


def test_switch_twice_in_one_generation_applies_once(registry):
    drive_to(registry, "ready")
    first = registry.transition(SVC, "switch", generation=2, state="ready")
    second = registry.transition(SVC, "switch", generation=2, state="ready")
    assert first.applied and not second.applied
    switches = [e for e in registry.events(SVC) if e.event == "switch" and e.generation == 2]
    assert len(switches) == 1


def test_database_refuses_a_second_switch_event_for_a_generation(registry):
    drive_to(registry, "switched")
    with pytest.raises(IntegrityError), registry.writing() as s:
        s.execute(
            insert(Event).values(
                service=SVC, generation=2, event="switch", from_state="ready", to_state="switched"
            )
        )


def test_database_refuses_two_active_boots(registry):
    drive_to(registry, "ready")
    with pytest.raises(IntegrityError), registry.writing() as s:
        s.get(Boot, "green-2").state = BootState.ACTIVE.value
        s.flush()


def test_rollback_restores_old_boot_and_records_reason(registry):
    drive_to(registry, "switched")
    res = fire(registry, "rollback", reason="3 failed health checks")
    row = res.row
    assert row.state == "rolling_back"
    assert row.active_boot_id == "blue-1"  # active = old
    assert row.old_boot_id == "green-2"  # the failed boot, to be drained
    assert row.rollback_reason == "3 failed health checks"
    assert row.rollback_ts is not None and row.rollback_ts >= row.switch_ts
    assert registry.boot("blue-1").state == BootState.ACTIVE
    assert registry.boot("green-2").state == BootState.DRAINING
    done = fire(registry, "rollback_done")
    assert done.row.state == "idle" and done.row.old_boot_id is None
    assert done.row.rollback_reason == "3 failed health checks"  # kept until the next begin
    assert registry.quarantined_versions(SVC) == ["2.0"]


def test_rollback_without_old_boot_is_refused_and_writes_nothing(registry):
    deploy(registry, "1.0")  # first deploy: nothing to go back to
    before = snapshot(registry)
    with pytest.raises(IllegalTransition, match="no old boot"):
        fire(registry, "rollback", reason="x")
    assert snapshot(registry) == before


def test_health_streaks_count_while_switched_only(registry):
    drive_to(registry, "switched")
    g = registry.deployment(SVC).generation
    registry.record_health(SVC, g, ok=True)
    registry.record_health(SVC, g, ok=False)
    res = registry.record_health(SVC, g, ok=False)
    assert (res.row.health_fail_streak, res.row.health_ok_streak) == (2, 0)
    assert registry.deployment(SVC).health_fail_streak == 2
    stale = registry.record_health(SVC, g - 1, ok=False)
    assert not stale.applied and registry.deployment(SVC).health_fail_streak == 2


def test_workspaces_follow_switch_and_rollback_only_where_attached(registry):
    """Invariant 4: a switch or rollback moves a binding only to a boot that attached it;
    until then it is refused (nothing changes) and names the workspaces it waits for."""
    ws = registry.workspaces
    drive_to(registry, "idle")
    assert ws.bind(SVC, "/src/app", "blue-1")
    fire(registry, "begin", version="2.0")
    fire(registry, "candidate_ready")
    before = snapshot(registry)
    refused = fire(registry, "switch")
    assert not refused.applied and refused.unattached == ("/src/app",)
    assert snapshot(registry) == before and ws.bindings(SVC) == {"/src/app": "blue-1"}
    ws.record_attach("green-2", "/src/app")
    assert fire(registry, "switch").applied
    assert ws.bindings(SVC) == {"/src/app": "green-2"}
    # attached to green-2 after the switch: blue-1 never saw it, so a rollback waits
    assert ws.bind(SVC, "/src/late", "green-2")
    refused = fire(registry, "rollback", reason="bad")
    assert not refused.applied and refused.unattached == ("/src/late",)
    assert registry.deployment(SVC).state == "switched"
    ws.record_attach("blue-1", "/src/late")
    assert fire(registry, "rollback", reason="bad").applied
    assert ws.bindings(SVC) == {"/src/app": "blue-1", "/src/late": "blue-1"}


def test_bind_refuses_a_boot_that_is_no_longer_active(registry):
    drive_to(registry, "switched")  # green-2 active, blue-1 old
    assert not registry.workspaces.bind(SVC, "ws", "blue-1")
    assert registry.workspaces.bindings(SVC) == {}
    assert attached_by(registry, "blue-1") == {"ws"}  # the attach call did succeed


def test_failed_or_stopped_boots_are_not_demoted_back_to_life(registry):
    """A boot recorded failed (its process died) stays failed through switch and rollback."""
    drive_to(registry, "idle")
    registry.boot_records.mark_exited("blue-1", BootState.FAILED, None)
    fire(registry, "begin", version="2.0")
    fire(registry, "candidate_ready")
    assert fire(registry, "switch").applied
    assert registry.boot("blue-1").state == "failed"
    restore = registry.create_boot(SVC, 2, "1.0")
    registry.boot_records.mark_exited("green-2", BootState.STOPPED, None)
    assert fire(registry, "rollback", reason="x", restore_boot_id=restore).applied
    assert registry.boot("green-2").state == "stopped"
    assert registry.boot("green-2").draining_ts is None
    assert registry.boot(restore).state == "active"


@pytest.mark.parametrize("then", ["switch", "abort"])
def test_a_held_candidate_records_since_when_until_switched_or_aborted(registry, then):
    drive_to(registry, "idle")
    fire(registry, "begin", version="2.0")
    assert fire(registry, "candidate_ready", hold=True).applied
    held = registry.deployment(SVC)
    assert held.state == "ready" and held.held_ts is not None
    assert fire(registry, then, reason="operator").applied
    assert registry.deployment(SVC).held_ts is None


def test_an_unheld_candidate_has_no_held_time(registry):
    drive_to(registry, "ready")
    assert registry.deployment(SVC).held_ts is None
