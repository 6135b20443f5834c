"""Sub-commands imported on first use, so ``hfserve --help`` pays only for the root command.

Importing every command module and building its click command costs as much as importing
Typer itself, on every start; the root help needs only each command's name and one-line
help, which a static table of :class:`LazyCommand` holds. A sub-command's module is imported,
and its click command built with Typer's own machinery, when it is run, asked for its help,
or completed. ``tests/cli/test_main.py`` builds every command for real and checks the table
against it, so the two cannot drift.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from gettext import gettext as _
from typing import Any, ClassVar, NamedTuple

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

# click's Command, Context and HelpFormatter, which TyperGroup's methods take: Typer names them
# nowhere public (0.29 vendors click as the private ``typer._click``; older releases use the
# click package), so these aliases keep the signatures readable without importing either.
Command = Any
Context = Any
HelpFormatter = Any

__all__ = ["LazyCommand", "LazyCommands", "LazyTyperGroup"]


class LazyCommand(NamedTuple):
    """A sub-command by reference: the Typer app or command function ``module.attribute``."""

    name: str
    module: str
    attribute: str
    short_help: str  # what click's ``get_short_help_str`` gives for the real command

    def stand_in(self) -> Command:
        """A bodiless command with this name and help: lists it as click would, importing nothing."""
        return TyperCommand(self.name, help=self.short_help)


class LazyCommands(MutableMapping[str, Command]):
    """A group's ``commands`` whose lazy entries are built on first read of their value.

    Names, order and membership come from the table, so listing, ``in`` and Typer's typo
    suggestions ("Did you mean 'serve'?", which read the keys) import nothing.
    """

    def __init__(
        self,
        lazy: Iterable[LazyCommand],
        build: Callable[[LazyCommand], Command],
        eager: Mapping[str, Command],
    ) -> None:
        self._lazy = {entry.name: entry for entry in lazy}
        self._build = build
        self._built = dict(eager)
        self._names = list(dict.fromkeys([*self._lazy, *eager]))

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            self._built[name] = self._build(self._lazy[name])
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)
        self._names.remove(name)
        self._lazy.pop(name, None)
        self._built.pop(name, None)

    def __contains__(self, name: object) -> bool:
        # Mapping's default would build the command just to answer membership.
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def peek(self, name: str) -> Command:
        """The command if already built, else its stand-in (same name and short help)."""
        if name in self._built:
            return self._built[name]
        return self._lazy[name].stand_in()


class LazyTyperGroup(TyperGroup):
    """A Typer group whose ``lazy_commands`` are imported and built when first used.

    Use it as ``typer.Typer(cls=Subclass)`` with ``lazy_commands`` set on the subclass
    (Typer instantiates the class itself, so the table cannot be a constructor argument).
    The plain-text root help lists the table's short helps; a rich help
    (``rich_markup_mode`` other than None) still builds every command to render it.
    """

    lazy_commands: ClassVar[tuple[LazyCommand, ...]] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        # Commands Typer registered directly on the app stay eager, after the lazy ones.
        self._lazy = LazyCommands(self.lazy_commands, self._build, eager=self.commands)
        self.commands = self._lazy

    def list_commands(self, ctx: Context) -> list[str]:
        """Sub-command names in table order; Typer's own version would build every command."""
        return list(self.commands)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        """The named sub-command, imported and built on first use; None if there is none."""
        # Not ``commands.get``: it would report a KeyError raised inside the command's module
        # as "No such command".
        if cmd_name not in self.commands:
            return None
        return self.commands[cmd_name]

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """The "Commands" section, from the table's short helps for commands not yet built."""
        listed = [(name, self._lazy.peek(name)) for name in self.list_commands(ctx)]
        rows = [(name, command) for name, command in listed if not command.hidden]
        if not rows:
            return
        # Same layout as click's Group.format_commands: room for 3 times the default spacing.
        limit = formatter.width - 6 - max(len(name) for name, _command in rows)
        with formatter.section(_("Commands")):
            formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])

    def _build(self, entry: LazyCommand) -> Command:
        """Import ``entry``'s module; build its command as registering it on the app would."""
        # __import__ rather than importlib.import_module: only the former is timed by
        # ``python -X importtime``, the tool for finding out what a start-up imports.
        __import__(entry.module)
        target = getattr(sys.modules[entry.module], entry.attribute)
        # A one-entry app carrying the settings Typer passes from an app to its sub-commands.
        holder = typer.Typer(
            add_completion=False,
            rich_markup_mode=self.rich_markup_mode,
            suggest_commands=self.suggest_commands,
        )
        if isinstance(target, typer.Typer):
            holder.add_typer(target, name=entry.name)
        else:
            holder.command(entry.name)(target)
        return typer.main.get_group(holder).commands[entry.name]
