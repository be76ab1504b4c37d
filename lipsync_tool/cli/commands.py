"""The Typer classes the app and its command groups are built from.

:class:`App` gives every command :class:`ReadableHelpCommand` (help that never
cuts an option name), and :class:`DefaultRunGroup` makes ``run`` the default
command.
"""

import shutil
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

#: What the top-level group answers itself: never taken for run's IMAGE.
TOP_LEVEL_FLAGS = {"--help", "-h", "--version", "--install-completion", "--show-completion"}


class DefaultRunGroup(TyperGroup):
    """``lipsync-tool IMAGE AUDIO OUTPUT …`` means ``lipsync-tool run IMAGE AUDIO OUTPUT …``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in TOP_LEVEL_FLAGS:
            args = ["run", *args]
        return super().parse_args(ctx, args)


class ReadableHelpCommand(TyperCommand):
    """Rich help panels where every option name fits the terminal; where Rich
    would cut a name (``--wav2lip-face-d…`` at 80 columns), the same panels in
    plain text, one option per line, names whole."""

    #: The narrowest help column Rich is allowed before names are at risk.
    HELP_MIN = 40

    def format_help(self, ctx, formatter) -> None:
        if self.rich_markup_mode is not None and self._rich_fits(ctx, shutil.get_terminal_size().columns):
            return super().format_help(ctx, formatter)
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                default = "Arguments" if param.param_type_name == "argument" else "Options"
                panels.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(record)
        for name, rows in panels.items():
            with formatter.section(name):
                formatter.write_dl(rows, col_max=34)
        self.format_epilog(ctx, formatter)

    def _rich_fits(self, ctx, columns: int) -> bool:
        """Whether Rich's table keeps every name whole: each column gets its
        widest cell plus padding, and the help column what is left."""
        widths = [0, 0, 0, 0]
        for p in self.get_params(ctx):
            cells = (
                [o for o in p.opts if o.startswith("--")],
                [o for o in p.opts if not o.startswith("--")] if p.param_type_name == "option" else [str(p.name)],
                [o for o in p.secondary_opts if o.startswith("--")],
                [p.display_type_rich(ctx=ctx) or ""],
            )
            for i, cell in enumerate(cells):
                # Rich folds the type column, so it need not be whole.
                widths[i] = max(widths[i], min(len(",".join(cell)), 12) if i == 3 else len(",".join(cell)))
        used = sum(w + 2 for w in widths) + 2 + 4  # cell padding, the required mark, the panel's border
        return columns - used >= self.HELP_MIN


class App(typer.Typer):
    """Every command of the app gets :class:`ReadableHelpCommand`."""

    def command(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("cls", ReadableHelpCommand)
        return super().command(*args, **kwargs)
