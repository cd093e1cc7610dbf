"""The `bgdeploy` command line: parses, calls one function of `control`, renders.

Every user-facing error is a ``BgdeployError``; ``run`` catches it in one place
and prints ``Error: <sentence>`` and a hint on stderr with its exit code. Any other
exception is a bug: one line ``Error: unexpected <Type>: <message>``, its traceback
written to a crash log, exit 1. A traceback shows only with ``--debug``.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bgdeploy.cli_base import _app, _opts, _print_json, app, err, out
from bgdeploy.errors import EXIT_FAILED, EXIT_USAGE, BgdeployError
from bgdeploy.faults import SIGNALS, Interrupted, as_user_error, install_signal_handlers


def _print_version(value: bool) -> None:
    if not value:
        return
    from bgdeploy import __version__
    from bgdeploy.router import build

    out.print(f"bgdeploy {__version__} (router build: {build()})")
    raise typer.Exit()


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
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks (also accepted after the command).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print bgdeploy's version and the router build, then exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    _opts.config = config
    _opts.debug = debug


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status object.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw live until interrupted.")
    ] = False,
    every: Annotated[
        bool, typer.Option("--all", help="Every service in the registry, one row each.")
    ] = False,
    tree: Annotated[
        bool, typer.Option("--tree", help="The boots as a tree (Argo style), not a table.")
    ] = False,
) -> None:
    """Generation, state, the active/candidate/old boots, streaks, rollback and lock."""
    from bgdeploy.control.status import all_statuses
    from bgdeploy.control.status import status as get_status

    a = _app()
    inflight = a.router.inflight
    if every:
        statuses = all_statuses(a, inflight())
        if as_json:
            _print_json(statuses)
        else:
            from bgdeploy.ui.tables import services_table

            out.print(services_table(statuses))
        return
    if as_json:
        _print_json(get_status(a, inflight()))
        return
    from bgdeploy.ui.tables import status_renderable

    if not watch:
        out.print(status_renderable(get_status(a, inflight()), tree))
        return
    from rich.live import Live

    with Live(
        status_renderable(get_status(a, inflight()), tree),
        console=out,
        refresh_per_second=4,
        screen=False,
    ) as live:
        try:
            while True:
                time.sleep(0.5)
                live.update(status_renderable(get_status(a, inflight()), tree))
        except (KeyboardInterrupt, Interrupted):  # how --watch ends: exit 0
            return


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Pass/warn/fail checks, each with a fix; exit 1 on any fail."""
    from bgdeploy.control.doctor import doctor as run_doctor
    from bgdeploy.control.doctor import summary

    result = summary(run_doctor(_opts.config))
    if as_json:
        _print_json(result)
    else:
        from bgdeploy.ui.tables import doctor_table

        out.print(doctor_table(result["checks"]))
        fails = sum(c["status"] == "fail" for c in result["checks"])
        warns = sum(c["status"] == "warn" for c in result["checks"])
        out.print(
            f"\n{fails} failed, {warns} warnings, {len(result['checks']) - fails - warns} passed"
        )
    if not result["ok"]:
        raise typer.Exit(1)


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N events.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a list of events.")] = False,
    service: Annotated[
        str | None,
        typer.Option("--service", help="Another service of the registry (default: this one)."),
    ] = None,
) -> None:
    """The deployment's events, newest first."""
    from bgdeploy.control.app import App
    from bgdeploy.control.status import history as get_history

    a = _app()
    events = get_history(App(a.config, service) if service else a, limit)
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
    hooks: Annotated[
        bool, typer.Option("--hooks", help="The hook log instead (every hook run, its output).")
    ] = False,
) -> None:
    """A boot's log (stdout and stderr of the daemon), or with --hooks the hook log."""
    from bgdeploy.control.logs import hooks_log_path, log_path, read_lines

    if hooks and boot is not None:
        raise typer.BadParameter("--hooks shows the hook log; leave out BOOT.")
    path = hooks_log_path(_app()) if hooks else log_path(_app(), boot)
    try:
        for line in read_lines(path, tail=tail, follow=follow):
            sys.stdout.write(line)
            sys.stdout.flush()
    except (KeyboardInterrupt, Interrupted):  # how --follow ends: exit 0
        return


# The lifecycle commands come here in `--help`: after the reading ones, before attach.
from bgdeploy import cli_lifecycle  # noqa: E402, F401


