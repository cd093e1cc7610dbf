"""The `bgdeploy` command line: parses, calls one function of `control`, renders.

Every user-facing error is a ``BgdeployError``; ``run`` catches it in one place
and prints ``Error: <sentence>`` and a hint on stderr with its exit code. Any other
exception is a bug: one line ``Error: unexpected <Type>: <message>``, its traceback
written to a crash log, exit 1. A traceback shows only with ``--debug``.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bgdeploy.errors import EXIT_FAILED, EXIT_USAGE, BgdeployError
from bgdeploy.faults import SIGNALS, Interrupted, as_user_error, install_signal_handlers

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


_opts = Options()


def _app():  # noqa: ANN202 - imported lazily to keep `--help` fast
    from bgdeploy.control.app import App

    a = App.load(_opts.config)
    _opts.state_dir = a.config.state_dir
    return a


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


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
    from bgdeploy.control.drain import router_inflight
    from bgdeploy.control.status import all_statuses
    from bgdeploy.control.status import status as get_status

    a = _app()
    inflight = router_inflight(a)
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


@app.command()
def up(
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run the router in this process until SIGTERM.")
    ] = False,
    no_deploy: Annotated[bool, typer.Option("--no-deploy", hidden=True)] = False,
    wait: Wait = None,
    no_wait: NoWait = False,
) -> None:
    """Start the router and deploy the installed version if nothing is active."""
    if foreground:
        from bgdeploy.faults import restore_default_signals
        from bgdeploy.routerd import serve_router

        restore_default_signals()  # the router handles SIGTERM and SIGINT itself
        serve_router(_app(), deploy_if_none=not no_deploy)
        return
    from bgdeploy.routerd import up as do_up

    with Progress() as progress:
        result = do_up(_app(), wait=wait, no_wait=no_wait, notice=_waiting, progress=progress)
    if result.deploy is not None:
        out.print(result.deploy.message)
    if result.deploy is not None and result.deploy.held:
        out.print("Router up; nothing is served until `bgdeploy promote` (deploy.auto_promote).")
    else:
        out.print("Serving." if result.started or result.deploy else "Already up: nothing to do.")


@app.command()
def down(wait: Wait = None, no_wait: NoWait = False) -> None:
    """Drain and stop the router and every boot."""
    from bgdeploy.control.router_ctl import down as do_down

    with Progress() as progress:
        n = do_down(_app(), wait=wait, no_wait=no_wait, notice=_waiting, progress=progress)
    out.print(f"Down: router stopped, {n} boot{'s' if n != 1 else ''} stopped.")


router_app = typer.Typer(help="The router supervisor and its workers.", no_args_is_help=True)
app.add_typer(router_app, name="router")


@router_app.command("reload")
def router_reload(wait: Wait = None) -> None:
    """New workers (and supervisor, if its code changed) from the installed code; the old
    ones drain; the socket never closes. Applies a changed bgdeploy.toml (checked first)."""
    from bgdeploy.routerd import reload

    answer = reload(_app(), wait=wait, notice=_waiting)
    if "replaced_supervisor" in answer:
        out.print(
            f"Reloaded: supervisor pid {answer['replaced_supervisor']} handed over to pid "
            f"{answer['supervisor']} (new code) and its workers."
        )
    else:
        pids = ", ".join(str(p) for p in answer["workers"])
        out.print(f"Reloaded: new workers {pids}; {len(answer['drained'])} old draining.")


@app.command()
def deploy(
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version to deploy (default: the installed version)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Deploy even if quarantined or already active.")
    ] = False,
    hold: Annotated[
        bool | None,
        typer.Option(
            "--hold/--no-hold",
            help="Stop at ready for `promote` (default: not deploy.auto_promote).",
            show_default=False,
        ),
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(
            "--canary",
            help="Canary steps before the switch, percent of new requests, e.g. 10,50 "
            "(default: deploy.canary; '' for none).",
            metavar="STEPS",
        ),
    ] = None,
    canary_step: Annotated[
        float | None,
        typer.Option(
            "--canary-step",
            min=0.1,
            help="Seconds per canary step (default: deploy.canary_step).",
            metavar="SECONDS",
        ),
    ] = None,
    wait: Wait = None,
    no_wait: NoWait = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """One blue/green deploy: exit 0 switched (or held), 1 aborted (active kept).

    With canary steps it waits for their verdicts (the router's control loop judges
    them): exit 0 once switched, 1 when a step failed (the active boot kept all
    traffic). Ctrl-C stops the waiting, not the canary."""
    from bgdeploy.control import operator
    from bgdeploy.control.drain import no_progress
    from bgdeploy.control.lifecycle import lifecycle

    steps = _canary_steps(canary)
    a = _app()
    progress = Progress()
    command = f"bgdeploy deploy{' --version ' + version if version else ''}"
    try:
        with (
            progress if not as_json else nullcontext(),
            lifecycle(
                a,
                command,
                wait=wait,
                no_wait=no_wait,
                notice=_waiting,
                progress=no_progress if as_json else progress,
            ) as deployer,
        ):
            result = operator.deploy(
                deployer,
                version,
                force=force,
                hold=hold,
                progress=no_progress if as_json else progress,
                canary=steps,
                canary_step=canary_step,
            )
        if result.canary:
            result = _follow_canary(a, result, quiet=as_json)
    except BgdeployError as e:
        if as_json:
            _print_json({"ok": False, "message": e.message})
        raise
    if as_json:
        _print_json(result.as_dict())
    else:
        out.print(f"[bold green]{escape(result.message)}[/] [dim](in {progress.elapsed:.1f}s)[/]")
    _notice_no_router(a)


def _canary_steps(text: str | None):  # noqa: ANN202 - tuple[int, ...] | None
    """--canary "10,50" -> (10, 50); "" -> () (none); None -> the config's."""
    from bgdeploy.config import canary_steps_ok

    if text is None:
        return None
    try:
        steps = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        steps = None
    if steps is None or not canary_steps_ok(steps):
        raise typer.BadParameter(
            f"{text!r} is not a list of at most 10 rising percentages between 1 and 99; "
            "for example "
            "--canary 10,50 (or --canary '' for a plain switch).",
            param_hint="--canary",
        )
    return tuple(steps)


