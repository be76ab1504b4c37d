"""What the CLI shows: text, progress bars, and errors with their exit codes.

The only module of the package that writes to the terminal (the command
modules call :func:`out` and :func:`err`).  Library code reports through the
observer callbacks drawn here and raises typed errors, which :func:`guard`
turns into a message and an exit code read from the error's own class
(:func:`exit_code_for`).  tqdm is imported only when a bar is drawn.
"""

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import typer

from .. import naming
from ..constants import ENV_DEBUG, env_flag
from ..errors import Interrupted, LipsyncError

#: Progress bars on screen; text printed meanwhile goes through tqdm.write so
#: it lands above them instead of through them.
_ACTIVE_BARS = 0


def err(text: str) -> None:
    if _ACTIVE_BARS:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def out(text: str = "") -> None:
    print(text, flush=True)


def is_tty() -> bool:
    return sys.stderr.isatty()


# -- errors ----------------------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    """The exit code of *exc*: our errors carry theirs on the class
    (:attr:`LipsyncError.exit_code`); Ctrl-C is 130; anything else is 1."""
    if isinstance(exc, LipsyncError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def report_error(exc: BaseException, temp_dir: Path | None = None) -> int:
    """Print *exc* the way users read it (and *temp_dir*, the temp dir its
    run kept for debugging); return its exit code."""
    if env_flag(ENV_DEBUG):
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        err("Interrupted.")
    elif isinstance(exc, LipsyncError):
        err(f"Error: {exc}")
        if exc.hint:
            err(f"Hint: {exc.hint}")
    elif isinstance(exc, OSError) and (exc.filename or exc.strerror):
        # The machine said no (a full disk, a missing or read-only folder): not a bug.
        err(f"Error: {exc.filename or 'system'}: {exc.strerror or exc}")
        err("Hint: check free space and permissions of that path.")
    else:
        err(f"Error: unexpected {type(exc).__name__}: {exc}")
        err(f"Hint: this is a bug in lipsync-tool; rerun with {ENV_DEBUG}=1 for the traceback and report it.")
    if temp_dir:
        err(f"The run's temp files are kept for debugging in {temp_dir}")
    return exit_code_for(exc)


class _RunFailed(Exception):
    """A run's error together with the temp dir the run kept for debugging,
    from :func:`keeping_temp_dir` to :func:`guard` (the error itself is never
    altered after it is raised)."""

    def __init__(self, error: Exception, temp_dir: Path):
        super().__init__(str(error))
        self.error, self.temp_dir = error, temp_dir


@contextmanager
def keeping_temp_dir(pipeline) -> Iterator[None]:
    """An error from *pipeline*'s run is reported with the temp dir that run
    kept (``pipeline.last_failure``)."""
    try:
        yield
    except Exception as exc:
        failure = pipeline.last_failure
        if failure is None or failure.error is not exc or not failure.temp_dir:
            raise
        raise _RunFailed(exc, failure.temp_dir) from exc


def guard(fn, *args: Any, **kwargs: Any) -> None:
    """Run a command body, turning errors into messages and exit codes.

    The one boundary where exceptions are caught: SIGTERM becomes Ctrl-C (so
    a killed run cleans up like an interrupted one), and messages name
    ``--flags`` instead of Python keywords while the body runs.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    cli_names = naming.cli_names()
    naming.use_cli_names(True)
    try:
        code = fn(*args, **kwargs)
    except typer.Exit:
        raise
    except BaseException as exc:  # the one boundary
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, _RunFailed):
            raise typer.Exit(report_error(exc.error, exc.temp_dir)) from None
        raise typer.Exit(report_error(exc)) from None
    finally:
        naming.use_cli_names(cli_names)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    if code:
        raise typer.Exit(code)


# -- logging ---------------------------------------------------------------------------------


class _ConsoleHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (and above progress bars)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(level: str) -> None:
    level = level.upper()
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if level != "DEBUG" else "%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger("lipsync_tool")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level, logging.WARNING))
    root.propagate = False


# -- plain-text formatting -------------------------------------------------------------------


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


def format_seconds(seconds: float | None) -> str:
    return f"{seconds:.1f} s" if seconds else "–"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, one string per line."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


# -- progress --------------------------------------------------------------------------------


class Bar:
    """A tqdm bar (on a TTY) that also ticks on its own while a stage runs."""

    def __init__(self, desc: str, total: float | None = None, unit: str = "it", bytes_: bool = False, initial: int = 0):
        from tqdm import tqdm

        global _ACTIVE_BARS
        _ACTIVE_BARS += 1
        self._closed = False
        fmt = None if total else "{desc} {elapsed} {postfix}"
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="B" if bytes_ else unit, unit_scale=bytes_, unit_divisor=1024 if bytes_ else 1000, bar_format=fmt, leave=False, dynamic_ncols=True, file=sys.stderr)
        self._stop = threading.Event()
        self._ticker = None
        if not total:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _tick(self):
        while not self._stop.wait(0.5):
            self.bar.refresh()

    def update(self, n: int) -> None:
        self.bar.update(n)

    def set_postfix(self, text: str) -> None:
        self.bar.set_postfix_str(text[-60:], refresh=False)

    def set_fraction(self, f: float) -> None:
        self.bar.n = round(f * (self.bar.total or 100), 1)
        self.bar.refresh()

    def close(self) -> None:
        global _ACTIVE_BARS
        if not self._closed:
            self._closed = True
            _ACTIVE_BARS -= 1
        self._stop.set()
        self.bar.close()


