"""The ``lipsync-tool`` app: the command groups put together, and :func:`main`."""

import sys
from typing import Annotated

import typer

from .. import __version__
from . import cache, check, info, run, score, serve, workflows
from .commands import App, DefaultRunGroup
from .console import out
from .options import engine_parameters, no_engine_parameters

#: Invocations that never reach an engine option, so the option panels (and
#: the pydantic models behind them) need not be built.
LIGHT_INVOCATIONS = {"--help", "-h", "--version", "engines", "cache", "doctor", "serve", "score", "check"}

_HELP = (
    "Turn a portrait and a speech recording into a lip-synced 1080p video with SadTalker or Wav2Lip.\n\n"
    "lipsync-tool IMAGE AUDIO OUTPUT --engine sadtalker|wav2lip [options] is short for lipsync-tool run …."
)


def _version_callback(value: bool) -> None:
    if value:
        out(f"lipsync-tool {__version__}")
        raise typer.Exit()


def build_app(with_engine_options: bool = True) -> typer.Typer:
    """Build the Typer app from the engine registry (plug-ins included).

    Commands appear in help in the order they are added here (groups last).
    """
    engine_params = engine_parameters if with_engine_options else no_engine_parameters
    app = App(
        cls=DefaultRunGroup,
        help=_HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["--help", "-h"]},
    )

    @app.callback()
    def _main(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")] = False) -> None:
        pass

    run.add_commands(app, engine_params)
    info.add_commands(app, engine_params)
    cache.add_commands(app)
    workflows.add_commands(app, engine_params)
    score.add_commands(app)
    check.add_commands(app)
    serve.add_commands(app)
    return app


def main() -> None:
    args = sys.argv[1:]
    light = bool(args) and args[0] in LIGHT_INVOCATIONS
    build_app(with_engine_options=not light)(prog_name="lipsync-tool")
