"""The ``lipsync-tool`` command line.

Parsing only: each command hands off to one function, errors are mapped to
messages and exit codes in one table (:data:`EXIT_CODES`), and progress is
drawn here from the pipeline's observer callbacks.  Heavy libraries (torch,
cv2, librosa, git) are never imported on this path.
"""


import inspect
import logging
import shutil
import signal
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__, naming
from .constants import ENV_CACHE, ENV_DEBUG, ENV_OFFLINE, ENV_REGISTRY, OPTION_HELP, X264_PRESETS, env_flag
from .errors import DownloadError, InputError, Interrupted, LipsyncError, OfflineError, RunError, UsageError

log = logging.getLogger("lipsync_tool")

#: The one table from error types to exit codes (first match wins).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (Interrupted, 130),
    (KeyboardInterrupt, 130),
    (UsageError, 2),
    (InputError, 2),
    (OfflineError, 2),
    (DownloadError, 1),
    (RunError, 1),
    (LipsyncError, 1),
    (OSError, 1),
)

COMMON = "Common options"
OUTPUT = "Output options"
RES = "Resources"
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


class _App(typer.Typer):
    """Every command of the app gets :class:`ReadableHelpCommand`."""

    def command(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("cls", ReadableHelpCommand)
        return super().command(*args, **kwargs)


# -- output helpers (the only place that prints) -------------------------------------------


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


def report_error(exc: BaseException) -> int:
    """Print *exc* the way users read it; return its exit code."""
    code = next((c for t, c in EXIT_CODES if isinstance(exc, t)), 1)
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
    temp = getattr(exc, "temp_dir", None)
    if temp:
        err(f"The run's temp files are kept for debugging in {temp}")
    return code


class _Bar:
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

    LABELS = {
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
        self.current: _Bar | None = None
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
            self.current = _Bar(label, total=100, unit="%")
        elif name != "resources":
            self.current = _Bar(label)

    def engine_line(self, line: str) -> None:
        if self.current:
            self.current.set_postfix(line.strip())

    def progress(self, stage: str, fraction: float) -> None:
        if self.current and stage in ("upscale", "hls"):
            self.current.set_fraction(fraction)

    def notice(self, title: str, text: str) -> None:
        self._close()
        err(f"Licence notice ({title}): {text}")

    def waiting(self, what: str) -> None:
        if self.enabled:
            err(f"Another process is downloading {what}; waiting for it…")

    def download_bar(self, label: str, total: int, initial: int):
        from .resources.download import no_progress

        if not self.enabled:
            return no_progress(label, total, initial)
        return _Bar(label, total=total, bytes_=True, initial=initial)

    def done(self) -> None:
        self._close()


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


def _guard(fn, *args, **kwargs) -> None:
    """Run a command body, turning errors into messages and exit codes."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    cli_names = naming.cli_names()
    naming.use_cli_names(True)  # messages name --flags, not Python keywords
    try:
        code = fn(*args, **kwargs)
    except typer.Exit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one boundary
        if isinstance(exc, SystemExit):
            raise
        raise typer.Exit(report_error(exc)) from None
    finally:
        naming.use_cli_names(cli_names)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    if code:
        raise typer.Exit(code)


# -- engine options, generated from each engine's Options model -------------------------


def _cli_type(annotation: Any, aliases: list[str]) -> Any:
    """The CLI type for a model field's annotation (optional, so None = not given)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _cli_type(args[0], aliases)
    if origin is Literal:
        return Optional[Literal[tuple(list(typing.get_args(annotation)) + aliases)]]  # type: ignore[misc]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return Optional[str]
        return Optional[tuple[tuple(args)]]  # type: ignore[misc]
    if annotation in (bool, int, float, str, Path):
        return Optional[annotation]
    return Optional[str]


def engine_parameters() -> list[inspect.Parameter]:
    from .engines import engine_classes

    params: list[inspect.Parameter] = []
    seen: set[str] = set()
    for cls in engine_classes().values():
        panel = f"{cls.display_name} options (--engine {cls.name})"
        for fname, info in cls.Options.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            cli = extra.get("cli")
            if not cli or fname in seen:
                continue
            seen.add(fname)
            flag = cli["flag"]
            ann = _cli_type(info.annotation, list(cli.get("aliases") or []))
            opt_kwargs: dict[str, Any] = {"help": cli.get("help"), "rich_help_panel": panel, "show_default": False}
            if cli.get("metavar"):
                opt_kwargs["metavar"] = cli["metavar"]
            params.append(inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[ann, typer.Option(flag, **opt_kwargs)]))
    return params


def _common_parameters() -> list[inspect.Parameter]:
    P = inspect.Parameter
    K = P.KEYWORD_ONLY

    def opt(name: str, ann: Any, *flags: str, default: Any = None, **kw: Any) -> inspect.Parameter:
        kw.setdefault("rich_help_panel", COMMON)
        kw.setdefault("help", OPTION_HELP[name])
        return P(name, K, default=default, annotation=Annotated[ann, typer.Option(*flags, **kw)])

    return [
        P("image", K, annotation=Annotated[Path, typer.Argument(help="The portrait (any common image format; a face video for Wav2Lip).", show_default=False)]),
        P("audio", K, annotation=Annotated[Path, typer.Argument(help="The speech (wav, mp3, m4a, flac, ogg/opus, or a video's audio track).", show_default=False)]),
        P("output", K, default=None, annotation=Annotated[Optional[Path], typer.Argument(help="Where to write the video (.mp4, .mov or .mkv). May be left out with --hls.", show_default=False)]),
        opt("engine", str, "--engine", "-e", default="sadtalker"),
        opt("resolution", Optional[int], "--resolution", show_default=False),
        opt("device", Optional[str], "--device", show_default=False),
        opt("fps", Optional[float], "--fps", show_default=False),
        opt("seed", Optional[int], "--seed", show_default=False),
        opt("timeout", Optional[float], "--timeout", show_default=False, metavar="SECONDS"),
        opt("skip_face_check", bool, "--skip-face-check", default=False),
        opt("install_deps", bool, "--install-deps", default=False),
        opt("python", Optional[Path], "--python", show_default=False),
        opt("target_height", Optional[int], "--target-height", show_default=False, rich_help_panel=OUTPUT),
        opt("canvas", Optional[str], "--canvas", metavar="WxH", show_default=False, rich_help_panel=OUTPUT),
        opt("fit", Optional[Literal["pad", "crop"]], "--fit", show_default=False, rich_help_panel=OUTPUT),
        opt("crf", Optional[int], "--crf", show_default=False, rich_help_panel=OUTPUT),
        opt("x264_preset", Optional[Literal[X264_PRESETS]], "--x264-preset", metavar="PRESET", show_default=False, rich_help_panel=OUTPUT),  # type: ignore[valid-type]
        opt("no_upscale", bool, "--no-upscale", default=False, rich_help_panel=OUTPUT),
        opt("remove_audio", bool, "--remove-audio", default=False, rich_help_panel=OUTPUT),
        opt("overwrite", bool, "--overwrite", default=False, rich_help_panel=OUTPUT),
        opt("report", Optional[Path], "--report", metavar="PATH", show_default=False, rich_help_panel=OUTPUT),
        opt("keep_temp", bool, "--keep-temp", default=False, rich_help_panel=OUTPUT),
        opt("chunk_seconds", Optional[float], "--chunk-seconds", metavar="N", show_default=False, rich_help_panel=OUTPUT),
        opt("hls", Optional[Path], "--hls", metavar="DIR", show_default=False, rich_help_panel=OUTPUT),
        opt("hls_segment_seconds", Optional[float], "--hls-segment-seconds", show_default=False, rich_help_panel=OUTPUT),
        opt("cache_dir", Optional[Path], "--cache-dir", envvar=ENV_CACHE, show_default=False, rich_help_panel=RES),
        opt("offline", bool, "--offline", default=False, envvar=ENV_OFFLINE, rich_help_panel=RES),
        opt("registry", Optional[Path], "--registry", envvar=ENV_REGISTRY, metavar="FILE", show_default=False, rich_help_panel=RES),
        opt("log_level", Literal["DEBUG", "INFO", "WARNING", "ERROR"], "--log-level", default="WARNING"),
    ]


def _pipeline_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """CLI values → LipSyncPipeline keywords.  Unset options (None) are
    dropped; False stays, since ``--no-still`` means something."""
    skip = {"image", "audio", "output", "engine", "log_level"}
    return {k: v for k, v in values.items() if k not in skip and v is not None}


def do_run(**values: Any) -> int:
    from .pipeline import LipSyncPipeline

    setup_logging(values["log_level"])
    observer = ConsoleObserver()
    try:
        pipeline = LipSyncPipeline(values["engine"], observer=observer, **_pipeline_kwargs(values))
        started = time.monotonic()
        result = pipeline.run(values["image"], values["audio"], values["output"])
    finally:
        observer.done()
    media = result.report["output"].get("media", {})
    v = media.get("video") or {}
    if result.output is not None:
        out(f"Wrote {result.output} ({v.get('width')}x{v.get('height')}, {v.get('duration') or 0:.2f} s) in {time.monotonic() - started:.1f} s")
    if result.hls is not None:
        out(f"Wrote the HLS playlist {result.hls}")
    if result.temp_dir:
        out(f"Temp files kept in {result.temp_dir}:")
        for line in result.kept_files:
            out(f"  {line}")
    return 0


def _run_command(**values: Any) -> None:
    _guard(do_run, **values)


def demo_output(engine: str) -> Path:
    """``lipsync-tool demo``'s default OUTPUT: ``lipsync-demo-ENGINE.mp4`` in the current folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in engine.lower())
    return Path(f"lipsync-demo-{safe}.mp4")


def do_demo(**values: Any) -> int:
    """``run`` on the portrait and speech that ship with the package."""
    from contextlib import ExitStack
    from importlib.resources import as_file

    from .data import sample

    if values.get("output") is None and values.get("hls") is None:
        values["output"] = demo_output(values["engine"])
    with ExitStack() as stack:
        for role in ("image", "audio"):
            values[role] = stack.enter_context(as_file(sample(role)))
        out(f"Demo: the bundled portrait {values['image']}")
        out(f"      and the bundled speech {values['audio']}")
        out(f"      with --engine {values['engine']}, into {values['output'] if values['output'] is not None else values['hls']}")
        return do_run(**values)


def _demo_parameters() -> list[inspect.Parameter]:
    """``run``'s options without IMAGE and AUDIO; OUTPUT has a default."""
    params = [p for p in _common_parameters() if p.name not in ("image", "audio")]
    help_ = "Where to write the video (.mp4, .mov or .mkv). (default: lipsync-demo-ENGINE.mp4 in the current folder)"
    output = inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[Path], typer.Argument(help=help_, show_default=False)])
    return [output if p.name == "output" else p for p in params]


