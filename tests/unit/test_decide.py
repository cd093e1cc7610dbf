"""The decision table: every row of it through the pure decision function, with the
sentence `reconcile --dry-run`, `status` and `doctor` print for it.

The same table is in the README and docs/design.md; a row added there belongs here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bgdeploy.control.decide import Act, BootSeen, CanarySeen, World, decide
from bgdeploy.registry.intent import DOWN, PINNED, ROLLED_BACK, IntentView

V1 = BootSeen("blue-1", "1.0", alive=True)
V2 = BootSeen("green-2", "2.0", alive=True)
DEAD1 = replace(V1, alive=False)
DEAD2 = replace(V2, alive=False)
IDLE = World(state="idle", generation=2, active=V1, installed="1.0")
PIN2 = IntentView(
    mode=PINNED, version="2.0", reason="bgdeploy deploy --version 2.0", installed_seen="1.0"
)
BACK1 = IntentView(mode=ROLLED_BACK, version="1.0", reason="bad numbers", installed_seen="2.0")
Q2 = {"2.0": "manual: bad numbers"}

# (name, world, action, version started or None, words the sentence must hold)
TABLE = [
    (
        "rolling back: finish it",
        replace(IDLE, state="rolling_back"),
        Act.COMPLETE_ROLLBACK,
        None,
        ["complete the rollback of generation 2"],
    ),
    (
        "a deploy left mid-way: abort it",
        replace(IDLE, state="starting", candidate=V2),
        Act.ABORT,
        None,
        ["abort generation 2", "deploying process is gone"],
    ),
    (
        "held at ready, candidate alive: keep it",
        replace(IDLE, state="ready", held=True, candidate=V2),
        Act.NOTHING,
        None,
        ["nothing to do", "held at ready", "bgdeploy promote"],
    ),
    (
        "a canary step runs: judge the candidate as it goes",
        replace(IDLE, state="ready", held=True, candidate=V2, canary=CanarySeen((10, 50), 0, 12.0)),
        Act.CANARY,
        None,
        ["canary step 1/2 (10%)", "10% of new requests for 12 s more", "bgdeploy abort"],
    ),
    (
        "a canary step is over: its verdict",
        replace(IDLE, state="ready", held=True, candidate=V2, canary=CanarySeen((10, 50), 1, -0.5)),
        Act.CANARY,
        None,
        ["canary step 2/2 (50%) of generation 2 is over: judge green-2"],
    ),
    (
        "the canary's candidate died: abort it, as a held one",
        replace(IDLE, state="ready", held=True, candidate=DEAD2, canary=CanarySeen((10,), 0, 5.0)),
        Act.ABORT,
        None,
        ["abort generation 2", "green-2 exited"],
    ),
    (
        "held candidate died: abort it",
        replace(IDLE, state="ready", held=True, candidate=DEAD2),
        Act.ABORT,
        None,
        ["abort generation 2", "green-2 exited"],
    ),
    (
        "down by operator: start nothing, even with a dead active boot and a new version",
        replace(
            IDLE, active=DEAD1, installed="3.0", intent=IntentView(run=DOWN, run_by="bgdeploy down")
        ),
        Act.NOTHING,
        None,
        ["nothing to do", "down by operator", "bgdeploy up"],
    ),
    (
        "down by operator while switched: no health checks, no rollback",
        replace(IDLE, state="switched", active=DEAD2, old=DEAD1, intent=IntentView(run=DOWN)),
        Act.NOTHING,
        None,
        ["down by operator"],
    ),
    (
        "switched, active alive: observe it",
        replace(IDLE, state="switched", active=V2, old=V1),
        Act.OBSERVE,
        None,
        ["observe generation 2", "health-check green-2"],
    ),
    (
        "switched, active exited, old warm: roll back",
        replace(IDLE, state="switched", active=DEAD2, old=V1),
        Act.ROLLBACK,
        None,
        ["roll back generation 2", "blue-1 (1.0) is warm"],
    ),
    (
        "switched, active exited, nothing warm: finalize, then restart",
        replace(IDLE, state="switched", active=DEAD2, old=DEAD1),
        Act.FINALIZE,
        None,
        ["finalize generation 2", "restarted after"],
    ),
    (
        "nothing deployed, the router's loop: first deploy",
        replace(IDLE, active=None, deploy_if_none=True),
        Act.DEPLOY,
        "1.0",
        ["first deploy of 1.0"],
    ),
    (
        "nothing deployed, cron's reconcile: leave it to up",
        replace(IDLE, active=None),
        Act.NOTHING,
        None,
        ["nothing is deployed yet", "bgdeploy up"],
    ),
    (
        "active dead in a crash loop's backoff: wait",
        replace(IDLE, active=DEAD1, crash_wait=2.0, crash_line="crash-looping: 3 exits in 4 s"),
        Act.WAIT,
        None,
        ["wait: crash-looping: 3 exits"],
    ),
    (
        "active dead: heal restarts the version that was running, not the installed one",
        replace(IDLE, active=DEAD1, installed="2.0", quarantined=Q2),
        Act.DEPLOY,
        "1.0",
        ["self-heal", "restart 1.0", "the version that was running"],
    ),
    (
        "active dead, running version pinned: heal restarts it",
        replace(IDLE, active=DEAD2, intent=PIN2),
        Act.DEPLOY,
        "2.0",
        ["self-heal", "restart 2.0"],
    ),
    (
        "active dead, its version quarantined: deploy the target instead",
        replace(IDLE, active=DEAD2, installed="1.0", quarantined=Q2),
        Act.DEPLOY,
        "1.0",
        ["self-heal", "2.0 is quarantined", "deploy 1.0"],
    ),
    (
        "active dead, its version and the target quarantined: nothing to start",
        replace(IDLE, active=DEAD2, installed="2.0", quarantined=Q2),
        Act.NOTHING,
        None,
        ["2.0 is quarantined", "bgdeploy deploy --version V"],
    ),
    (
        "installed version runs",
        IDLE,
        Act.NOTHING,
        None,
        ["nothing to do", "1.0 runs", "installed version"],
    ),
    (
        "a new installed version: auto-deploy it",
        replace(IDLE, installed="3.0"),
        Act.DEPLOY,
        "3.0",
        ["deploy 3.0 over 1.0", "3.0 is the installed version"],
    ),
    (
        "installed version quarantined: keep the running one",
        replace(IDLE, installed="2.0", quarantined=Q2),
        Act.NOTHING,
        None,
        ["2.0 is quarantined (manual: bad numbers)", "1.0 stays", "--force"],
    ),
    (
        "the last deploy of the installed version failed: leave it to a person",
        replace(IDLE, installed="3.0", failed_version="3.0", failed_error="unhealthy"),
        Act.NOTHING,
        None,
        ["last deploy of 3.0 failed (unhealthy)", "bgdeploy deploy"],
    ),
    (
        "pinned by deploy --version: no auto-deploy of the installed version",
        replace(IDLE, active=V2, installed="1.0", intent=PIN2),
        Act.NOTHING,
        None,
        ["2.0 runs", "pinned by bgdeploy deploy --version 2.0"],
    ),
    (
        "pinned, and a new installed version: it ends the pin",
        replace(IDLE, active=V2, installed="3.0", intent=PIN2),
        Act.DEPLOY,
        "3.0",
        ["deploy 3.0", "changed from 1.0 to 3.0", "ends the intent"],
    ),
    (
        "rolled back by operator: the quarantined installed version waits",
        replace(IDLE, installed="2.0", intent=BACK1, quarantined=Q2),
        Act.NOTHING,
        None,
        ["nothing to do", "1.0 is rolled back by operator (bad numbers)"],
    ),
    (
        "rolled back, and a new installed version: it ends the rollback",
        replace(IDLE, installed="3.0", intent=BACK1, quarantined=Q2),
        Act.DEPLOY,
        "3.0",
        ["deploy 3.0 over 1.0", "changed from 2.0 to 3.0"],
    ),
    (
        "rolled back, and the installed version moves to another quarantined one: still held",
        replace(IDLE, installed="2.5", intent=BACK1, quarantined={**Q2, "2.5": "bad"}),
        Act.NOTHING,
        None,
        ["1.0 is rolled back by operator"],
    ),
    (
        "the installed version cannot be read: keep what runs",
        replace(IDLE, installed=None, installed_error="VERSION: no such file"),
        Act.NOTHING,
        None,
        ["1.0 runs", "cannot be read (VERSION: no such file)"],
    ),
]


@pytest.mark.parametrize(
    ("world", "action", "version", "words"),
    [pytest.param(w, a, v, words, id=name) for name, w, a, v, words in TABLE],
)
def test_decision_table(world: World, action: Act, version: str | None, words: list[str]):
    decision = decide(world)
    assert decision.action is action, decision
    assert decision.version == version
    for word in words:
        assert word in decision.sentence, (word, decision.sentence)


def test_no_row_starts_a_quarantined_version():
    """Across every row and every quarantine of its versions, nothing quarantined starts."""
    for name, world, *_ in TABLE:
        for bad in ({"1.0": "q"}, {"2.0": "q"}, {"3.0": "q"}, {"1.0": "q", "2.0": "q"}):
            decision = decide(replace(world, quarantined=bad))
            assert decision.version not in bad, (name, bad, decision)


def test_a_heal_never_deploys_another_version_than_the_running_one_unless_quarantined():
    for installed in ("1.0", "2.0", "3.0", None):
        decision = decide(replace(IDLE, active=DEAD1, installed=installed))
        assert (decision.action, decision.version, decision.heal) == (Act.DEPLOY, "1.0", True)
