"""bgdeploy as a user gets it: the wheel, installed into a fresh venv outside the checkout.

Nothing of the checkout is importable there: the Alembic migrations must come out of the
package. The daemon is the checkout's demo daemon, run by this interpreter (it has aiohttp).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import psutil
import pytest

from bgdeploy.processes import processes_of_state_dir
from tests.conftest import DEMO_DAEMON, REPO, poll_until
from tests.integration.conftest import free_port, free_port_block

# python -m build (a Cython compile), then pip installs that resolve every dependency from the
# index or pip's cache: minutes on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".bgdeploy",
    "*.so",
    "*.c",
)


def pip(python: Path | str, *args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` of a copy of the checkout: the sdist, and the wheel built from it."""
    root = tmp_path_factory.mktemp("dist")
    # Build from a copy, so that the build leaves nothing in the checkout.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "-o", str(root / "dist"), str(source)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root / "dist"


def fresh_venv(root: Path) -> Path:
    venv.create(root / "venv", with_pip=True)
    return root / "venv" / "bin"


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """The bin folder of a fresh venv with only the built wheel (and its dependencies)."""
    root = tmp_path_factory.mktemp("wheel")
    (wheel,) = dist.glob("bgdeploy-*.whl")
    bin_dir = fresh_venv(root)
    pip(bin_dir / "python", "install", str(wheel), cwd=root)
    return bin_dir


class Bgdeploy:
    """`bgdeploy` of a venv, run in a work folder outside the checkout."""

    def __init__(self, bin_dir: Path, work: Path) -> None:
        self.bin_dir, self.work = bin_dir, work
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "BGDEPLOY_CONFIG", "BGDEPLOY_NO_EXTENSIONS")
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "bgdeploy"), *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        assert proc.returncode == 0, f"bgdeploy {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    def cleanup(self) -> None:
        for proc in processes_of_state_dir(self.work / ".bgdeploy"):
            proc.kill()


def test_the_installed_wheel_runs_init_up_deploy_status_down(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bgdeploy = Bgdeploy(installed, work)
    env = bgdeploy.env

    where = subprocess.run(
        [str(installed / "python"), "-c", "import bgdeploy; print(bgdeploy.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where).is_relative_to(installed.parent), where  # not the checkout

    assert "at migration head" in bgdeploy("init").stdout
    config = work / "bgdeploy.toml"
    # What the starter file asks a user to change: the daemon, and ports that are free here.
    low, high = free_port_block()
    port, admin_port = free_port(), free_port()
    daemon = [sys.executable, str(DEMO_DAEMON), "--port", "{port}", "--version", "{version}"]
    text = config.read_text()
    for key, value in (
        ("command", json.dumps(daemon)),
        ("port", str(port)),
        ("admin_port", str(admin_port)),
        ("port_range", f"[{low}, {high}]"),
    ):
        line = f"{key} = {value}"
        text, n = re.subn(rf"^{key} = .*$", lambda _, line=line: line, text, flags=re.M)
        assert n == 1, key
    config.write_text(text)
    (work / "VERSION").write_text("1.0\n")
    try:
        bgdeploy("up")
        (work / "VERSION").write_text("2.0\n")
        bgdeploy("deploy")
        status = json.loads(bgdeploy("status", "--json").stdout)
        assert status["active"]["version"] == "2.0"
        assert status["active"]["boot_id"] == f"green-{status['generation']}"
        assert status["router"] is not None
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()
        assert answer["version"] == "2.0"
        pids = [status["router"]["pid"], status["active"]["pid"]]
        bgdeploy("down")
        poll_until(
            lambda: not any(psutil.pid_exists(p) and _alive(p) for p in pids),
            30,
            what="the router and the daemon to exit after down",
        )
        after = json.loads(bgdeploy("status", "--json").stdout)
        assert after["router"] is None and after["active"]["state"] == "stopped", after
    finally:
        bgdeploy.cleanup()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_sdist_installs_without_a_compiler_and_serves_pure_python(dist, tmp_path):
    """No C compiler (CC=/bin/false): the install says so once and goes on with the
    pure-Python request path; `--version`, `status` and `doctor` name that build."""
    root = tmp_path / "nocc"
    root.mkdir()
    (sdist,) = dist.glob("bgdeploy-*.tar.gz")
    bin_dir = fresh_venv(root)
    proc = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-v", "--no-cache-dir", str(sdist)],
        cwd=root,
        env={**os.environ, "CC": "/bin/false"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = (proc.stdout + proc.stderr).count("installing the pure-Python build instead")
    assert said == 1, f"the build said it {said} times"
    router_dir = next((root / "venv" / "lib").glob("python3*/site-packages/bgdeploy/router"))
    assert not list(router_dir.glob("*.so")), "a compiled module was installed"

    work = tmp_path / "work"
    work.mkdir()
    bgdeploy = Bgdeploy(bin_dir, work)
    assert "router build: pure-python" in bgdeploy("--version").stdout
    port, admin_port = free_port(), free_port()
    bgdeploy("init", "--demo", "--port", str(port), "--admin-port", str(admin_port))
    (work / "VERSION").write_text("1.0\n")
    try:
        bgdeploy("up")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["version"] == "1.0"
        (work / "VERSION").write_text("2.0\n")
        bgdeploy("deploy")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["version"] == "2.0"
        assert re.search(r"router build\s+pure-python", bgdeploy("status").stdout)
        doctor = json.loads(bgdeploy("doctor", "--json").stdout)
        (router,) = [c for c in doctor["checks"] if c["name"] == "router"]
        assert "router build: pure-python" in router["message"], router
        bgdeploy("down")
    finally:
        bgdeploy.cleanup()


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block under the README's `## heading`."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"^```{lang}\n(.*?)^```", section, re.M | re.S)
    assert match, f"no {lang} block under ## {heading}"
    return match.group(1)


def test_the_readme_quick_start_runs_verbatim_from_the_wheel(installed, tmp_path):
    """The quick start's lines, as written, in bash with the wheel's venv on PATH: the
    daemon is the packaged demo daemon; only the ports come from the environment."""
    script = readme_block("Quick start", "sh")
    assert "bgdeploy init --demo" in script and "make" not in script
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BGDEPLOY_CONFIG")}
    env.update(
        PATH=f"{installed}{os.pathsep}{env['PATH']}",
        PORT=str(port),
        ADMIN=str(admin_port),
        TMPDIR=str(tmp_path),  # where its `mktemp -d` folder goes
        COLUMNS="200",
    )
    try:
        proc = subprocess.run(
            ["bash", "-e", "-x", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = proc.stdout
        assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
        assert "Traceback" not in out + proc.stderr
        (work,) = [p for p in tmp_path.iterdir() if (p / "bgdeploy.toml").exists()]
        assert "bgdeploy.demo" in (work / "bgdeploy.toml").read_text()
        assert '"version": "1.0", "boot_id": "blue-1"' in out  # curl through the router
        # The CLI deploys 2.0, or finds that the router's control loop already did.
        assert re.search(r"2\.0 is (already )?active", out), out
        assert "Down: router stopped" in out
        assert not processes_of_state_dir(work / ".bgdeploy"), "down left processes"
    finally:
        for folder in tmp_path.iterdir():
            for leftover in processes_of_state_dir(folder / ".bgdeploy"):
                leftover.kill()