# -- other commands ------------------------------------------------------------------------


def do_engines(cache_dir: Path | None) -> int:
    from .config import Settings
    from .engines import engine_classes
    from .resources.managers import resources_for

    settings = Settings.from_env(cache_dir=cache_dir)
    for name, cls in engine_classes().items():
        res = resources_for(name, settings.cache_dir, registry_file=settings.registry)
        engine = res.engine
        status = res.status(engine.Options(), 256)
        state = "ready" if status.ready else "not ready (missing: " + ", ".join(status.missing()) + ")"
        out(f"{name:<10} {cls.display_name:<10} {res.registry.repo.url} @ {res.registry.repo.commit}  {state}")
    return 0


def do_setup(values: dict[str, Any]) -> int:
    from .pipeline import LipSyncPipeline

    setup_logging(values.pop("log_level"))
    observer = ConsoleObserver()
    engine = values.pop("engine")
    install = values.pop("install_deps")
    python = values.pop("python", None)
    pipeline = LipSyncPipeline(engine, observer=observer, **{k: v for k, v in values.items() if v is not None})
    try:
        installed: list[str] = []
        if install:
            from .runtime import engine_python, install_deps

            installed = install_deps(pipeline.engine, engine_python(python))
        prepared = pipeline.prepare()
    finally:
        observer.done()
    out(f"{pipeline.engine.display_name} is ready.")
    out(f"  repository: {prepared.repo_url} @ {prepared.commit}")
    out(f"  checkout:   {prepared.repo_dir}")
    for f in prepared.files:
        out(f"  {f.name:<36} {f.action:<10} {f.sha256[:16]}…  {f.path}")
    if install:
        out("  installed: " + (", ".join(installed) if installed else "nothing (all requirements were satisfied)"))
    return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


