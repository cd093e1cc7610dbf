"""bgdeploy does not lock itself out: its control loop drains an old boot without the
lifecycle lock, and a command that meets the control loop holding the lock waits for it
(saying for what) unless --no-wait."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import poll_until, run_bgdeploy
from tests.integration.conftest import deploy


def bgdeploy(app, *args: str):  # noqa: ANN001, ANN201 - CompletedProcess
    return run_bgdeploy("--config", str(app.config.path), *args, cwd=app.config.base_dir)


def finalized(app, generation: int) -> bool:  # noqa: ANN001
    row = app.registry.deployment("default")
    return row.generation == generation and row.state == "idle"


@pytest.mark.slow
def test_down_deploy_and_rollback_right_after_a_finalize_succeed(stack):
    app, router = stack(stable=2, interval=0.2, drain=30.0)
    reg = app.registry
    blue = deploy(app, "1.0").boot_id
    poll_until(lambda: finalized(app, 1), 20, what="generation 1 to finalize")
    with httpx.stream("GET", router.url + "/sse", timeout=30) as sse:
        assert sse.headers["x-bgdeploy-boot"] == blue
        lines = sse.iter_lines()
        assert next(lines).startswith("id: ")  # a stream in flight on blue
        deploy(app, "2.0")
        poll_until(lambda: finalized(app, 2), 20, what="the control loop to finalize gen 2")
        assert reg.boot(blue).state == "draining"  # its stream keeps it draining

        proc = bgdeploy(app, "deploy", "--version", "3.0")
        assert proc.returncode == 0, proc.stderr
        assert "3.0 is active" in proc.stdout
        # The deploy did not wait for the drain: blue still serves its stream.
        assert reg.boot(blue).state == "draining"
        assert next(lines) is not None

        proc = bgdeploy(app, "rollback")
        assert proc.returncode == 0, proc.stderr
        assert reg.boot(reg.deployment("default").active_boot_id).version == "2.0"
        assert reg.boot(blue).state == "draining"
    # the stream closed: a control loop pass stops blue, lock or no lock
    poll_until(lambda: reg.boot(blue).state == "stopped", 20, what="blue to be stopped")

    generation = reg.deployment("default").generation + 1
    deploy(app, "4.0")
    poll_until(lambda: finalized(app, generation), 20, what="the last finalize")
    proc = bgdeploy(app, "down")
    assert proc.returncode == 0, proc.stderr
    assert "Down: router stopped" in proc.stdout
    assert reg.boots("default", live_only=True) == []


@pytest.mark.slow
def test_a_command_waits_for_the_control_loop_and_no_wait_exits_3(stack, tmp_path):
    app, router = stack(
        flags=["--fault-file", str(tmp_path / "faults-{version}.json")],
        daemon_extra='version_file = "VERSION"',
        interval=0.2,
        stable=1,
    )
    (tmp_path / "VERSION").write_text("1.0\n")
    deploy(app, "1.0")
    (tmp_path / "faults-2.0.json").write_text(json.dumps({"start_delay": 12}))
    (tmp_path / "VERSION").write_text("2.0\n")  # the control loop deploys it, slowly
    poll_until(
        lambda: app.registry.deployment("default").state == "starting",
        20,
        what="the control loop to start deploying 2.0",
    )
    busy = bgdeploy(app, "deploy", "--no-wait", "--version", "2.0")
    assert busy.returncode == 3, busy.stderr
    assert "bgdeploy router control loop" in busy.stderr and "Traceback" not in busy.stderr

    waited = bgdeploy(app, "deploy", "--version", "2.0")
    assert waited.returncode == 0, waited.stderr
    assert "Waiting for the control loop (pid " in waited.stderr
    assert "deploying 2.0 as green-2 (generation 2)" in waited.stderr
    assert "2.0 is already active" in waited.stdout
