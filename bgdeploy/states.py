"""Deployment and boot states: the names every other module reads.

Stdlib only, so that nothing this module imports can break it (the supervisor
``states.py`` habit). The ORM columns, the python-statemachine model, the CLI
tables and the JSON output all use these exact strings.
"""

from enum import StrEnum


class DeploymentState(StrEnum):
    IDLE = "idle"
    STARTING = "starting"
    READY = "ready"
    SWITCHED = "switched"
    ROLLING_BACK = "rolling_back"


class DeploymentEvent(StrEnum):
    BEGIN = "begin"
    CANDIDATE_READY = "candidate_ready"
    ABORT = "abort"
    SWITCH = "switch"
    FINALIZE = "finalize"
    ROLLBACK = "rollback"
    ROLLBACK_DONE = "rollback_done"


class BootState(StrEnum):
    STARTING = "starting"  # spawned, not yet healthy
    HEALTHY = "healthy"  # passed its checks, not routed yet
    ACTIVE = "active"  # the router sends new requests here (one per service)
    STANDBY = "standby"  # the old boot, kept warm after a switch
    DRAINING = "draining"  # lost the route; finishing in-flight work
    STOPPED = "stopped"  # exited after a stop we asked for
    FAILED = "failed"  # exited by itself or never became healthy


# A boot in one of these states may have a live process that is ours.
LIVE_BOOT_STATES = frozenset(
    {BootState.STARTING, BootState.HEALTHY, BootState.ACTIVE, BootState.STANDBY, BootState.DRAINING}
)

# Events recorded under the unique key (service, generation, event).
ONCE_PER_GENERATION_EVENTS = frozenset({DeploymentEvent.SWITCH, DeploymentEvent.ROLLBACK})

DEFAULT_SERVICE = "default"
