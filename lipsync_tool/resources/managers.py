"""Resource managers: "repo and checkpoints ready for engine X", as paths.

Each registered engine also has an :class:`EngineResources` subclass bound to
it, named ``<display name>Resources`` (the names the proof of concept used),
made on first use by :func:`resources_class`; this module names no engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..engines import engine_classes, get_engine
from ..engines.base import CheckpointSpec, Engine, EngineOptions
from ..errors import InputError, OfflineError, ResourceError
from .cache import Cache, Stamp, atomic_write_text, sha256_file, verified_stamp, verified_twin
from .download import Downloader, FetchResult
from .registry import EngineRegistry, load_registry
from .repos import ensure_repo, repo_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedFile:
    name: str
    dest: str  # relative to the engine's working dir
    path: Path
    sha256: str
    source: str  # "cache" or "user"
    known: bool  # the sha256 is the registry's
    action: str = "cached"
    serves_url: str = ""  # a URL upstream would fetch at run time that this file answers


@dataclass
class Prepared:
    engine: str
    repo_dir: Path
    repo_url: str
    commit: str
    files: list[PreparedFile] = field(default_factory=list)

    def links(self) -> dict[str, Path]:
        return {f.dest: f.path for f in self.files}

    def trusted(self) -> list[str]:
        """Files whose content is vouched for: registry-verified or user-supplied."""
        return [str(f.path.resolve()) for f in self.files]


@dataclass
class Readiness:
    engine: str
    repo: str  # ready / missing / broken
    files: dict[str, str]  # name → ready / missing / unverified

    @property
    def ready(self) -> bool:
        return self.repo == "ready" and all(v == "ready" for v in self.files.values())

    def missing(self) -> list[str]:
        out = [] if self.repo == "ready" else ["repository"]
        return out + [n for n, v in self.files.items() if v != "ready"]


class EngineResources:
    """Everything one engine needs on disk, from a shared cache."""

    def __init__(
        self,
        engine: Engine | str,
        cache_dir: Path,
        *,
        registry_file: Path | None = None,
        offline: bool = False,
        downloader: Downloader | None = None,
        notice: Callable[[str, str], None] | None = None,
    ):
        self.engine = get_engine(engine) if isinstance(engine, str) else engine
        self.cache = Cache(cache_dir)
        self.registry: EngineRegistry = load_registry(self.engine, registry_file)
        self.offline = offline
        self.downloader = downloader or Downloader(offline=offline)
        self.downloader.offline = self.downloader.offline or offline
        try:
            self.cache.base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResourceError(
                f"cannot use it as the cache folder: {exc.strerror or exc}", subject=self.cache.root, hint="Choose another one with --cache-dir or LIPSYNC_TOOL_CACHE."
            ) from None
        self.notice = notice

    # -- what is needed -----------------------------------------------------------------

    def needed(self, options: EngineOptions) -> list[CheckpointSpec]:
        return [self.registry.spec(c.name) for c in self.engine.required_checkpoints(options)]

    def status(self, options: EngineOptions | None = None, *, all_files: bool = False) -> Readiness:
        """Readiness from stamps alone: no hashing, no network, no git (every
        file's without *options*)."""
        reg = self.registry
        repo = repo_state(self._repo_dir(), self._ready(), reg.repo, self.engine.entry_file)
        specs = list(reg.checkpoints.values()) if all_files or options is None else self.needed(options)
        files = {}
        for spec in specs:
            path = self.cache.checkpoint_path(self.engine.name, spec.name)
            files[spec.name] = "ready" if verified_stamp(path, spec.sha256) else ("unverified" if path.exists() else "missing")
        return Readiness(self.engine.name, repo, files)

    def _repo_dir(self) -> Path:
        return self.cache.repo_dir(self.engine.name, self.registry.repo.commit)

    def _ready(self) -> Path:
        return self.cache.repo_ready(self.engine.name, self.registry.repo.commit)

    # -- making it so -----------------------------------------------------------------------

    def ensure(self, options: EngineOptions) -> Prepared:
        """Clone, download and verify what *options* need; return the paths."""
        reg = self.registry
        specs = self.needed(options)
        if self.offline:
            self._check_offline(specs)
        repo_dir = ensure_repo(
            reg.repo,
            self._repo_dir(),
            self._ready(),
            self.cache.lock_path("repo", self.engine.name),
            entry_script=self.engine.entry_file,
            offline=self.offline,
        )
        prepared = Prepared(self.engine.name, repo_dir, reg.repo.url, reg.repo.commit)
        if any(download_needed(self.cache.checkpoint_path(self.engine.name, s.name), s) for s in specs):
            self._licence_notice()
        for spec in specs:
            result = self.fetch(spec)
            prepared.files.append(PreparedFile(spec.name, spec.dest, result.path, result.sha256, "cache", True, result.action, spec.serves_url))
        for dest, path in self.engine.user_files(options).items():
            prepared.files.append(self.user_file(dest, path))
        return prepared

    def fetch(self, spec: CheckpointSpec) -> FetchResult:
        dest = self.cache.checkpoint_path(self.engine.name, spec.name)
        return self.downloader.ensure(spec, dest, self.cache.lock_path("ckpt", self.engine.name, spec.name))

    def _check_offline(self, specs: list[CheckpointSpec]) -> None:
        missing = []
        if repo_state(self._repo_dir(), self._ready(), self.registry.repo, self.engine.entry_file) != "ready":
            missing.append(f"repository {self.registry.repo.url} @ {self.registry.repo.commit}")
        for spec in specs:
            path = self.cache.checkpoint_path(self.engine.name, spec.name)
            if (
                verified_stamp(path, spec.sha256) is None
                and not path.is_file()  # an unverified file is verified locally later
                and not any(u.startswith("file:") for u in spec.urls)
                and verified_twin(path, spec.sha256, spec.size) is None  # another entry's verified copy is linked
            ):
                missing.append(f"{spec.name} ({spec.size:,} bytes) → {path}")
        if missing:
            raise OfflineError(
                missing,
                hint=f"Run 'lipsync-tool setup --engine {self.engine.name}' with the same options where there is network and copy "
                f"the cache folder ({self.cache.root}) here, or give file:// mirrors in a registry override file (--registry).",
            )

    def _licence_notice(self) -> None:
        marker = self.cache.notice_marker(self.engine.name)
        if marker.exists() or not self.engine.licence_notice:
            return
        if self.notice:
            self.notice(self.engine.name, self.engine.licence_notice)
        log.info("licence of %s weights: %s", self.engine.name, self.engine.licence_notice)
        atomic_write_text(marker, "shown\n")

    # -- the user's own files ---------------------------------------------------------------

    def user_file(self, dest: str, path: Path) -> PreparedFile:
        """Hash a user-supplied file (stamped, so warm runs don't re-hash) and
        compare it with the registry entry that has the same destination."""
        if not path.is_file():
            raise InputError("no such file", subject=path, hint="Check the path of your checkpoint.")
        stamp_file = self.cache.user_stamp(path)
        stamp = Stamp.load(stamp_file)
        if stamp is None or not stamp.matches(path):
            log.info("hashing %s", path)
            stamp = Stamp.of(path, sha256_file(path))
            atomic_write_text(stamp_file, stamp.dumps())
        known_specs = [c for c in self.registry.checkpoints.values() if c.sha256 == stamp.sha256]
        expected = [c for c in self.registry.checkpoints.values() if c.dest == dest]
        name = known_specs[0].name if known_specs else (expected[0].name if expected else Path(dest).name)
        known = bool(known_specs)
        if not known:
            log.warning(
                "%s has sha256 %s, which is not in the registry%s; using it as given (a fine-tuned model is fine)",
                path,
                stamp.sha256,
                f" (expected {expected[0].name}: {expected[0].sha256})" if expected else "",
            )
        return PreparedFile(name, dest, path.resolve(), stamp.sha256, "user", known)

    # -- cache maintenance ----------------------------------------------------------------

    def verify(self, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict[str, str]:
        """Re-hash every cached file of this engine: name → ok / corrupt / missing."""
        return verify_checkpoints(self.cache, self.engine.name, list(self.registry.checkpoints.values()), progress)


def verify_checkpoints(cache: Cache, owner: str, specs: list[CheckpointSpec], progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict[str, str]:
    """Re-hash the cached files of *owner* (an engine or a component): name → ok / corrupt (absent ones are left out).

    A good file gets its stamp (re)written; a corrupt one loses it, so the next run fetches it again.
    """
    from .cache import write_stamp

    out: dict[str, str] = {}
    for spec in specs:
        path = cache.checkpoint_path(owner, spec.name)
        if not path.is_file():
            continue
        tick = progress(spec.name, path.stat().st_size) if progress else None
        good = path.stat().st_size == spec.size and sha256_file(path, tick) == spec.sha256
        out[spec.name] = "ok" if good else "corrupt"
        if good:
            write_stamp(path, spec.sha256)
        else:
            Cache.stamp_path(path).unlink(missing_ok=True)
    return out


def download_needed(path: Path, spec: CheckpointSpec) -> bool:
    return verified_stamp(path, spec.sha256) is None


_BOUND: dict[str, type[EngineResources]] = {}


def resources_class(engine: str) -> type[EngineResources]:
    """The :class:`EngineResources` subclass bound to the registered *engine*
    (``<display name>Resources(cache_dir, **kwargs)``)."""
    cls = _BOUND.get(engine)
    if cls is None:
        display = engine_classes()[engine].display_name

        def __init__(self, cache_dir: Path, **kwargs):
            EngineResources.__init__(self, engine, cache_dir, **kwargs)

        cls = type(f"{display}Resources", (EngineResources,), {"__init__": __init__, "__module__": __name__, "__doc__": f"The resources of the {engine} engine."})
        _BOUND[engine] = cls
    return cls


def __getattr__(name: str) -> type[EngineResources]:
    # The proof of concept's names (<display name>Resources), made on first use.
    for engine, cls in engine_classes().items():
        if name == f"{cls.display_name}Resources":
            return resources_class(engine)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resources_for(engine: str | Engine, cache_dir: Path, **kwargs) -> EngineResources:
    name = engine if isinstance(engine, str) else engine.name
    registered = engine_classes().get(name)
    if registered is not None and (isinstance(engine, str) or type(engine) is registered):
        return resources_class(name)(cache_dir, **kwargs)
    return EngineResources(engine, cache_dir, **kwargs)


__all__ = ["EngineResources", "Prepared", "PreparedFile", "Readiness", "resources_class", "resources_for", "verify_checkpoints"]
