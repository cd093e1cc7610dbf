"""An upgrade of bgdeploy itself under load: `bgdeploy up` replaces the router supervisor and
its workers with the newly installed code, and no connection is refused or request lost.

The router runs from a venv of its own. "Installing" a version copies this checkout's
package into the venv's site-packages with ``__version__`` changed, which is what pip
does with the files; the dependencies come from the test venv through a .pth line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import psutil
import pytest
from loadgen import LoadGen

from bgdeploy import __version__
from tests.conftest import REPO, REPORT, poll_until
from tests.integration.conftest import free_port, make_app
from tests.integration.test_router_processes import Probe

NEW_VERSION = "9.9.9"


def make_venv(root: Path) -> tuple[Path, Path]:
    """A bare venv whose site-packages also sees this venv's (for the dependencies)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python, site


def install(site: Path, version: str) -> None:
    """Put a copy of the package with this version in place, as one rename."""
    staging = site / f".bgdeploy-{version}"
    shutil.copytree(REPO / "bgdeploy", staging, ignore=shutil.ignore_patterns("__pycache__"))
    init = staging / "__init__.py"
    init.write_text(
        init.read_text().replace(f'__version__ = "{__version__}"', f'__version__ = "{version}"')
    )
    target = site / "bgdeploy"
    if target.exists():
        old = site / ".bgdeploy-old"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def venv_bgdeploy(python: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(python), "-m", "bgdeploy", "--config", str(cfg), *args],
        cwd=cfg.parent,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_up_after_an_upgrade_replaces_supervisor_and_workers_under_load(tmp_path):
    port, admin_port = free_port(), free_port()
    app = make_app(
        tmp_path,
        daemon_extra='version_file = "VERSION"',
        extra=f"\n[router]\nport = {port}\nadmin_port = {admin_port}\nworkers = 2\n",
    )
    (tmp_path / "VERSION").write_text("1.0\n")
    cfg = app.config.path
    python, site = make_venv(tmp_path / "venv")
    install(site, __version__)
    admin = f"http://127.0.0.1:{admin_port}"
    load = probe = None
    try:
        first = venv_bgdeploy(python, cfg, "up")
        assert first.returncode == 0, first.stderr
        before = httpx.get(f"{admin}/api/router").json()
        assert before["version"] == __version__
        load = LoadGen(f"http://127.0.0.1:{port}", clients=8, seconds=300).start()
        probe = Probe(port).start()
        poll_until(lambda: load.stats.requests > 200, 20, what="load")

        install(site, NEW_VERSION)
        doctor = json.loads(venv_bgdeploy(python, cfg, "doctor", "--json").stdout)
        router_check = next(c for c in doctor["checks"] if c["name"] == "router")
        assert router_check["status"] == "warn"
        assert f"{__version__}, but {NEW_VERSION} is installed" in router_check["message"]

        again = venv_bgdeploy(python, cfg, "up")
        assert again.returncode == 0, again.stderr
        assert f"{__version__} -> {NEW_VERSION}" in again.stdout
        after = httpx.get(f"{admin}/api/router").json()
        assert after["version"] == NEW_VERSION and after["pid"] != before["pid"]
        serving = [w for w in after["workers"] if not w["draining"]]
        assert len(serving) == 2 and {w["version"] for w in serving} == {NEW_VERSION}
        poll_until(
            lambda: not psutil.pid_exists(before["pid"]), 30, what="the old supervisor to exit"
        )
        upgraded_at = load.stats.requests
        poll_until(lambda: load.stats.requests > upgraded_at + 200, 20, what="load after")
        status = json.loads(venv_bgdeploy(python, cfg, "status", "--json").stdout)
        assert status["router"]["version"] == NEW_VERSION
        assert status["router"]["installed_version"] == NEW_VERSION
    finally:
        stats = load.stop() if load else None
        if probe:
            probe.stop()
        down = venv_bgdeploy(python, cfg, "down")
        app.close()
    assert down.returncode == 0, down.stderr
    REPORT.append(
        f"upgrade {__version__} -> {NEW_VERSION} under load: {stats.requests} keep-alive + "
        f"{probe.requests} fresh-connection requests, {probe.refused} refused, "
        f"{stats.failures}+{len(probe.failed)} failed"
    )
    assert probe.refused == 0
    assert stats.failures == 0 and probe.failed == [], stats.errors[:5] + probe.failed