def _follow_canary(a, result, *, quiet: bool):  # noqa: ANN001, ANN202 - App, DeployResult
    """Wait (without the lock) for the canary's outcome, printing each step's verdict."""
    from bgdeploy.control import canary
    from bgdeploy.errors import OperationFailed

    def line(text: str) -> None:
        if not quiet:
            out.print(f"  [cyan]canary[/] {escape(text)}")

    if not quiet:
        out.print(f"[bold]{escape(result.message)}[/]")
    try:
        switched, reason = canary.follow(a, result.generation, line)
    except Interrupted:
        err.print(
            "Stopped waiting; the canary goes on under the router's control loop "
            "(`bgdeploy status` shows it; `bgdeploy abort` ends it, `bgdeploy promote` "
            "switches now)."
        )
        raise
    if not switched:
        quarantined = result.version in a.registry.quarantined_versions(a.service)
        raise OperationFailed(
            f"Canary of {result.version} aborted: {reason}.",
            hint="The active boot kept serving"
            + (
                f"; {result.version} is quarantined (`bgdeploy deploy --version "
                f"{result.version} --force` tries it again)."
                if quarantined
                else "."
            ),
        )
    result.message = f"Generation {result.generation}: {result.version} is active on " + (
        f"{result.boot_id} after its canary steps ({reason})."
    )
    result.held = False
    return result


@app.command()
def rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in history).")] = "manual",
    wait: Wait = None,
    no_wait: NoWait = False,
) -> None:
    """Back to the old boot now (or, when idle, a blue/green deploy of the previous version).

    The version rolled back from is quarantined with the reason, and the one rolled back
    to stays until a new installed version, `deploy` or `unpin`."""
    from bgdeploy.control import operator
    from bgdeploy.control.lifecycle import lifecycle

    a = _app()
    with (
        Progress() as progress,
        lifecycle(
            a, "bgdeploy rollback", wait=wait, no_wait=no_wait, notice=_waiting, progress=progress
        ) as d,
    ):
        result = operator.rollback(d, reason, progress)
    if result.instant:
        out.print(f"[bold]{escape(result.message)}[/]")
    else:
        out.print(f"[bold green]{escape(result.message)}[/]")
    out.print(f"Kept until a new installed version or `bgdeploy unpin` (reason: {escape(reason)}).")
    _notice_no_router(a)


@app.command()
def unpin(wait: Wait = None, no_wait: NoWait = False) -> None:
    """End a `deploy --version` pin or an operator rollback: follow the installed version."""
    from bgdeploy.control import operator
    from bgdeploy.control.lifecycle import take_lock

    a = _app()
    lock = take_lock(a, "bgdeploy unpin", wait=wait, no_wait=no_wait, notice=_waiting)
    try:
        message = operator.unpin(a)
    finally:
        lock.release()
    out.print(escape(message))
    _notice_no_router(a)


def _notice_no_router(a) -> None:  # noqa: ANN001 - control.app.App
    from bgdeploy.control.operator import no_router_notice

    notice = no_router_notice(a)
    if notice is not None:
        err.print(f"[yellow]Note:[/] {escape(notice)}")


@app.command()
def reconcile(
    watch: Annotated[
        float | None, typer.Option("--watch", min=0.1, help="Repeat every S seconds.", metavar="S")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what it would do.")] = False,
) -> None:
    """One idempotent pass (or a loop) towards the desired state."""
    from bgdeploy.control.reconcile import Reconciler

    rec = Reconciler(_app())
    while True:
        report = rec.run(dry_run=dry_run)
        if report.skipped:
            out.print(f"Skipped: {escape(report.skipped)}")
        for action in report.actions:
            out.print(("[dim]would[/] " if dry_run else "") + escape(action))
        if not report.actions and not report.skipped:
            sentence = report.decision.sentence if report.decision else "nothing to do"
            out.print(escape(sentence[:1].upper() + sentence[1:]) + ".")
        if watch is None:
            return
        time.sleep(watch)


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
    global _opts
    _opts = Options(debug=args[:1] == ["--debug"])
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
from bgdeploy import cli_controls, cli_setup  # noqa: E402, F401


def main() -> None:
    sys.exit(run())