def do_cache_info(cache_dir: Path | None, registry: Path | None) -> int:
    from .config import Settings
    from .engines import engine_classes
    from .resources.cache import Cache
    from .resources.managers import resources_for

    settings = Settings.from_env(cache_dir=cache_dir, registry=registry)
    cache = Cache(settings.cache_dir)
    out(f"Cache: {cache.root} (layout {cache.base.name})")
    out(f"Total: {_human(cache.size_of(cache.root))}")
    runs = list(cache.chunks_dir().iterdir()) if cache.chunks_dir().is_dir() else []
    if runs:
        out(f"Unfinished chunked runs (reused by a rerun; 'cache clean --partial-only' removes them): {len(runs)}, {_human(cache.size_of(cache.chunks_dir()))}")
    for name in engine_classes():
        res = resources_for(name, settings.cache_dir, registry_file=settings.registry)
        st = res.status(all_files=True)
        repo_dir = cache.repo_dir(name, res.registry.repo.commit)
        size = cache.size_of(cache.repo_root(name)) + cache.size_of(cache.checkpoint_dir(name))
        out(f"\n{name}: {_human(size)}")
        out(f"  repo {res.registry.repo.commit[:12]}: {st.repo}  {repo_dir}")
        for fname, state in st.files.items():
            path = cache.checkpoint_path(name, fname)
            partial = cache.partials(path)
            extra = f" (+{_human(sum(p.stat().st_size for p in partial))} partial)" if partial else ""
            out(f"  {fname:<36} {state:<10} {_human(path.stat().st_size) if path.exists() else '':>10}{extra}")
    return 0


