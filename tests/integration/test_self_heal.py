"""Boot states match processes: through a self-heal (the active daemon killed, the
reconcile pass deploys again), `status` and `doctor` agree with the processes after
every step, and a boot recorded failed never comes back as standby or draining."""

from __future__ import annotations

import os
import signal

import pytest

from bgdeploy.control.doctor import doctor
from bgdeploy.control.reconcile import Reconciler
from bgdeploy.control.status import status
from bgdeploy.processes import process_matches
from bgdeploy.states import LIVE_BOOT_STATES
from tests.conftest import poll_until
from tests.integration.conftest import deploy


def running(boot) -> bool:  # noqa: ANN001
    return process_matches(boot.pid, boot.pid_create_time)


class Witness:
    """Checks status, doctor and the registry against the processes after each step."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.dead: set[str] = set()  # boots once recorded failed or stopped

    def check(self, *, registry_current: bool = True) -> dict:
        app, reg = self.app, self.app.registry
        st = status(app)
        checks = {c.name: c for c in doctor(app.config.path)}
        for role in ("active", "candidate", "old"):
            shown = st[role]
            if shown is not None:
                boot = reg.boot(shown["boot_id"])
                assert (shown["state"] in LIVE_BOOT_STATES) == running(boot), (role, shown)
        active_up = st["active"] is not None and st["active"]["state"] == "active"
        assert (checks["active boot"].status == "pass") == active_up, checks["active boot"]
        assert checks["orphans"].status == "pass", checks["orphans"]
        assert checks["boot states"].status == "pass", checks["boot states"]
        for boot in reg.boots(app.service):
            if boot.boot_id in self.dead:
                assert boot.state in ("failed", "stopped"), f"{boot.boot_id} came back"
            if boot.state in ("failed", "stopped"):
                self.dead.add(boot.boot_id)
                assert not running(boot)
            elif registry_current:  # a kill is only known once someone looks
                assert running(boot) or boot.pid is None, (boot.boot_id, boot.state)
        return st


@pytest.mark.slow
def test_status_and_doctor_agree_with_the_processes_through_a_self_heal(boots_for, tmp_path):
    (tmp_path / "VERSION").write_text("1.0\n")
    app = boots_for(daemon_extra='version_file = "VERSION"', stable=1).app
    rec = Reconciler(app)
    witness = Witness(app)
    blue = deploy(app, "1.0").boot_id
    witness.check()
    rec.run()  # one healthy check: finalize
    st = witness.check()
    assert (st["state"], st["active"]["boot_id"], st["active"]["state"]) == (
        "idle",
        blue,
        "active",
    )

    killed = app.registry.boot(blue)
    os.killpg(killed.pid, signal.SIGKILL)
    poll_until(lambda: not running(killed), 5, what="blue to die")
    st = witness.check(registry_current=False)
    assert st["active"]["state"] == "failed"  # not "active": its process is gone

    report = rec.run()  # self-heal: a fresh deploy of the installed version
    assert any("self-heal" in a for a in report.actions), report.actions
    st = witness.check()
    green = st["active"]["boot_id"]
    assert green != blue and st["state"] == "switched"
    assert st["old"]["boot_id"] == blue and st["old"]["state"] == "failed"
    assert app.registry.boot(blue).state == "failed"  # not standby

    rec.run()  # finalize generation 2: the failed old boot is not drained, not "stopped"
    st = witness.check()
    assert (st["state"], st["active"]["boot_id"], st["old"]) == ("idle", green, None)
    assert app.registry.boot(blue).state == "failed"
    assert [e.event for e in app.registry.events("default", limit=3)] == [
        "finalize",
        "switch",
        "candidate_ready",
    ]
