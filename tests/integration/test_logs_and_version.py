"""`bgdeploy logs [--follow]` and the installed version."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from bgdeploy.config import load_config
from bgdeploy.errors import ConfigError, OperationFailed
from bgdeploy.installed import installed_version
from tests.conftest import REPO, write_config
from tests.integration.test_boots import wait


def test_logs_follow_prints_new_lines_until_interrupted(boots_for):
    b = boots_for(flags=["--access-log"])
    boot = b.start("1.0")
    wait(b, boot)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bgdeploy",
            "--config",
            str(b.app.config.path),
            "logs",
            boot.boot_id,
            "--follow",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert "starting" in proc.stdout.readline()  # what was there already
        httpx.get(f"http://127.0.0.1:{boot.port}/slow?ms=1&mark=first")
        seen = ""
        while "mark=first" not in seen:
            seen = proc.stdout.readline()
            assert seen, "logs --follow ended early"
        httpx.get(f"http://127.0.0.1:{boot.port}/slow?ms=1&mark=second")
        while "mark=second" not in seen:
            seen = proc.stdout.readline()
            assert seen, "logs --follow ended early"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_logs_without_boot_and_without_active_is_a_clear_error(tmp_path, cli):
    path = write_config(tmp_path)
    res = cli("--config", path, "logs")
    assert res.code == 1 and "There is no active boot" in res.err and "Hint:" in res.err
    res = cli("--config", path, "logs", "green-99")
    assert res.code == 1 and "There is no boot 'green-99'" in res.err


def test_logs_prints_a_boot_log(boots_for, cli):
    b = boots_for()
    boot = b.start("1.0")
    wait(b, boot)
    res = cli("--config", b.app.config.path, "logs", boot.boot_id, "--tail", "5")
    assert res.code == 0 and f"demo daemon 1.0 ({boot.boot_id})" in res.out


def test_installed_version_from_file_and_command(tmp_path):
    (tmp_path / "VERSION").write_text("2.4.1\n")
    cfg = load_config(write_config(tmp_path, '\nversion_file = "VERSION"\n'))
    assert installed_version(cfg) == "2.4.1"
    cmd = f'\nversion_command = ["{sys.executable}", "-c", "print(\' 3.0 \')"]\n'
    cfg = load_config(write_config(tmp_path, cmd))
    assert installed_version(cfg) == "3.0"


def test_installed_version_errors_are_clear(tmp_path):
    cfg = load_config(write_config(tmp_path))
    with pytest.raises(ConfigError, match="Neither daemon.version_command nor"):
        installed_version(cfg)
    cfg = load_config(write_config(tmp_path, '\nversion_command = ["false"]\n'))
    with pytest.raises(OperationFailed, match="exited with code 1"):
        installed_version(cfg)
    cfg = load_config(write_config(tmp_path, '\nversion_file = "MISSING"\n'))
    with pytest.raises(OperationFailed, match="Cannot read daemon.version_file"):
        installed_version(cfg)