def do_cache_verify(cache_dir: Path | None, registry: Path | None) -> int:
    from .config import Settings
    from .engines import engine_classes
    from .resources.managers import resources_for

    settings = Settings.from_env(cache_dir=cache_dir, registry=registry)
    bad = 0
    checked = 0
    for name in engine_classes():
        res = resources_for(name, settings.cache_dir, registry_file=settings.registry)
        for fname, state in res.verify().items():
            checked += 1
            if state != "ok":
                bad += 1
                out(f"CORRUPT  {name}/{fname}  {res.cache.checkpoint_path(name, fname)} (will be fetched again on the next run)")
            else:
                out(f"ok       {name}/{fname}")
        st = res.status()
        if st.repo == "broken":
            bad += 1
            out(f"CORRUPT  {name} repository (will be cloned again on the next run)")
        elif st.repo == "ready":
            checked += 1
            if not _repo_clean(res.cache.repo_dir(name, res.registry.repo.commit)):
                bad += 1
                out(f"CORRUPT  {name} repository has local changes")
            else:
                out(f"ok       {name} repository")
    out(f"{checked} checked, {bad} corrupt")
    return 1 if bad else 0


def _repo_clean(path: Path) -> bool:
    import subprocess

    proc = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=all"], capture_output=True, check=False)
    return proc.returncode == 0 and not proc.stdout.strip()


