"""What every command shares: the stderr console and one place that turns errors into exit codes."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.markup import escape

from augkit.errors import EXIT_USAGE, AugkitError

#: Progress bars, tables and errors go to stderr, so stdout stays clean for data (CSV, YAML).
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def cli_errors(fn):
    """Run a command body; print an :class:`AugkitError` (no traceback) and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AugkitError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished outputs are kept; run the same command again to resume")
            raise typer.Exit(code=130) from None

    return wrapper


def fail_usage(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code=EXIT_USAGE)


def is_tty() -> bool:
    return sys.stderr.isatty()
