"""The engines and this machine: ``engines`` (list them), ``setup`` (prefetch
what a run needs) and ``doctor`` (check everything a run depends on)."""

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import __version__
from ..constants import ENV_CACHE
from ..errors import LipsyncError
from .console import ConsoleObserver, guard, human_size, out, setup_logging
from .options import EngineParams, command_with, common_parameters, pick

#: ``run``'s options that ``setup`` takes: the ones that decide what to fetch.
_SETUP_OPTIONS = ("engine", "cache_dir", "offline", "registry", "install_deps", "python", "log_level")


def add_commands(app: typer.Typer, engine_params: EngineParams) -> None:
    @app.command("engines", help="List the engines, their pinned upstream commits and whether they are ready.")
    def engines(cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", envvar=ENV_CACHE)] = None) -> None:
        guard(do_engines, cache_dir)

    def setup(**values: Any) -> None:
        guard(do_setup, values)

    K = inspect.Parameter.KEYWORD_ONLY
    extras = [
        inspect.Parameter("scorer", K, default=None, annotation=Annotated[Optional[str], typer.Option("--scorer", help="Also (or only, without --engine) fetch a scorer's weights: syncnet.", show_default=False)]),
        inspect.Parameter("voice", K, default=None, annotation=Annotated[Optional[str], typer.Option("--voice", help="Also (or only) fetch a text-input voice model: piper.", show_default=False)]),
        inspect.Parameter("advisor", K, default=False, annotation=Annotated[bool, typer.Option("--advisor", help="Also (or only) fetch the portrait advisor's face-alignment weights ('check').")]),
    ]
    app.command("setup", help="Prefetch the repository and checkpoints (and with --install-deps the packages) that these options need.")(
        command_with(setup, [*pick(common_parameters(), _SETUP_OPTIONS), *extras, *engine_params()])
    )

    @app.command("doctor", help="Check ffmpeg, git, Python, torch/CUDA, the cache and each engine (exit 1 if something is wrong).")
    def doctor(
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", envvar=ENV_CACHE, help="The cache folder.")] = None,
        python: Annotated[Optional[Path], typer.Option("--python", help="The engine interpreter to check.")] = None,
    ) -> None:
        guard(do_doctor, cache_dir, python)


def do_engines(cache_dir: Path | None) -> int:
    from ..config import Settings
    from ..engines import engine_classes
    from ..resources.managers import resources_for

    settings = Settings.from_env(cache_dir=cache_dir)
    for name, cls in engine_classes().items():
        res = resources_for(name, settings.cache_dir, registry_file=settings.registry)
        engine = res.engine
        status = res.status(engine.Options())
        state = "ready" if status.ready else "not ready (missing: " + ", ".join(status.missing()) + ")"
        out(f"{name:<10} {cls.display_name:<10} {res.registry.repo.url} @ {res.registry.repo.commit}  {state}")
    return 0


def do_setup(values: dict[str, Any]) -> int:
    from ..pipeline import LipSyncPipeline

    setup_logging(values.pop("log_level"))
    observer = ConsoleObserver()
    wanted = [(n, "--scorer", "syncnet") for n in [values.pop("scorer", None)] if n is not None]
    wanted += [(n, "--voice", "piper") for n in [values.pop("voice", None)] if n is not None]
    wanted += [("face_alignment", "--advisor", "face_alignment")] if values.pop("advisor", False) else []
    for name, flag, known in wanted:
        if name != known:
            from ..errors import UsageError

            raise UsageError(f"unknown name {name!r} (known: {known})", subject=flag)
        setup_component(name, values, observer)
    if wanted and values.get("engine") is None:
        return 0
    engine = values.pop("engine")
    install = values.pop("install_deps")
    python = values.pop("python", None)
    pipeline = LipSyncPipeline(engine, observer=observer, **{k: v for k, v in values.items() if v is not None})
    try:
        installed: list[str] = []
        if install:
            from ..runtime import engine_python, install_deps

            installed = install_deps(pipeline.engine, engine_python(python), options=pipeline.engine_options)
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


def setup_component(name: str, values: dict[str, Any], observer: ConsoleObserver) -> None:
    """``setup --scorer syncnet`` (``--voice piper``, ``--advisor``): its weights, fetched and verified into the cache."""
    from ..config import Settings
    from ..resources.components import SETUP_FLAGS, ComponentResources
    from ..resources.download import Downloader

    settings = Settings.from_env(cache_dir=values.get("cache_dir"), offline=values.get("offline"), registry=values.get("registry"))
    downloader = Downloader(progress=observer.download_bar, on_wait=observer.waiting, offline=settings.offline)
    res = ComponentResources(name, settings.cache_dir, registry_file=settings.registry, offline=settings.offline, downloader=downloader)
    try:
        files = res.ensure()
    finally:
        observer.done()
    out(f"The weights of {SETUP_FLAGS[name][1]} are ready.")
    for f in files.values():
        out(f"  {f.name:<36} {f.action:<10} {f.sha256[:16]}…  {f.path}")


class _Checklist:
    """``doctor``'s lines: ``[ok]``, ``[!!]`` (a problem) or ``[--]`` (for information)."""

    def __init__(self) -> None:
        self.problems = 0

    def line(self, ok: bool, what: str, detail: str) -> None:
        self.problems += 0 if ok else 1
        out(f"[{'ok' if ok else '!!'}] {what:<12} {detail}")

    def info(self, what: str, detail: str) -> None:
        out(f"[--] {what:<12} {detail}")


def do_doctor(cache_dir: Path | None, python: Path | None) -> int:
    import platform
    import shutil

    from ..config import Settings
    from ..engines import engine_classes
    from ..media import find_ffmpeg
    from ..resources.cache import Cache
    from ..resources.managers import resources_for

    check = _Checklist()
    settings = Settings.from_env(cache_dir=cache_dir)
    out(f"lipsync-tool {__version__}")
    check.line(True, "python", f"{platform.python_version()} ({sys.executable})")
    try:
        ff = find_ffmpeg(settings.ffmpeg)
        check.line(True, "ffmpeg", f"{ff.version} ({ff.path}, from {ff.source})")
    except LipsyncError as exc:
        check.line(False, "ffmpeg", str(exc))
    git = shutil.which("git")
    check.line(git is not None, "git", git or "not found (needed to clone the engines)")
    _check_torch(check, python)
    cache = Cache(settings.cache_dir)
    check.info("cache", f"{cache.root} ({human_size(cache.size_of(cache.root))})")
    for name in engine_classes():
        res = resources_for(name, settings.cache_dir, registry_file=settings.registry)
        st = res.status(res.engine.Options())
        check.line(st.ready, name, "ready" if st.ready else "not ready: missing " + ", ".join(st.missing()) + f" (run: lipsync-tool setup --engine {name})")
    return 1 if check.problems else 0


def _check_torch(check: _Checklist, python: Path | None) -> None:
    """torch in the engine interpreter, and CUDA when a GPU driver is present."""
    from ..runtime import engine_python, gpu_driver_present, package_versions

    try:
        py = engine_python(python)
        versions = package_versions(py, ["torch", "torchvision", "numpy", "librosa"])
        torch_v = versions.get("torch")
        check.line(torch_v is not None, "torch", f"{torch_v} in {py}" if torch_v else f"not installed in {py} (pip install 'lipsync-tool[all]' or --install-deps)")
        if torch_v:
            from ..runtime import probe_cuda

            info = probe_cuda(py) if gpu_driver_present() else {"cuda": False}
            check.info("cuda", "available: " + ", ".join(info.get("names") or []) if info.get("cuda") else "not available (runs use the CPU)")
    except LipsyncError as exc:
        check.line(False, "python", str(exc))