def do_cache_clean(cache_dir: Path | None, engine: str | None, partial_only: bool) -> int:
    from .config import Settings
    from .engines import available_engines
    from .resources.cache import Cache

    settings = Settings.from_env(cache_dir=cache_dir)
    cache = Cache(settings.cache_dir)
    if engine is not None and engine not in available_engines():
        raise UsageError(f"unknown engine {engine!r}", subject="--engine", hint="Choose one of: " + ", ".join(available_engines()))
    # Unfinished chunked runs belong to no one engine: cleaned when no engine is named.
    freed, busy = cache.clean([engine] if engine else cache.engines_present(), partial_only=partial_only, chunks=engine is None)
    out(f"Freed {_human(freed)} from {cache.root}")
    for what in busy:
        out(f"  skipped {what}: in use by another process")
    return 0


def do_doctor(cache_dir: Path | None, python: Path | None) -> int:
    import platform
    import shutil

    from .config import Settings
    from .engines import engine_classes
    from .media import find_ffmpeg
    from .resources.cache import Cache
    from .resources.managers import resources_for
    from .runtime import engine_python, gpu_driver_present, package_versions

    problems = 0
    settings = Settings.from_env(cache_dir=cache_dir)

    def line(ok: bool, what: str, detail: str) -> None:
        nonlocal problems
        problems += 0 if ok else 1
        out(f"[{'ok' if ok else '!!'}] {what:<12} {detail}")

    out(f"lipsync-tool {__version__}")
    line(True, "python", f"{platform.python_version()} ({sys.executable})")
    try:
        ff = find_ffmpeg(settings.ffmpeg)
        line(True, "ffmpeg", f"{ff.version} ({ff.path}, from {ff.source})")
    except LipsyncError as exc:
        line(False, "ffmpeg", str(exc))
    git = shutil.which("git")
    line(git is not None, "git", git or "not found (needed to clone the engines)")
    try:
        py = engine_python(python)
        versions = package_versions(py, ["torch", "torchvision", "numpy", "librosa"])
        torch_v = versions.get("torch")
        line(torch_v is not None, "torch", f"{torch_v} in {py}" if torch_v else f"not installed in {py} (pip install 'lipsync-tool[all]' or --install-deps)")
        if torch_v:
            from .runtime import probe_cuda

            info = probe_cuda(py) if gpu_driver_present() else {"cuda": False}
            out(f"[--] {'cuda':<12} {'available: ' + ', '.join(info.get('names') or []) if info.get('cuda') else 'not available (runs use the CPU)'}")
    except LipsyncError as exc:
        line(False, "python", str(exc))
    cache = Cache(settings.cache_dir)
    out(f"[--] {'cache':<12} {cache.root} ({_human(cache.size_of(cache.root))})")
    for name in engine_classes():
        res = resources_for(name, settings.cache_dir, registry_file=settings.registry)
        st = res.status(res.engine.Options(), 256)
        line(st.ready, name, "ready" if st.ready else "not ready: missing " + ", ".join(st.missing()) + f" (run: lipsync-tool setup --engine {name})")
    return 1 if problems else 0


# -- the app --------------------------------------------------------------------------------


def _version_callback(value: bool) -> None:
    if value:
        out(f"lipsync-tool {__version__}")
        raise typer.Exit()


#: Invocations that never reach an engine option, so the option panels (and
#: the pydantic models behind them) need not be built.
LIGHT_INVOCATIONS = {"--help", "-h", "--version", "engines", "cache", "doctor"}


