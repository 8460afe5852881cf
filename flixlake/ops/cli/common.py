"""What every ``flixlake`` command shares: consoles, common options, settings, errors, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from flixlake.config import ConfigError, Settings, load_settings
from flixlake.ops.terminal import console, err, print_table

__all__ = ["console", "err", "print_table"]  # the commands print through these
EnvOpt = Annotated[
    str | None, typer.Option("--env", help="config environment (default $FLIXLAKE_ENV or local)")
]
BootstrapOpt = Annotated[str | None, typer.Option(help="override kafka.bootstrap_servers")]
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="state folder (default $FLIXLAKE_HOME or ./var)")
]


def settings_or_exit(env: str | None, home: Path | None) -> Settings:
    try:
        return load_settings(env, home=home)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def line_progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} lines"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
