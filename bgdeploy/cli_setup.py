"""Getting started: `init` (with --demo, --port, --admin-port, --command) and `demo-daemon`.

Kept out of ``cli.py`` (which imports this module at its end), like ``cli_traffic``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from bgdeploy.cli_base import _opts, app, out


@app.command()
def init(
    demo: Annotated[
        bool, typer.Option("--demo", help="Run the packaged demo daemon (stdlib only).")
    ] = False,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="router.port (default 47777).", metavar="P"),
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(
            "--admin-port", min=1, max=65535, help="router.admin_port (default 47778).", metavar="A"
        ),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="daemon.command, split into words as a shell would (never run by one), "
            'e.g. "./mydaemon --port {port}".',
            metavar="CMD",
        ),
    ] = None,
) -> None:
    """Write a commented starter bgdeploy.toml (if absent) and migrate the registry."""
    from bgdeploy.control.setup import InitChoices
    from bgdeploy.control.setup import init as do_init

    choices = InitChoices(demo=demo, port=port, admin_port=admin_port, command=command)
    result = do_init(_opts.config, choices)
    verb = "Wrote" if result.wrote_config else "Kept existing"
    out.print(f"{verb} config [bold]{result.config_path}[/]")
    out.print(f"Registry [bold]{result.registry_url}[/] at migration head {result.revision}")
    if result.wrote_config and not (demo or command):
        out.print(
            "Next: set daemon.command in it to your daemon's argv "
            "(or start over with `bgdeploy init --demo` to try the demo daemon)."
        )
    elif result.wrote_config:
        out.print(f"Daemon: {escape(' '.join(result.command))}")


@app.command(
    "demo-daemon",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def demo_daemon(ctx: typer.Context) -> None:
    """The packaged demo daemon (`--help` for its options); same as `python -m bgdeploy.demo`."""
    from bgdeploy.demo import main as demo_main

    raise typer.Exit(demo_main(list(ctx.args)))
