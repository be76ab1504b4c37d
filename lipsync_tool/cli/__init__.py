"""The ``lipsync-tool`` command line (``lipsync_tool.cli:main``).

Parsing and printing only: each command hands off to one ``do_*`` function,
which calls the library.  Errors become messages and exit codes in one place
(:func:`.console.guard`), each read from the error's class.  Heavy libraries
(torch, cv2, librosa, git) are never imported on this path, and pydantic
only when engine options are built.

- :mod:`.app`: :func:`build_app` and :func:`main`
- :mod:`.console`: text, progress bars, logging, errors and exit codes
- :mod:`.commands`: the Typer classes (readable help, ``run`` as the default)
- :mod:`.options`: the shared options, and engine options from the registry
- :mod:`.run` (``run``, ``demo``), :mod:`.info` (``engines``, ``setup``,
  ``doctor``), :mod:`.cache` (``cache …``), :mod:`.workflows` (``batch``,
  ``compare``)
"""

from .app import LIGHT_INVOCATIONS, build_app, main
from .console import exit_code_for, report_error, setup_logging
from .options import engine_parameters

__all__ = ["LIGHT_INVOCATIONS", "build_app", "engine_parameters", "exit_code_for", "main", "report_error", "setup_logging"]
