"""An exception that is not a BgdeployError (a bug) is one line, a crash log and exit 1.

The bug is injected with a raising failpoint in the real deploy path of the real CLI.
"""

from __future__ import annotations

import stat
from pathlib import Path

from tests.conftest import run_bgdeploy, write_config

BUG = {"BGDEPLOY_FAILPOINT": "after_begin_commit:raise"}
LINE = "Error: unexpected FailpointError: failpoint after_begin_commit raised"


def crash_log_of(stderr: str):
    marker = "The full traceback is in "
    assert marker in stderr, stderr
    return Path(stderr.split(marker, 1)[1].split(";", 1)[0])


def test_a_bug_prints_one_line_and_writes_the_traceback_to_the_state_dir(tmp_path):
    config = write_config(tmp_path)
    proc = run_bgdeploy("--config", str(config), "deploy", "--version", "1.0", env=BUG)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == LINE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"bgdeploy --debug --config {config} deploy --version 1.0" in proc.stderr
    log = crash_log_of(proc.stderr)
    assert log.parent == tmp_path / ".bgdeploy" / "crash"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "FailpointError" in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_debug_shows_the_traceback_of_a_bug(tmp_path):
    config = write_config(tmp_path)
    proc = run_bgdeploy("--debug", "--config", str(config), "deploy", "--version", "1.0", env=BUG)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and LINE in proc.stderr


def test_crash_log_falls_back_to_the_temp_dir(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / ".bgdeploy").mkdir(mode=0o700)
    (tmp_path / ".bgdeploy" / "crash").write_text("not a folder")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = run_bgdeploy(
        "--config", str(config), "deploy", "--version", "1.0", env={**BUG, "TMPDIR": str(temp)}
    )
    assert proc.returncode == 1 and proc.stderr.startswith(LINE)
    log = crash_log_of(proc.stderr)
    assert log.parent == temp / "bgdeploy-crash"
    assert "FailpointError" in log.read_text()