class ConsoleObserver:
    """Draws the pipeline's progress on a TTY; says nothing otherwise."""

    LABELS: ClassVar[dict[str, str]] = {
        "validate": "Checking inputs",
        "install-deps": "Installing dependencies",
        "resources": "Preparing engine",
        "stage": "Staging",
        "engine": "Running",
        "upscale": "Upscaling",
        "publish": "Publishing",
        "hls": "Publishing HLS segments",
    }

    def __init__(self, enabled: bool | None = None, prefix: str = ""):
        self.enabled = is_tty() if enabled is None else enabled
        self.prefix = prefix
        self.current: Bar | None = None
        self.started = time.monotonic()

    def _close(self):
        if self.current:
            self.current.close()
            self.current = None

    def stage(self, name: str, detail: str = "") -> None:
        self._close()
        if not self.enabled:
            return
        label = self.prefix + self.LABELS.get(name, name) + (f" {detail}" if detail else "")
        if name in ("upscale", "hls"):
            self.current = Bar(label, total=100, unit="%")
        elif name != "resources":
            self.current = Bar(label)

    def engine_line(self, line: str) -> None:
        if self.current:
            self.current.set_postfix(line.strip())

    def progress(self, stage: str, fraction: float) -> None:
        if self.current and stage in ("upscale", "hls"):
            self.current.set_fraction(fraction)
        elif self.current and stage == "engine":  # a warm worker's frames, as they stream into the encode
            self.current.set_postfix(f"{fraction:.0%} of the frames encoded")

    def notice(self, title: str, text: str) -> None:
        self._close()
        err(f"Licence notice ({title}): {text}")

    def waiting(self, what: str) -> None:
        if self.enabled:
            err(f"Another process is downloading {what}; waiting for it…")

    def download_bar(self, label: str, total: int, initial: int):
        from ..resources.download import no_progress

        if not self.enabled:
            return no_progress(label, total, initial)
        return Bar(label, total=total, bytes_=True, initial=initial)

    def done(self) -> None:
        self._close()


class ConsoleBatchObserver:
    """A jobs bar with an ETA, and each job's stages, on a TTY; quiet otherwise."""

    def __init__(self, jobs: int, enabled: bool | None = None):
        self.enabled = is_tty() if enabled is None else enabled
        self.parallel = jobs > 1
        self.check_bar: Bar | None = None
        self.bar = None
        self._setup: dict[str, ConsoleObserver] = {}
        self._observers: dict[int, ConsoleObserver] = {}
        self._lock = threading.Lock()
        self.engine_job: int | None = None

    def say(self, text: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
        else:
            err(text)

    # BatchObserver ------------------------------------------------------------------------

    def validating(self, files: int) -> None:
        if self.enabled and files:
            self.check_bar = Bar("Checking inputs", total=files, unit="file")

    def file_checked(self) -> None:
        if self.check_bar:
            with self._lock:
                self.check_bar.update(1)

    def setup_observer(self, engine: str):
        if engine not in self._setup:
            self._setup[engine] = ConsoleObserver(self.enabled, prefix=f"[{engine}] ")
        return self._setup[engine]

    def started(self, to_run: int, skipped: int) -> None:
        if self.check_bar:
            self.check_bar.close()
            self.check_bar = None
        if skipped:
            self.say(f"Skipping {skipped} finished job{'s' if skipped != 1 else ''} (--force runs them again).")
        if self.enabled and to_run:
            from tqdm import tqdm

            self.bar = tqdm(total=to_run, desc="Batch", unit="job", dynamic_ncols=True, file=sys.stderr, position=0)

    def job_observer(self, job):
        if self.parallel:
            return _StatusObserver(self, job)
        obs = ConsoleObserver(self.enabled, prefix=f"[{job.index}] {job.name}: ")
        self._observers[job.index] = obs
        return obs

    def job_started(self, job) -> None: ...

    def job_finished(self, result) -> None:
        if (obs := self._observers.pop(result.job.index, None)) is not None:
            obs.done()
        if self.bar is not None:
            self.bar.update(1)
        if result.status == "failed" and result.error:
            first = (result.error.get("message") or "").splitlines()[:1]
            self.say(f"Job {result.job.index} ({result.job.name}, line {result.job.line}) failed: {first[0] if first else result.error.get('type')}")

    def done(self) -> None:
        for obs in [*self._observers.values(), *self._setup.values()]:
            obs.done()
        self._observers.clear()
        if self.check_bar:
            self.check_bar.close()
            self.check_bar = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _StatusObserver:
    """With --jobs N: the running job's stage in the jobs bar, nothing else."""

    def __init__(self, parent: ConsoleBatchObserver, job):
        self.parent, self.job = parent, job

    def stage(self, name: str, detail: str = "") -> None:
        bar = self.parent.bar
        if bar is None:
            return
        if name == "engine":
            self.parent.engine_job = self.job.index
            bar.set_postfix_str(f"engine: {self.job.name}", refresh=False)
        elif name == "upscale" and self.parent.engine_job == self.job.index:
            bar.set_postfix_str("", refresh=False)

    def engine_line(self, line: str) -> None:
        if self.parent.bar is not None:
            self.parent.bar.set_postfix_str(f"engine: {self.job.name} {line.strip()[-40:]}", refresh=False)

    def progress(self, stage: str, fraction: float) -> None: ...

    def notice(self, title: str, text: str) -> None:
        self.parent.say(f"Licence notice ({title}): {text}")

    def waiting(self, what: str) -> None: ...

    def download_bar(self, label: str, total: int, initial: int):
        from ..resources.download import no_progress

        return no_progress(label, total, initial)
