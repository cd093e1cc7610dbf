"""The lifecycle commands: up, down, router reload, deploy (and its canary), rollback,
unpin, scale, reconcile. Each takes the lifecycle lock through ``control`` and renders."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.markup import escape

from bgdeploy.cli_base import (
    NoWait,
    Progress,
    Wait,
    _app,
    _print_json,
    _waiting,
    app,
    err,
    out,
)
from bgdeploy.errors import BgdeployError
from bgdeploy.faults import Interrupted


@app.command()
def up(
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run the router in this process until SIGTERM.")
    ] = False,
    no_deploy: Annotated[bool, typer.Option("--no-deploy", hidden=True)] = False,
    # A router that only forwards (the benchmarks of the request path point it at
    # processes it did not start): no control loop, so no health check and no heal.
    no_control: Annotated[bool, typer.Option("--no-control", hidden=True)] = False,
    wait: Wait = None,
    no_wait: NoWait = False,
) -> None:
    """Start the router and deploy the installed version if nothing is active."""
    if foreground:
        from bgdeploy.faults import restore_default_signals
        from bgdeploy.routerd import serve_router

        restore_default_signals()  # the router handles SIGTERM and SIGINT itself
        serve_router(_app(), deploy_if_none=not no_deploy, control_loop=not no_control)
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


@app.command()
def scale(
    replicas: Annotated[int, typer.Argument(help="Daemon processes per boot (1 or more).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    wait: Wait = None,
    no_wait: NoWait = False,
) -> None:
    """Run N replicas of the daemon, balanced by the router, without a deploy.

    New replicas take traffic once healthy; removed ones leave the rotation, drain, then
    stop. Every later boot starts N (kept until the next `scale`)."""
    from bgdeploy.control.lifecycle import take_lock
    from bgdeploy.control.scale import scale as do_scale

    a = _app()
    lock = take_lock(a, "bgdeploy scale", wait=wait, no_wait=no_wait, notice=_waiting)
    try:
        result = do_scale(a, replicas)
    finally:
        lock.release()
    if as_json:
        _print_json(result.as_dict())
        return
    out.print(escape(result.message))
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
