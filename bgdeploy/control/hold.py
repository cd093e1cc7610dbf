"""Held deploys: `promote` switches to the candidate a `deploy --hold` left at ready,
`abort` drops it. Both are fenced like a switch: for another generation, or with
nothing held, they change nothing and say so. The caller holds the lifecycle lock.
"""

from __future__ import annotations

from bgdeploy.control.deploy import Deployer, DeployResult, Progress, Steps, no_progress
from bgdeploy.errors import OperationFailed
from bgdeploy.machine import DeploymentFields
from bgdeploy.registry.models import utcnow
from bgdeploy.states import DeploymentState as St


def promote(
    d: Deployer, generation: int | None = None, *, progress: Progress = no_progress
) -> DeployResult:
    """Switch to the candidate held at ready. Fenced like a switch: for another
    generation, or with nothing held, it is a no-op that says so."""
    row = d.reg.deployment(d.app.service)
    candidate = d.reg.boot(row.candidate_boot_id)
    stale = _not_held(row, generation, "promote")
    if stale is not None or candidate is None:
        return _noop(row, stale or "promote is a no-op: there is no candidate.")
    steps = Steps(progress)
    if not d.sup.is_running(candidate):
        reason = f"held candidate {candidate.boot_id} {d.sup.describe_exit(candidate)}"
        d.abort_candidate(row.generation, candidate.boot_id, reason)
        steps("aborted", reason)
        raise OperationFailed(
            f"Cannot promote: {reason}.", hint="The active boot is unchanged; deploy again."
        )
    return d.switch_candidate(
        row.generation,
        candidate.boot_id,
        candidate.version,
        steps,
        reason=f"promoted after {_held_for(row):.0f}s held",
    )


def abort(d: Deployer, reason: str, generation: int | None = None) -> DeployResult:
    """Stop the held candidate and record why (fenced like promote)."""
    row = d.reg.deployment(d.app.service)
    stale = _not_held(row, generation, "abort")
    if stale is not None or row.candidate_boot_id is None:
        return _noop(row, stale or "abort is a no-op: there is no candidate.")
    boot_id = row.candidate_boot_id
    d.abort_candidate(row.generation, boot_id, f"{reason} (after {_held_for(row):.0f}s held)")
    version = getattr(d.reg.boot(boot_id), "version", "")
    return DeployResult(
        True,
        row.generation,
        version,
        boot_id,
        f"Generation {row.generation}: aborted; {boot_id} stopped, the active boot kept.",
    )


def _noop(row: DeploymentFields, message: str) -> DeployResult:
    return DeployResult(True, row.generation, "", row.candidate_boot_id, message, applied=False)


def _held_for(row: DeploymentFields) -> float:
    return (utcnow() - row.held_ts).total_seconds() if row.held_ts else 0.0


def _not_held(row: DeploymentFields, generation: int | None, verb: str) -> str | None:
    """Why a promote/abort for ``generation`` would be stale, or None if it applies."""
    if generation is not None and generation != row.generation:
        return (
            f"{verb} is a no-op: it was for generation {generation}, but the registry holds "
            f"generation {row.generation} in state {row.state}."
        )
    if row.state != St.READY or row.held_ts is None:
        return (
            f"{verb} is a no-op: generation {row.generation} is {row.state}, with no "
            "candidate held at ready."
        )
    return None
