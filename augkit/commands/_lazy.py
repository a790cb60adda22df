"""A Typer group whose commands are imported only when they run (or when their own help is asked).

``augkit --help`` lists the commands from a table of one-line helps (see :data:`augkit.cli.COMMANDS`)
instead of importing every command module; ``augkit NAME ...`` imports just ``augkit.commands.NAME``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from augkit import __version__

#: A command table: name -> (module in augkit.commands, attribute, one-line help).
Table = dict[str, tuple[str, str, str]]


def load_command(name: str, module: str, attr: str) -> Any:
    """Import ``augkit.commands.<module>`` and turn its ``<attr>`` (a function or a Typer app) into a command."""
    obj = getattr(importlib.import_module(f"augkit.commands.{module}"), attr)
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_command(obj)
    else:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name)(obj)
        cmd = typer.main.get_command(single)
    cmd.name = name
    return cmd


class LazyGroup(TyperGroup):
    """Commands from :attr:`table` are loaded on first use; the root help shows their table help."""

    table: Table = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(dict.fromkeys([*self.table, *self.commands]))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in self.table:
            return None
        module, attr, short = self.table[cmd_name]
        if self._listing:  # listing the commands in the root help: no import needed
            return TyperCommand(name=cmd_name, help=short)
        cmd = load_command(cmd_name, module, attr)
        self.commands[cmd_name] = cmd
        return cmd

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # Typer suggests only among loaded commands; suggest among all of them (nothing is imported).
        name = args[0] if args else ""
        if name and not name.startswith("-") and not ctx.resilient_parsing and name not in self.list_commands(ctx):
            close = difflib.get_close_matches(name, self.list_commands(ctx))
            ctx.fail(f"No such command {name!r}." + (f" Did you mean {', '.join(map(repr, close))}?" if close else ""))
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # e.g. while a command module is still importing
            typer.echo("interrupted", err=True)
            raise  # Typer turns it into exit 130 (augkit.cli.EXIT_INTERRUPTED), without a traceback

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"augkit {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """augkit: recipes, offline augmentation, training and TTA."""


def make_app(table: Table) -> typer.Typer:
    """The ``augkit`` Typer app over ``table``."""
    group = type("AugkitGroup", (LazyGroup,), {"table": dict(table)})
    app = typer.Typer(
        name="augkit",
        cls=group,
        help="Image data augmentation and test-time augmentation: recipes, offline augmentation, training and TTA.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    return app
