"""What should happen now, and why: one pure function every actor asks.

``decide(world)`` reads the desired state (the operator's intent and the
quarantine), the observed state (the deployment row, its boots and whether their
processes live), the installed version and the crash-loop wait, and answers with
one action and the sentence that explains it. The CLI, the router's control loop,
the exit watcher's heal and ``bgdeploy reconcile`` (with and without ``--dry-run``)
all act on its answer; ``status`` and ``doctor`` print its sentence. It does no
I/O, so a table-driven test covers every row of the decision table.

The rules it keeps (invariant 6):
- a quarantined version is never started (only ``deploy --force`` naming it does);
- a heal restarts the version that was running, never the installed one by force;
- a pin (``deploy --version``) or an operator rollback holds until a new installed
  version (one other than the installed version when it was set, and not
  quarantined) ends it, or a later operator command;
- after ``down`` nothing is started until ``up`` (or ``deploy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bgdeploy.registry.intent import INSTALLED, IntentView
from bgdeploy.states import DeploymentState as St


class Act(StrEnum):
    NOTHING = "nothing"  # nothing to do (the sentence says why)
    WAIT = "wait"  # a crash loop's backoff runs: the next start comes later
    ABORT = "abort"  # a deploy left mid-way (or a held candidate that died): drop it
    COMPLETE_ROLLBACK = "complete_rollback"  # a rollback left mid-way: finish it
    OBSERVE = "observe"  # switched: check the active boot, roll back or finalize
    ROLLBACK = "rollback"  # switched, the active boot exited, the old one is warm
    FINALIZE = "finalize"  # switched, the active boot exited and nothing is warm
    DEPLOY = "deploy"  # start ``version`` (a first deploy, a heal, an auto-deploy)
    CANARY = "canary"  # a canary step runs: judge the candidate (and end the step when due)


@dataclass(frozen=True)
class BootSeen:
    boot_id: str
    version: str
    alive: bool


@dataclass(frozen=True)
class CanarySeen:
    """Where a canary stands: the candidate's share now, its steps, the step's time."""

    steps: tuple[int, ...]
    step: int  # index into steps
    left: float  # seconds until the current step ends (<= 0: it is over)

    @property
    def weight(self) -> int:
        return self.steps[self.step]

    def label(self) -> str:
        return f"canary step {self.step + 1}/{len(self.steps)} ({self.weight}%)"


@dataclass(frozen=True)
class World:
    """Everything the decision reads, gathered by ``control.world.gather``."""

    intent: IntentView = field(default_factory=IntentView)
    state: str = St.IDLE.value
    generation: int = 0
    held: bool = False
    active: BootSeen | None = None
    old: BootSeen | None = None
    candidate: BootSeen | None = None
    installed: str | None = None
    installed_error: str | None = None  # why the installed version could not be read
    quarantined: dict[str, str | None] = field(default_factory=dict)  # version -> reason
    crash_wait: float = 0.0  # seconds until a crash loop allows the next start
    crash_line: str | None = None
    failed_version: str | None = None  # the newest generation aborted a deploy of this
    failed_error: str | None = None
    deploy_if_none: bool = False  # the router's loop deploys when nothing ever was
    canary: CanarySeen | None = None  # a held candidate with canary steps


@dataclass(frozen=True)
class Decision:
    action: Act
    reason: str
    version: str | None = None
    heal: bool = False  # a restart of a dead active boot (it does not end a crash loop)
    ends_intent: str | None = None  # the pin or rollback that a new installed version ends

    @property
    def sentence(self) -> str:
        """What ``reconcile --dry-run``, ``status`` and ``doctor`` print."""
        if self.action is Act.NOTHING:
            return f"nothing to do: {self.reason}"
        if self.action is Act.WAIT:
            return f"wait: {self.reason}"
        return self.reason

    @property
    def starts(self) -> bool:
        return self.action is Act.DEPLOY


def target(world: World) -> tuple[str | None, str, str | None]:
    """The version that should run, why, and the intent that ends (if the installed
    version moved on past a pin or an operator rollback)."""
    intent, installed = world.intent, world.installed
    if intent.mode != INSTALLED and intent.version is not None:
        moved = (
            installed is not None
            and installed != intent.installed_seen
            and installed not in world.quarantined
        )
        if not moved:
            return intent.version, intent.describe(), None
        ended = (
            f"the installed version changed from {intent.installed_seen or 'unknown'} to "
            f"{installed}, which ends the intent that {intent.describe()}"
        )
        return installed, ended, ended
    if installed is None:
        return None, f"the installed version cannot be read ({world.installed_error})", None
    return installed, f"{installed} is the installed version", None


def decide(world: World) -> Decision:
    state = world.state
    if state == St.ROLLING_BACK:
        return Decision(
            Act.COMPLETE_ROLLBACK, f"complete the rollback of generation {world.generation}"
        )
    if state in (St.STARTING, St.READY):
        return _mid_deploy(world)
    if world.intent.down:
        return Decision(Act.NOTHING, _down_sentence(world.intent))
    if state == St.SWITCHED:
        return _switched(world)
    return _idle(world)


def _down_sentence(intent: IntentView) -> str:
    by = f" ({intent.run_by})" if intent.run_by else ""
    return f"the service is down by operator{by}; `bgdeploy up` starts it again"


def _mid_deploy(world: World) -> Decision:
    cand, gen = world.candidate, world.generation
    if world.held:
        if cand is not None and cand.alive and world.canary is not None:
            c = world.canary
            if c.left <= 0:
                what = f"{c.label()} of generation {gen} is over: judge {cand.boot_id}"
            else:
                what = (
                    f"{c.label()} of generation {gen}: {cand.boot_id} ({cand.version}) gets "
                    f"{c.weight}% of new requests for {c.left:.0f} s more; `bgdeploy promote` "
                    "skips the steps, `bgdeploy abort` ends the canary"
                )
            return Decision(Act.CANARY, what)
        if cand is not None and cand.alive:
            return Decision(
                Act.NOTHING,
                f"candidate {cand.boot_id} ({cand.version}) is held at ready for "
                "`bgdeploy promote` or `bgdeploy abort`",
            )
        what = f"held candidate {cand.boot_id} exited" if cand else "the held candidate is gone"
        return Decision(Act.ABORT, f"abort generation {gen}: {what}")
    return Decision(Act.ABORT, f"abort generation {gen}: the deploying process is gone")


def _switched(world: World) -> Decision:
    active, old, gen = world.active, world.old, world.generation
    if active is None:
        return Decision(Act.OBSERVE, f"observe generation {gen}: no active boot")
    if active.alive:
        return Decision(
            Act.OBSERVE,
            f"observe generation {gen}: health-check {active.boot_id} ({active.version})",
        )
    if old is not None and old.alive:
        return Decision(
            Act.ROLLBACK,
            f"roll back generation {gen}: active boot {active.boot_id} exited while switched; "
            f"{old.boot_id} ({old.version}) is warm",
        )
    return Decision(
        Act.FINALIZE,
        f"finalize generation {gen}: active boot {active.boot_id} exited and no old boot is "
        "warm; it is restarted after",
    )


def _idle(world: World) -> Decision:
    active = world.active
    version, why, ends = target(world)
    if active is None:
        if version is None:
            return Decision(Act.NOTHING, f"nothing is deployed, and {why}")
        if version in world.quarantined:
            return Decision(Act.NOTHING, _quarantined_sentence(world, version, None))
        if not world.deploy_if_none:
            return Decision(
                Act.NOTHING, f"nothing is deployed yet; `bgdeploy up` deploys {version}"
            )
        return Decision(Act.DEPLOY, f"first deploy of {version}: {why}", version, ends_intent=ends)
    if not active.alive:
        return _heal(world, active, version, why, ends)
    if version is None:
        return Decision(Act.NOTHING, f"{active.version} runs; {why}")
    if version == active.version:
        if ends is not None:
            return Decision(Act.NOTHING, f"{version} runs, and {why}", ends_intent=ends)
        return Decision(Act.NOTHING, f"{version} runs: {why}")
    if version in world.quarantined:
        return Decision(Act.NOTHING, _quarantined_sentence(world, version, active))
    if world.failed_version == version:
        return Decision(
            Act.NOTHING,
            f"the last deploy of {version} failed ({world.failed_error or 'aborted'}); "
            f"{active.version} stays; `bgdeploy deploy` tries again",
        )
    return Decision(
        Act.DEPLOY,
        f"deploy {version} over {active.version}: {why}",
        version,
        ends_intent=ends,
    )


def _quarantined_sentence(world: World, version: str, active: BootSeen | None) -> str:
    why = world.quarantined.get(version)
    stays = f"{active.version} stays" if active is not None else "nothing is started"
    return (
        f"{version} is quarantined ({why or 'rolled back'}); {stays}; "
        f"`bgdeploy deploy --version {version} --force` tries it again"
    )


def _heal(
    world: World, active: BootSeen, version: str | None, why: str, ends: str | None
) -> Decision:
    """The active boot is dead while idle: restart the version that was running."""
    if world.crash_wait > 0:
        return Decision(Act.WAIT, world.crash_line or f"next try in {world.crash_wait:.1f} s")
    running = active.version
    if running not in world.quarantined:
        return Decision(
            Act.DEPLOY,
            f"self-heal: active boot {active.boot_id} ({running}) is down; restart {running}, "
            "the version that was running",
            running,
            heal=True,
        )
    if version is not None and version not in world.quarantined:
        return Decision(
            Act.DEPLOY,
            f"self-heal: active boot {active.boot_id} is down and {running} is quarantined; "
            f"deploy {version} ({why})",
            version,
            heal=True,
            ends_intent=ends,
        )
    return Decision(
        Act.NOTHING,
        f"active boot {active.boot_id} is down and {running} is quarantined, with no other "
        "version to start; `bgdeploy deploy --version V` starts one",
    )
