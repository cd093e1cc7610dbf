"""What every `bgdeploy` command module shares: the Typer app, the consoles, the global
options, the app loader, JSON output, the lock-wait options and the deploy progress.

The commands live in ``cli.py`` (reading and the error handler), ``cli_lifecycle.py``
(up, down, deploy, rollback, ...), ``cli_traffic.py`` and ``cli_setup.py``; each
imports from here, and none from another.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="bgdeploy",
    help="Zero-downtime blue/green rollouts for a long-running local HTTP daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (tests, logs) gets wide lines rather than rich's 80-column default.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Options:
    config: str | None = None
    debug: bool = False
    state_dir: Path | None = None  # known once a command loaded its config: crash logs go there

    def reset(self, debug: bool = False) -> None:
        """A new run (tests run many in one process): every module shares this object."""
        self.config, self.debug, self.state_dir = None, debug, None


_opts = Options()


def _app():  # noqa: ANN202 - imported lazily to keep `--help` fast
    from bgdeploy.control.app import App

    a = App.load(_opts.config)
    _opts.state_dir = a.config.state_dir
    return a


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


Wait = Annotated[
    float | None,
    typer.Option(
        "--wait", min=0, help="Wait up to SECONDS for the lifecycle lock.", metavar="SECONDS"
    ),
]
NoWait = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="Exit 3 at once when the lock is busy, even if bgdeploy's own control loop "
        "holds it (by default that is waited for).",
    ),
]


def _waiting(text: str) -> None:
    """A wait on the lock: one line saying for whom, and the spinner says it too."""
    text = text[:1].upper() + text[1:]
    err.print(f"[dim]{escape(text)}…[/]")
    if Progress.current is not None and Progress.current.spinner is not None:
        Progress.current.spinner.update(escape(text) + "…")


NEXT_ACTIVITY = {
    "router": "checking the active boot",
    "finalized": "starting the deploy",
    "aborted": "starting the deploy",
    "rolled back": "starting the deploy",
    "begin": "spawning the candidate",
    "starting": "waiting for the candidate to become healthy",
    "healthy": "attaching workspaces",
    "attached": "switching traffic",
    "draining": "waiting for requests in flight to finish",
}


class Progress:
    """Deploy progress: a line per finished step with its duration, a spinner between."""

    current: Progress | None = None  # the one a command runs under, for _waiting

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.spinner: Any = None

    def __call__(self, step: str, detail: str) -> None:
        now = time.monotonic()
        mark = "[red]✗[/]" if step == "aborted" else "[green]✓[/]"
        out.print(
            f"{mark} [bold]{escape(step):<9}[/] {escape(detail)} [dim]({now - self.last:.2f}s)[/]"
        )
        self.last = now
        if self.spinner is not None:
            self.spinner.update(NEXT_ACTIVITY.get(step, "working") + "…")

    def __enter__(self) -> Progress:
        if out.is_terminal:
            self.spinner = out.status("starting…")
            self.spinner.__enter__()
        Progress.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        Progress.current = None
        if self.spinner is not None:
            self.spinner.__exit__(*exc)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
