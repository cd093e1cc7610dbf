"""The `bgdeploy` command line: parses, calls one function of `control`, renders.

Every user-facing error is a ``BgdeployError``; ``run`` catches it in one place
and prints ``Error: <sentence>`` and a hint on stderr with its exit code. A
traceback shows only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bgdeploy.errors import EXIT_USAGE, BgdeployError

app = typer.Typer(
    name="bgdeploy",
    help="Zero-downtime blue/green rollouts for a long-running local HTTP daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Options:
    config: str | None = None
    debug: bool = False


_opts = Options()


def _app():  # noqa: ANN202 - imported lazily to keep `--help` fast
    from bgdeploy.control.app import App

    return App.load(_opts.config)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


@app.callback()
def _global(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (default: $BGDEPLOY_CONFIG, else ./bgdeploy.toml).",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    _opts.config = config
    _opts.debug = debug


@app.command()
def init() -> None:
    """Write a commented starter bgdeploy.toml (if absent) and migrate the registry."""
    from bgdeploy.control.setup import init as do_init

    result = do_init(_opts.config)
    verb = "Wrote" if result.wrote_config else "Kept existing"
    out.print(f"{verb} config [bold]{result.config_path}[/]")
    out.print(f"Registry [bold]{result.registry_url}[/] at migration head {result.revision}")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status object.")] = False,
) -> None:
    """Generation, state, the active/candidate/old boots, streaks, rollback and lock."""
    from bgdeploy.control.status import status as get_status

    st = get_status(_app())
    if as_json:
        _print_json(st)
        return
    from bgdeploy.ui.tables import status_renderable

    out.print(status_renderable(st))


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N events.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a list of events.")] = False,
) -> None:
    """The deployment's events, newest first."""
    from bgdeploy.control.status import history as get_history

    events = get_history(_app(), limit)
    if as_json:
        _print_json(events)
        return
    if not events:
        out.print("No events yet: run `bgdeploy deploy` (or `bgdeploy up`).")
        return
    from bgdeploy.ui.tables import history_table

    out.print(history_table(events))


@app.command()
def logs(
    boot: Annotated[str | None, typer.Argument(help="Boot id (default: the active boot).")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Print new lines as they are written, until interrupted."
        ),
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=0, help="Only the last N lines first.")
    ] = None,
) -> None:
    """A boot's log (stdout and stderr of the daemon)."""
    from bgdeploy.control.logs import log_path, read_lines

    path = log_path(_app(), boot)
    try:
        for line in read_lines(path, tail=tail, follow=follow):
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    global _opts
    _opts = Options(debug="--debug" in args)
    command = typer.main.get_command(app)
    try:
        # Standalone mode: Typer prints its own usage errors (exit 2) and exits.
        command.main(args=args, prog_name="bgdeploy", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    except BgdeployError as e:
        if _opts.debug:
            traceback.print_exc()
        err.print(f"[bold red]Error:[/] {escape(e.message)}")
        if e.hint:
            err.print(f"[dim]Hint:[/] {escape(e.hint)}")
        return e.exit_code
    except KeyboardInterrupt:
        err.print("Interrupted.")
        return 130
    return 0


def main() -> None:
    sys.exit(run())
