"""Shared fixtures: a real registry (SQLite in tmp_path, or the throw-away PostgreSQL
server), config files, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bgdeploy.registry.store import Registry

REPO = Path(__file__).resolve().parents[1]
DEMO_DAEMON = REPO / "tools" / "demo_daemon.py"
sys.path.insert(0, str(REPO / "tools"))  # loadgen and friends

from pgserver import PgServer  # noqa: E402 - from tools/, on the path just above

# Figures tests want shown at the end of every run (pytest captures their prints). A test
# appends to REPORT; each line travels on its test's report (so that it also reaches the
# controlling process when pytest-xdist runs the tests in workers) into FIGURES.
REPORT: list[str] = []
FIGURES: list[str] = []
FIGURE = "bgdeploy figure"


def pytest_sessionstart(session) -> None:  # noqa: ANN001 - pytest hook
    """Refuse to test a compiled router module older than its source: it would test old code."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from bgdeploy.router import NO_EXTENSIONS

    if NO_EXTENSIONS:
        return  # the sources themselves are under test
    router = REPO / "bgdeploy" / "router"
    stale = {
        so.name
        for suffix in EXTENSION_SUFFIXES
        for so in router.glob(f"*{suffix}")
        for source in router.glob(f"{so.name.split('.')[0]}.p[yx]*")
        if so.stat().st_mtime < source.stat().st_mtime
    }
    if stale:
        pytest.exit(
            f"compiled router modules older than their sources: {', '.join(sorted(stale))}. "
            "Rebuild them with `make install`.",
            returncode=2,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201 - pytest hook
    outcome = yield
    if REPORT:
        outcome.get_result().user_properties.extend((FIGURE, line) for line in REPORT)
        REPORT.clear()


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 - pytest hook
    FIGURES.extend(value for key, value in report.user_properties if key == FIGURE)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if FIGURES:
        terminalreporter.section("bgdeploy figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


# The `status --json` object's keys (DESIGN section 6), and a boot's.
STATUS_KEYS = {
    "service",
    "generation",
    "state",
    "active",
    "candidate",
    "old",
    "switch_ts",
    "health_fail_streak",
    "health_ok_streak",
    "rollback_reason",
    "rollback_ts",
    "last_error",
    "quarantined_versions",
    "router",
    "lock",
    "held",
    "canary",
    "pause",
    "maintenance",
    "crash_loop",
    "intent",
    "installed_version",
    "decision",
}
BOOT_KEYS = {
    "boot_id",
    "version",
    "port",
    "pid",
    "state",
    "started_ts",
    "inflight",
    "traffic",
    "replicas",
}


def poll_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> object:
    """Bounded polling: return the first truthy value of predicate, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throw-away PostgreSQL server for the whole run; skips the tests that need it,
    saying why, where it cannot start."""
    try:
        server = PgServer()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no PostgreSQL server for the registry tests: {e}")
    try:
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        server.destroy()
        pytest.skip(f"the throw-away PostgreSQL server did not start: {e}")
    yield server
    server.destroy()


REGISTRIES = ["sqlite", "postgresql"]


@pytest.fixture(params=REGISTRIES)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry: a SQLite file in tmp_path, or the emptied shared database
    on the throw-away PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'registry.db'}"
    return request.getfixturevalue("pg_server").clean_database()


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    reg = Registry(registry_url)
    yield reg
    reg.close()


def demo_command(*extra: str) -> list[str]:
    """daemon.command for the demo daemon, with extra argv items after the placeholders."""
    return [sys.executable, str(DEMO_DAEMON), "--port", "{port}", "--version", "{version}", *extra]


def write_config(folder: Path, body: str = "", command: list[str] | None = None) -> Path:
    """A bgdeploy.toml in folder; body is extra TOML appended after [daemon] command."""
    cmd = command or demo_command()
    path = folder / "bgdeploy.toml"
    argv = ", ".join(json.dumps(c) for c in cmd)  # JSON strings are valid TOML strings
    body = textwrap.dedent(body)
    # Most tests send no traffic: health checks alone finalize, as before analysis. First
    # in the file, so that a test appending keys to its last section still can.
    head = "" if "[analysis]" in body else "[analysis]\nmax_wait = 0\n\n"
    path.write_text(f"{head}[daemon]\ncommand = [{argv}]\n" + body)
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `bgdeploy ARGS` in-process (same error handler as the console script)."""
    from bgdeploy.cli import run

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def run_bgdeploy(
    *args: str, cwd: Path | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a child process."""
    full_env = {**os.environ, **(env or {}), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bgdeploy", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_together(worker: Path, argvs: list[list[str]], go: Path, timeout: float) -> list[str]:
    """Start one worker script per argv, let them all go at once (by creating ``go``),
    and return what each printed; any worker that fails fails the test with its stderr."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for argv in argvs
    ]
    go.touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outputs.append(out)
    return outputs


def attached_by(registry: Registry, boot_id: str) -> set[str]:
    """The workspaces the registry records as attached to a boot."""
    from sqlalchemy import select

    from bgdeploy.registry.models import Attachment

    with registry.reading() as s:
        return set(s.scalars(select(Attachment.workspace).where(Attachment.boot_id == boot_id)))


def head_revision() -> str | None:
    """The newest migration the installed bgdeploy ships."""
    from alembic.script import ScriptDirectory

    from bgdeploy.registry.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