def build_app(with_engine_options: bool = True) -> typer.Typer:
    """Build the Typer app from the engine registry (plug-ins included)."""
    engine_params = engine_parameters if with_engine_options else (lambda: [])
    app = _App(
        cls=DefaultRunGroup,
        help="Turn a portrait and a speech recording into a lip-synced 1080p video with SadTalker or Wav2Lip.\n\n"
        "lipsync-tool IMAGE AUDIO OUTPUT --engine sadtalker|wav2lip [options] is short for lipsync-tool run ….",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["--help", "-h"]},
    )

    @app.callback()
    def _main(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")] = False) -> None:
        pass

    def run(**values: Any) -> None:
        _run_command(**values)

    run.__signature__ = inspect.Signature(_common_parameters() + engine_params())  # type: ignore[attr-defined]
    app.command("run", help="Lip-sync IMAGE to AUDIO and write OUTPUT (this is also the default command).")(run)

    def demo(**values: Any) -> None:
        _guard(do_demo, **values)

    demo.__signature__ = inspect.Signature(_demo_parameters() + engine_params())  # type: ignore[attr-defined]
    app.command("demo", help="Lip-sync the bundled sample portrait and speech: a first run that needs no files of your own.")(demo)

    @app.command("engines", help="List the engines, their pinned upstream commits and whether they are ready.")
    def engines(cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", envvar=ENV_CACHE)] = None) -> None:
        _guard(do_engines, cache_dir)

    def setup(**values: Any) -> None:
        _guard(do_setup, values)

    setup_params = [p for p in _common_parameters() if p.name in ("engine", "resolution", "cache_dir", "offline", "registry", "install_deps", "python", "log_level")]
    setup.__signature__ = inspect.Signature(setup_params + engine_params())  # type: ignore[attr-defined]
    app.command("setup", help="Prefetch the repository and checkpoints (and with --install-deps the packages) that these options need.")(setup)

    cache_app = _App(help="Inspect, verify and clean the cache.", no_args_is_help=True)
    app.add_typer(cache_app, name="cache")
    CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", envvar=ENV_CACHE, help="The cache folder.")]
    Registry = Annotated[Optional[Path], typer.Option("--registry", envvar=ENV_REGISTRY, help="Registry override file.")]

    @cache_app.command("info", help="Show the layout, the size per engine and what is complete.")
    def cache_info(cache_dir: CacheDir = None, registry: Registry = None) -> None:
        _guard(do_cache_info, cache_dir, registry)

    @cache_app.command("verify", help="Re-hash every cached file and report corrupt ones (exit 1 if any).")
    def cache_verify(cache_dir: CacheDir = None, registry: Registry = None) -> None:
        _guard(do_cache_verify, cache_dir, registry)

    @cache_app.command("clean", help="Delete cached repositories and checkpoints.")
    def cache_clean(
        cache_dir: CacheDir = None,
        engine: Annotated[Optional[str], typer.Option("--engine", "-e", help="Only this engine.")] = None,
        partial_only: Annotated[bool, typer.Option("--partial-only", help="Only interrupted downloads and clones.")] = False,
    ) -> None:
        _guard(do_cache_clean, cache_dir, engine, partial_only)

    @app.command("doctor", help="Check ffmpeg, git, Python, torch/CUDA, the cache and each engine (exit 1 if something is wrong).")
    def doctor(
        cache_dir: CacheDir = None,
        python: Annotated[Optional[Path], typer.Option("--python", help="The engine interpreter to check.")] = None,
    ) -> None:
        _guard(do_doctor, cache_dir, python)

    _add_workflows(app, engine_params)
    return app


def _add_workflows(app: typer.Typer, engine_params) -> None:
    """batch and compare (in their own module, built on the same options)."""
    try:
        from .workflows import add_commands
    except ImportError:
        return
    add_commands(app, common=_common_parameters, engine_params=engine_params, guard=_guard)


def main() -> None:
    args = sys.argv[1:]
    light = bool(args) and args[0] in LIGHT_INVOCATIONS
    build_app(with_engine_options=not light)(prog_name="lipsync-tool")


__all__ = ["EXIT_CODES", "build_app", "main"]
