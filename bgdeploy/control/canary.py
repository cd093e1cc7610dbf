"""Canary steps, judged by the control loop: a held candidate gets a share of new
requests (``canary_weight`` on the deployment row, which the router follows), and
each pass compares it with the active boot over the step so far.

- The candidate fails the step as soon as the verdict says so (``analysis.judge_canary``
  over at least ``analysis.min_requests`` of its answers): it is stopped, the active
  boot keeps all traffic, and its version is quarantined with the figure.
- When the step's time is over and the verdict passes, the next step's share is
  set (a fenced mark, with its figures in history); after the last step the
  candidate is switched to, as ``promote`` does.
- A step with too little traffic to judge waits up to ``analysis.max_wait`` past its
  end, then goes on without a verdict and says so.

The state stays ``ready`` throughout: the canary is a candidate with a share, never
a second active boot. ``promote`` skips the steps left, ``abort`` ends the canary,
and a deploying process that died changes nothing (the row holds the plan).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bgdeploy.control import analysis, crashes
from bgdeploy.control.app import App
from bgdeploy.control.decide import CanarySeen
from bgdeploy.control.deploy import Deployer, Steps, no_progress
from bgdeploy.errors import BgdeployError, OperationFailed
from bgdeploy.failpoints import failpoint
from bgdeploy.registry.models import Deployment

SERIES_LIMIT_S = 300.0  # the router keeps five minutes of samples
WITHDRAW_WAIT_S = 2.0  # at most this long for the router to take back a canary share
ROUTERLESS_S = 5.0  # how long `deploy` follows a canary with no router before it says so


def judge_step(
    app: App,
    d: Deployer,
    row: Deployment,
    canary: CanarySeen,
    did: Callable[[str], None],
) -> None:
    """One pass over a running canary step (the caller holds the lifecycle lock)."""
    cfg = app.config.analysis
    gen, boot_id = row.generation, row.candidate_boot_id
    assert boot_id is not None and row.canary_step_ts is not None
    started = row.canary_step_ts.timestamp()
    span = min(max(time.time() - started, 0.001), SERIES_LIMIT_S)
    router = app.router.running()
    figures = analysis.fetch_traffic(app.router, span)
    if figures is None and router is not None and -canary.left < max(cfg.max_wait, 10.0):
        return  # it runs but did not answer this time: ask again next pass
    if figures is None:
        verdict = analysis.Verdict(None, "no router answered with traffic figures")
    else:
        verdict = analysis.judge_canary(
            cfg,
            figures.get(boot_id, analysis.Figures()),
            figures.get(row.active_boot_id or "", analysis.Figures()),
        )
    label = canary.label()
    candidate = d.reg.boot(boot_id)
    version = candidate.version if candidate is not None else "?"
    if verdict.ok is False:
        reason = f"{label} failed: {verdict.reason}"
        did(f"abort generation {gen}: {reason}; quarantine {version}")
        crashes.quarantine(app, version, reason)
        # New requests leave the candidate before it is stopped (those in flight finish
        # within its stop_timeout, as on any abort).
        if d.reg.marks.withdraw_canary_share(app.service, gen) and router is not None:
            app.router.wait_route(lambda route: not route.get("canary_weight"), WITHDRAW_WAIT_S)
        d.abort_candidate(gen, boot_id, reason)
        return
    if canary.left > 0:
        return  # the step runs on
    if verdict.ok is None:
        overdue = -canary.left
        if overdue < cfg.max_wait:
            return  # too little traffic yet: wait for it, up to analysis.max_wait
        text = f"{label} passed without a verdict after {span:.0f} s ({verdict.reason})"
    else:
        text = f"{label} passed: {verdict.reason}"
    nxt = canary.step + 1
    if nxt < len(canary.steps):
        did(f"{text}; next: {canary.steps[nxt]}% of new requests")
        if d.reg.marks.next_canary_step(app.service, gen, nxt, text):
            failpoint("after_canary_step_commit")
        return
    did(f"{text}; switch generation {gen} to {boot_id}")
    try:
        d.switch_candidate(gen, boot_id, version, Steps(no_progress), reason=text)
    except BgdeployError as e:
        did(f"switch after the canary failed: {e.message}")


def follow(
    app: App,
    generation: int,
    on_line: Callable[[str], None],
    *,
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, str]:
    """What `bgdeploy deploy` shows after it began a canary (without the lock): each
    step's verdict as history records it, until generation ``generation`` switches
    (True) or is aborted (False), with the reason."""
    reg, svc = app.registry, app.service
    shown: set[int] = set()
    routerless_since: float | None = None
    while True:
        for e in reversed(reg.events(svc, limit=20)):
            if e.generation != generation or e.id in shown:
                continue
            shown.add(e.id)
            if e.event == "canary_step" and e.reason:
                on_line(e.reason)
            elif e.event == "switch":
                return True, e.reason or "switched"
            elif e.event == "abort":
                return False, e.reason or "aborted"
        row = reg.deployment(svc)
        if row.generation != generation:
            return False, f"generation {generation} was replaced by generation {row.generation}"
        if app.router.running() is not None:
            routerless_since = None
        elif routerless_since is None:
            routerless_since = time.monotonic()
        elif time.monotonic() - routerless_since > ROUTERLESS_S:
            raise OperationFailed(
                f"The router stopped: nothing judges the canary of generation {generation}, "
                "which waits at ready.",
                hint="`bgdeploy up` starts the router, whose control loop goes on with it "
                "(or `bgdeploy abort` ends it).",
            )
        sleep(poll)
