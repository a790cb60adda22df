"""What every command shares: the stderr console and one place that turns errors into exit codes."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading

import typer
from rich.console import Console
from rich.markup import escape

from augkit.errors import EXIT_USAGE, AugkitError

#: Progress bars, tables and errors go to stderr, so stdout stays clean for data (CSV, YAML).
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


#: What a command keeps when interrupted, unless it says otherwise (:func:`on_interrupt`).
KEPT_ON_INTERRUPT = "finished outputs are kept; run the same command again to resume"
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``docker stop`` and Kubernetes send), raised like a Ctrl-C so that every
    clean-up a Ctrl-C gets (records written, curves drawn) runs too; the CLI exits 143."""


def _terminate(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` for the block (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def interrupted_exit(exc: KeyboardInterrupt, note: str) -> typer.Exit:
    """Print what an interrupted command kept and return the exit (130 Ctrl-C, 143 SIGTERM)."""
    term = isinstance(exc, Terminated)
    what = "terminated (SIGTERM)" if term else "interrupted"
    with contextlib.suppress(Exception):
        err.print(f"[yellow]{what}[/]: {escape(note)}", soft_wrap=True)
    return typer.Exit(code=EXIT_TERMINATED if term else EXIT_INTERRUPTED)


def on_interrupt(note: str):
    """Say what this command keeps when interrupted (the default: :data:`KEPT_ON_INTERRUPT`)."""

    def mark(fn):
        fn.interrupt_note = note
        return fn

    return mark


def cli_errors(fn):
    """Run a command body; print an :class:`AugkitError` (no traceback) and exit with its code.
    Ctrl-C and SIGTERM end it with what the command keeps (:func:`on_interrupt`), exit 130 / 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except AugkitError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt as exc:
            raise interrupted_exit(exc, getattr(fn, "interrupt_note", KEPT_ON_INTERRUPT)) from None

    return wrapper


def fail_usage(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code=EXIT_USAGE)


def is_tty() -> bool:
    return sys.stderr.isatty()
