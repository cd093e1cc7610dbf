"""The commands that steer traffic: promote or abort a held candidate, pause/resume,
maintenance on/off.

Kept out of ``cli.py`` (which imports this module at its end) so that each stays
readable; they use the same app, console and helpers.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from bgdeploy.cli_base import Progress, Wait, _app, _print_json, _waiting, app, out

Generation = Annotated[
    int | None,
    typer.Option(
        "--generation",
        min=1,
        help="Only if the held deploy is still this generation (else a no-op).",
        show_default=False,
    ),
]


def _held_result(result: Any, as_json: bool) -> None:
    if as_json:
        _print_json(result.as_dict())
    elif result.applied:
        out.print(f"[bold green]{escape(result.message)}[/]")
    else:
        out.print(f"[yellow]{escape(result.message)}[/]")


@app.command()
def promote(
    generation: Generation = None,
    wait: Wait = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Switch to the candidate held at ready (by `deploy --hold`)."""
    from bgdeploy.control import hold
    from bgdeploy.control.deploy import Deployer
    from bgdeploy.control.lifecycle import take_lock

    a = _app()
    lock = take_lock(a, "bgdeploy promote", wait=wait, notice=_waiting)
    try:
        if as_json:
            result = hold.promote(Deployer(a), generation)
        else:
            with Progress() as progress:
                result = hold.promote(Deployer(a), generation, progress=progress)
    finally:
        lock.release()
    _held_result(result, as_json)


@app.command()
def abort(
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in history).")] = "manual",
    generation: Generation = None,
    wait: Wait = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Stop the candidate held at ready and record why; the active boot is kept."""
    from bgdeploy.control import hold
    from bgdeploy.control.deploy import Deployer
    from bgdeploy.control.lifecycle import take_lock

    a = _app()
    lock = take_lock(a, "bgdeploy abort", wait=wait, notice=_waiting)
    try:
        result = hold.abort(Deployer(a), f"aborted by operator: {reason}", generation)
    finally:
        lock.release()
    _held_result(result, as_json)


@app.command()
def pause(
    max_: Annotated[
        float,
        typer.Option(
            "--max", min=0.1, help="Hold requests at most S seconds, then 503.", metavar="S"
        ),
    ] = 30.0,
) -> None:
    """Hold new requests in the router (queued, not refused) until `resume`."""
    from bgdeploy.control.pause_maintenance import pause as do_pause

    out.print(do_pause(_app(), max_))


@app.command()
def resume() -> None:
    """Release the requests held by `pause`, in arrival order."""
    from bgdeploy.control.pause_maintenance import resume as do_resume

    out.print(do_resume(_app()))


maintenance_app = typer.Typer(
    help="Answer every new request with 503 and a short page (on), or stop (off).",
    no_args_is_help=True,
)
app.add_typer(maintenance_app, name="maintenance")


@maintenance_app.command("on")
def maintenance_on(
    message: Annotated[
        str | None, typer.Option("--message", help="Shown on the maintenance page.")
    ] = None,
    retry_after: Annotated[
        int, typer.Option("--retry-after", min=1, help="Retry-After seconds.", metavar="S")
    ] = 60,
) -> None:
    """503 with Retry-After and a short page (HTML, or JSON for Accept: application/json)."""
    from bgdeploy.control.pause_maintenance import maintenance_on as do_on

    out.print(do_on(_app(), message, retry_after))


@maintenance_app.command("off")
def maintenance_off() -> None:
    """Forward requests again."""
    from bgdeploy.control.pause_maintenance import maintenance_off as do_off

    out.print(do_off(_app()))
