"""A daemon starts the same way whichever process starts it: `daemon.env` over a minimal
base environment, in `daemon.cwd`. A deploy by the CLI (from one shell) and a heal by the
router (started from another) give the daemon the same environment and folder."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap

import pytest

from bgdeploy.boots import BASE_PATH
from tests.conftest import poll_until, run_bgdeploy
from tests.integration.conftest import free_port_block

pytestmark = pytest.mark.slow

# A daemon that writes down what it was started with, then serves as the demo daemon.
ENV_DUMP = textwrap.dedent(
    """
    import json, os, sys
    from bgdeploy.demo import main
    with open(os.path.join(os.environ["DUMP_DIR"], os.environ["BGDEPLOY_BOOT_ID"]), "w") as f:
        json.dump({"env": dict(os.environ), "cwd": os.getcwd()}, f)
    sys.exit(main(sys.argv[1:]))
    """
)
PER_BOOT = {"BGDEPLOY_PORT", "BGDEPLOY_BOOT_ID", "BGDEPLOY_VERSION"}


def test_a_cli_deploy_and_a_router_heal_give_the_daemon_the_same_environment(stack, tmp_path):
    script = tmp_path / "env_dump.py"
    script.write_text(ENV_DUMP)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "VERSION").write_text("1.0\n")
    command = [sys.executable, str(script), "--port", "{port}", "--version", "{version}"]
    app, router = stack(
        command=command,
        stable=2,
        daemon_extra=(
            f'version_file = "VERSION"\ncwd = "run"\n'
            f'env = {{ DUMP_DIR = "{dumps}", APP_MODE = "demo" }}\n'
        ),
        router_env={
            "STARTED_FROM": "the router's shell",
            "PATH": f"/opt/router:{os.environ['PATH']}",
        },
    )
    deploy = run_bgdeploy(
        "--config",
        str(app.config.path),
        "deploy",
        "--wait",
        "30",
        cwd=tmp_path,
        env={"STARTED_FROM": "a user's shell", "PATH": f"/opt/cli:{os.environ['PATH']}"},
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    by_cli = app.registry.deployment(app.service).active_boot_id
    poll_until(lambda: app.registry.deployment(app.service).state == "idle", 20, what="finalize")

    os.killpg(app.registry.boot(by_cli).pid, signal.SIGKILL)  # the router heals it
    healed = poll_until(
        lambda: (
            (b := app.registry.deployment(app.service).active_boot_id) != by_cli
            and (dumps / str(b)).exists()
            and b
        ),
        30,
        what="the router to start a new boot",
    )

    cli_start = json.loads((dumps / by_cli).read_text())
    router_start = json.loads((dumps / str(healed)).read_text())
    assert cli_start["cwd"] == router_start["cwd"] == str(tmp_path / "run")
    cli_env = {k: v for k, v in cli_start["env"].items() if k not in PER_BOOT}
    router_env = {k: v for k, v in router_start["env"].items() if k not in PER_BOOT}
    assert cli_env == router_env
    assert "STARTED_FROM" not in cli_env, "the starter's environment leaked into the daemon"
    assert cli_env["APP_MODE"] == "demo"  # daemon.env
    assert cli_env["PATH"].split(os.pathsep) == [os.path.dirname(sys.executable), *BASE_PATH]
    assert cli_env["LANG"] == "C.UTF-8" and cli_env["HOME"]
    assert router.route() == healed


def test_a_missing_daemon_cwd_is_one_sentence(tmp_path):
    low, high = free_port_block(2)
    (tmp_path / "bgdeploy.toml").write_text(
        f'[daemon]\ncommand = ["./srv"]\ncwd = "nowhere"\nport_range = [{low}, {high}]\n'
    )
    proc = run_bgdeploy("deploy", "--version", "1.0", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"its working folder {tmp_path / 'nowhere'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
