"""Invariant 4 on every path: a workspace is bound to a boot only after that boot's
attach call succeeded (real demo daemons, their attach refused by a fault file)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from bgdeploy.boots import BootProcesses
from bgdeploy.control.workspaces import attach
from bgdeploy.errors import BootError
from tests.conftest import attached_by, poll_until, run_bgdeploy
from tests.integration.conftest import deploy, locked, settle


def faulty(boots_for, tmp_path):  # noqa: ANN201 - App
    """An app whose daemons read their faults from faults-<version>.json at start."""
    return boots_for(flags=["--fault-file", str(tmp_path / "faults-{version}.json")]).app


def refuse_attach(tmp_path, version: str) -> None:
    (tmp_path / f"faults-{version}.json").write_text(json.dumps({"refuse_attach": True}))


def bound(app) -> dict[str, str]:  # noqa: ANN001
    return app.registry.workspaces.bindings(app.service)


@pytest.mark.slow
def test_rollback_to_a_fresh_boot_attaches_every_workspace_before_it_commits(boots_for, tmp_path):
    app = faulty(boots_for, tmp_path)
    reg, sup = app.registry, BootProcesses(app.config, app.registry)
    blue = deploy(app, "1.0").boot_id
    settle(app)
    attach(app, "ws-1")
    green = deploy(app, "2.0").boot_id  # switched: green active, blue old
    assert bound(app) == {"ws-1": green}
    old = reg.boot(blue)
    os.killpg(old.pid, signal.SIGKILL)  # the old boot dies: a rollback needs a fresh one
    poll_until(lambda: not sup.is_running(old), 5, what="blue to die")
    refuse_attach(tmp_path, "1.0")  # ... and that fresh boot of 1.0 refuses attaches

    proc = run_bgdeploy("--config", str(app.config.path), "rollback", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "refused to attach workspace 'ws-1'" in proc.stderr and "Traceback" not in proc.stderr
    assert f"{green} stays active" in proc.stderr
    row = reg.deployment("default")
    assert (row.generation, row.state, row.active_boot_id) == (2, "switched", green)
    assert "refused to attach workspace 'ws-1'" in row.last_error
    newest = reg.events("default", limit=1)[0]
    assert newest.event == "rollback_failed" and newest.reason == row.last_error
    assert not any(e.event == "rollback" for e in reg.events("default"))
    assert bound(app) == {"ws-1": green}
    fresh = [b for b in reg.boots("default") if b.boot_id not in (blue, green)]
    assert [b.state for b in fresh] == ["failed"] and not sup.is_running(fresh[0])

    (tmp_path / "faults-1.0.json").unlink()  # the old version attaches again
    after = locked(app, lambda d: d.rollback(reg.deployment("default"), "retry"))
    restored = after.active_boot_id
    assert after.state == "idle" and restored not in (blue, green, fresh[0].boot_id)
    assert reg.boot(restored).version == "1.0"
    assert bound(app) == {"ws-1": restored}
    assert attached_by(reg, restored) == {"ws-1"}


@pytest.mark.slow
def test_a_workspace_attached_while_the_deploy_runs_is_attached_to_the_candidate(
    boots_for, tmp_path
):
    app = faulty(boots_for, tmp_path)
    reg = app.registry
    blue = deploy(app, "1.0").boot_id
    settle(app)
    attach(app, "ws-1")

    def late_attach(step: str, detail: str) -> None:
        # after the candidate attached what was bound, before the switch
        if step == "attached":
            assert attach(app, "ws-late") == blue

    green = locked(app, lambda d: d.deploy("2.0", progress=late_attach)).boot_id
    assert bound(app) == {"ws-1": green, "ws-late": green}
    assert attached_by(reg, green) == {"ws-1", "ws-late"}


@pytest.mark.slow
def test_a_late_workspace_the_candidate_refuses_aborts_the_switch(boots_for, tmp_path):
    app = faulty(boots_for, tmp_path)
    reg = app.registry
    blue = deploy(app, "1.0").boot_id
    settle(app)
    refuse_attach(tmp_path, "2.0")  # nothing bound yet, so only the late one can fail

    def late_attach(step: str, detail: str) -> None:
        if step == "attached":
            attach(app, "ws-late")

    with pytest.raises(BootError, match="refused to attach workspace 'ws-late'"):
        locked(app, lambda d: d.deploy("2.0", progress=late_attach))
    row = reg.deployment("default")
    assert (row.state, row.active_boot_id) == ("idle", blue)
    assert "refused to attach workspace 'ws-late'" in row.last_error
    assert bound(app) == {"ws-late": blue}
    assert reg.boot(f"green-{row.generation}").state == "failed"
