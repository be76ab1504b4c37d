"""Running an engine's command: the environment it needs, and a fresh process per job.

:class:`SubprocessRunner` is the :class:`~lipsync_tool.engines.base.EngineRunner`
the pipeline uses unless it is given another: it runs the command with
:func:`lipsync_tool.process.run_logged` (own process group, log file, line
callback, timeout), then asks the engine to translate a known failure or to
find its output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import EngineError, EngineTimeoutError
from .base import Command, Engine, EngineRunner, Job, Workspace, tail_lines

log = logging.getLogger(__name__)


def engine_env(engine: Engine, ff, ws: Workspace, prepared, *, seed: int, extra: dict[str, str]) -> dict[str, str]:
    """The environment of one engine run: this process's, plus the tool's ffmpeg
    on PATH, the compatibility shims, and the command's own variables (*extra*)."""
    from .compat import compat_env

    env = dict(os.environ)
    env.update(ff.engine_env(ws.root / "bin", copy_video_to=engine.ffmpeg_copy_video_to))
    url_map = {f.serves_url: str(f.path) for f in prepared.files if f.serves_url}
    env.update(compat_env(env.get("PYTHONPATH", ""), seed=seed, trusted=prepared.trusted(), url_map=url_map))
    # No PYTHONPYCACHEPREFIX: a fresh prefix makes the engine recompile torch & co.
    # on every run.  Upstream's own .pyc land in the link farm's real (per-run) dirs.
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "MPLBACKEND": "Agg"})
    env.update(extra)
    return env


def read_log(path: Path, offset: int = 0) -> str:
    """The engine log from *offset* on (one engine run's part of it)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class SubprocessRunner(EngineRunner):
    """A fresh engine process per job, killed with its whole group on a timeout or Ctrl-C."""

    def run(
        self,
        engine: Engine,
        command: Command,
        job: Job,
        ws: Workspace,
        *,
        env: dict[str, str],
        timeout: float,
        log_path: Path,
        on_line: Callable[[str], None] | None = None,
    ) -> Path:
        from ..process import ProcessTimeout, run_logged

        # Chunked runs append to one log: this run's part starts here.
        offset = log_path.stat().st_size if log_path.exists() else 0
        command.write_files()
        try:
            result = run_logged(command.argv, cwd=command.cwd, env=env, log_path=log_path, timeout=timeout, on_line=on_line)
        except ProcessTimeout:
            raise EngineTimeoutError(
                f"{engine.display_name} ran past the timeout of {timeout:.0f} s and was stopped",
                log_path=log_path,
                log_tail=tail_lines(read_log(log_path, offset), 15),
                hint="Raise --timeout, shorten the audio (or use --chunk-seconds), or use a GPU.",
            ) from None
        text = read_log(log_path, offset)
        translated = engine.translate_error(text, result.returncode, ws)
        if result.returncode != 0:
            if translated is not None:
                raise translated
            raise EngineError(f"{engine.display_name} failed (exit {result.returncode})", log_path=log_path, log_tail=tail_lines(text), hint=f"The full log is {log_path}.")
        try:
            return engine.find_output(ws, text)
        except EngineError:
            if translated is not None:
                raise translated from None
            raise
