"""The ``cache`` group: ``info``, ``verify`` and ``clean``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..constants import ENV_CACHE, ENV_REGISTRY
from ..errors import UsageError
from .commands import App
from .console import guard, human_size, out

CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", envvar=ENV_CACHE, help="The cache folder.")]
Registry = Annotated[Optional[Path], typer.Option("--registry", envvar=ENV_REGISTRY, help="Registry override file.")]


def add_commands(app: typer.Typer) -> None:
    cache_app = App(help="Inspect, verify and clean the cache.", no_args_is_help=True)
    app.add_typer(cache_app, name="cache")

    @cache_app.command("info", help="Show the layout, the size per engine and what is complete.")
    def cache_info(cache_dir: CacheDir = None, registry: Registry = None) -> None:
        guard(do_cache_info, cache_dir, registry)

    @cache_app.command("verify", help="Re-hash every cached file and report corrupt ones (exit 1 if any).")
    def cache_verify(cache_dir: CacheDir = None, registry: Registry = None) -> None:
        guard(do_cache_verify, cache_dir, registry)

    @cache_app.command("clean", help="Delete cached repositories and checkpoints.")
    def cache_clean(
        cache_dir: CacheDir = None,
        engine: Annotated[Optional[str], typer.Option("--engine", "-e", help="Only this engine.")] = None,
        partial_only: Annotated[bool, typer.Option("--partial-only", help="Only interrupted downloads and clones.")] = False,
        preprocess: Annotated[bool, typer.Option("--preprocess", help="Only the cached face preprocessing (see --no-preprocess-cache).")] = False,
    ) -> None:
        guard(do_cache_clean, cache_dir, engine, partial_only, preprocess)


def do_cache_info(cache_dir: Path | None, registry: Path | None) -> int:
    from ..config import Settings
    from ..engines import engine_classes
    from ..resources.cache import Cache
    from ..resources.managers import resources_for

    settings = Settings.from_env(cache_dir=cache_dir, registry=registry)
    cache = Cache(settings.cache_dir)
    out(f"Cache: {cache.root} (layout {cache.base.name})")
    out(f"Total: {human_size(cache.size_of(cache.root))}")
    _preprocess_info(settings.cache_dir, cache)
    runs = list(cache.chunks_dir().iterdir()) if cache.chunks_dir().is_dir() else []
    if runs:
        out(f"Unfinished chunked runs (reused by a rerun; 'cache clean --partial-only' removes them): {len(runs)}, {human_size(cache.size_of(cache.chunks_dir()))}")
    for name in engine_classes():
        res = resources_for(name, settings.cache_dir, registry_file=settings.registry)
        st = res.status(all_files=True)
        repo_dir = cache.repo_dir(name, res.registry.repo.commit)
        size = cache.size_of(cache.repo_root(name)) + cache.size_of(cache.checkpoint_dir(name))
        out(f"\n{name}: {human_size(size)}")
        out(f"  repo {res.registry.repo.commit[:12]}: {st.repo}  {repo_dir}")
        for fname, state in st.files.items():
            path = cache.checkpoint_path(name, fname)
            partial = cache.partials(path)
            extra = f" (+{human_size(sum(p.stat().st_size for p in partial))} partial)" if partial else ""
            out(f"  {fname:<36} {state:<10} {human_size(path.stat().st_size) if path.exists() else '':>10}{extra}")
    _components_info(settings, cache)
    return 0


def _components(settings):
    from ..resources.components import COMPONENTS, ComponentResources

    return [ComponentResources(name, settings.cache_dir, registry_file=settings.registry) for name in COMPONENTS]


def _components_info(settings, cache) -> None:
    for res in _components(settings):
        out(f"\n{res.component} (scorer): {human_size(cache.size_of(cache.checkpoint_dir(res.component)))}")
        for fname, state in res.status().items():
            path = res.path(fname)
            out(f"  {fname:<36} {state:<10} {human_size(path.stat().st_size) if path.exists() else '':>10}")


def _preprocess_info(cache_dir: Path, cache) -> None:
    from ..resources.preprocess import PreprocessCache

    entries = PreprocessCache(cache_dir).entries()
    if not any(entries.values()):
        return
    out("Face preprocessing (reused by warm workers; 'cache clean --preprocess' removes it):")
    for engine, items in entries.items():
        if items:
            size = sum(cache.size_of(p) for p in items)
            out(f"  {engine}: {len(items)} {'entry' if len(items) == 1 else 'entries'}, {human_size(size)}")


def do_cache_verify(cache_dir: Path | None, registry: Path | None) -> int:
    from ..config import Settings
    from ..engines import engine_classes
    from ..resources.managers import resources_for

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
    for comp in _components(settings):
        for fname, state in comp.verify().items():
            checked += 1
            bad += state != "ok"
            out(f"{'ok      ' if state == 'ok' else 'CORRUPT '} {comp.component}/{fname}" + ("" if state == "ok" else f"  {comp.path(fname)} (will be fetched again)"))
    out(f"{checked} checked, {bad} corrupt")
    return 1 if bad else 0


def _repo_clean(path: Path) -> bool:
    import subprocess

    proc = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=all"], capture_output=True, check=False)
    return proc.returncode == 0 and not proc.stdout.strip()


def do_cache_clean(cache_dir: Path | None, engine: str | None, partial_only: bool, preprocess: bool = False) -> int:
    from ..config import Settings
    from ..engines import available_engines
    from ..resources.cache import Cache

    settings = Settings.from_env(cache_dir=cache_dir)
    cache = Cache(settings.cache_dir)
    if engine is not None and engine not in available_engines():
        raise UsageError(f"unknown engine {engine!r}", subject="--engine", hint="Choose one of: " + ", ".join(available_engines()))
    if preprocess:
        from ..resources.preprocess import PreprocessCache

        count, freed = PreprocessCache(settings.cache_dir).clean(engine)
        out(f"Removed {count} preprocessing {'entry' if count == 1 else 'entries'} ({human_size(freed)}) from {cache.root}")
        return 0
    # Unfinished chunked runs belong to no one engine: cleaned when no engine is named.
    freed, busy = cache.clean([engine] if engine else cache.engines_present(), partial_only=partial_only, chunks=engine is None)
    if not partial_only:
        from ..resources.preprocess import PreprocessCache

        freed += PreprocessCache(settings.cache_dir).clean(engine)[1]
    out(f"Freed {human_size(freed)} from {cache.root}")
    for what in busy:
        out(f"  skipped {what}: in use by another process")
    return 0