@app.command()
def attach(workspace: Annotated[str, typer.Argument(help="Workspace id.")]) -> None:
    """Bind a workspace to the active boot (only if its attach call succeeds)."""
    from bgdeploy.control.workspaces import attach as do_attach

    boot_id = do_attach(_app(), workspace)
    out.print(f"Attached {escape(workspace)} to {boot_id}.")


@app.command()
def detach(workspace: Annotated[str, typer.Argument(help="Workspace id.")]) -> None:
    """Remove a workspace binding."""
    from bgdeploy.control.workspaces import detach as do_detach

    do_detach(_app(), workspace)
    out.print(f"Detached {escape(workspace)}.")


@app.command()
def dashboard(
    open_: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
) -> None:
    """Print (and with --open, open) the dashboard URL."""
    a = _app()
    url = f"http://{a.config.router.host}:{a.config.router.admin_port}/"
    out.print(url)
    if open_:
        import webbrowser

        webbrowser.open(url)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this in-process).

    SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` (exit 130, 143, 129): our own
    handlers, because Typer turns a KeyboardInterrupt into a silent exit."""
    args = _debug_first(list(sys.argv[1:] if argv is None else argv))
    _opts.reset(debug=args[:1] == ["--debug"])
    with _signals_as_interrupts():
        try:
            return _run(args)
        except (Interrupted, KeyboardInterrupt) as e:  # one arriving after _run's handlers
            return _interrupted(e)


def _run(args: list[str]) -> int:
    command = typer.main.get_command(app)
    try:
        # Standalone mode: Typer prints its own usage errors (exit 2) and exits.
        command.main(args=args, prog_name="bgdeploy", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    except BgdeployError as e:
        return _error(e)
    except (Interrupted, KeyboardInterrupt) as e:
        return _interrupted(e)
    except Exception as e:  # noqa: BLE001 - the one place a bug becomes a sentence, not a trace
        fault = as_user_error(e)  # a full or read-only disk is a sentence, not a bug
        return _error(fault) if fault is not None else _unexpected(e, args)
    return 0


def _error(e: BgdeployError) -> int:
    if _opts.debug:
        traceback.print_exc()
    _say(f"[bold red]Error:[/] {escape(e.message)}")
    if e.hint:
        _say(f"[dim]Hint:[/] {escape(e.hint)}")
    return e.exit_code


def _interrupted(e: BaseException) -> int:
    stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
    if _opts.debug:
        traceback.print_exc()
    detail = f": {stop.detail}" if stop.detail else ""
    _say(f"[bold red]Error:[/] {escape(stop.reason)}{escape(detail)}.")
    return stop.exit_code


def _say(text: str) -> None:
    """Print to stderr; a stderr gone with its terminal (SIGHUP) is no second error."""
    with suppress(OSError, ValueError):
        err.print(text)


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    install_signal_handlers()
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _debug_first(args: list[str]) -> list[str]:
    """Accept --debug anywhere before a "--" (Click takes it only before the command)."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    return ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]


def _unexpected(e: Exception, args: list[str]) -> int:
    from bgdeploy.crash import write_crash_log

    if _opts.debug:
        traceback.print_exc()
    try:
        log = write_crash_log(e, args, _opts.state_dir or _state_dir_of_config())
    except Exception:  # noqa: BLE001 - a crash log that cannot be written is no second error
        log = None
    _say(f"[bold red]Error:[/] unexpected {type(e).__name__}: {escape(str(e))}")
    where = f"The full traceback is in {log}" if log else "No crash log could be written"
    again = shlex.join(["bgdeploy", "--debug", *(a for a in args if a != "--debug")])
    _say(f"[dim]Hint:[/] {escape(where)}; `{escape(again)}` shows it here.")
    return EXIT_FAILED


def _state_dir_of_config() -> Path | None:
    """The state dir of the config in use, if it loads (the crash may predate loading it)."""
    from bgdeploy.config import find_config_path, load_config

    try:
        return load_config(find_config_path(_opts.config)).state_dir
    except Exception:  # noqa: BLE001 - no state dir then: the crash log goes to the temp dir
        return None


# The operator controls' and the getting-started commands live in their own modules and
# add themselves to `app`.
from bgdeploy import cli_setup, cli_traffic  # noqa: E402, F401


def main() -> None:
    sys.exit(run())
