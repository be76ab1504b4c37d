"""Weights that are not an engine's: the SyncNet scorer's, through the same verified cache.

A component has checkpoints but no repository.  Its files live in the cache
beside the engines' (``<cache>/v1/checkpoints/<component>/<name>``), are
fetched by the same :class:`~.download.Downloader` (mirrors, resume, size and
sha256) and can be overridden in the registry file the same way::

    [syncnet.checkpoints."syncnet_v2.model"]
    urls = ["file:///srv/mirror/syncnet_v2.model"]
    sha256 = "961e8696…"
    size = 54573114
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import OfflineError, ResourceError
from .cache import Cache, verified_stamp, verified_twin
from .download import Downloader
from .registry import COMPONENTS, component_specs, read_override

log = logging.getLogger(__name__)

#: component → the ``setup`` flags that fetch it ahead (and what it is, for messages).
SETUP_FLAGS = {"syncnet": ("--scorer syncnet", "the SyncNet scorer"), "piper": ("--voice piper", "the piper voice"), "face_alignment": ("--advisor", "the portrait advisor")}


def setup_command(component: str) -> str:
    return f"lipsync-tool setup {SETUP_FLAGS.get(component, (f'--scorer {component}', ''))[0]}"


@dataclass(frozen=True)
class ComponentFile:
    name: str
    path: Path
    sha256: str
    action: str  # cached / verified / downloaded


class ComponentResources:
    """A component's weights, from the shared cache (``setup --scorer``, ``score``)."""

    def __init__(self, component: str, cache_dir: Path, *, registry_file: Path | None = None, offline: bool = False, downloader: Downloader | None = None):
        from ..engines import engine_classes

        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}")
        self.component = component
        self.cache = Cache(cache_dir)
        section = read_override(registry_file, engine_classes()).get(component, {}) if registry_file else {}
        self.specs = component_specs(component, section)
        self.offline = offline
        self.downloader = downloader or Downloader(offline=offline)
        self.downloader.offline = self.downloader.offline or offline
        try:
            self.cache.base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResourceError(f"cannot use it as the cache folder: {exc.strerror or exc}", subject=self.cache.root) from None

    def path(self, name: str) -> Path:
        return self.cache.checkpoint_path(self.component, name)

    def status(self, names: list[str] | None = None) -> dict[str, str]:
        """name → ready / unverified / missing, from stamps alone (no hashing, no network)."""
        out = {}
        for name in names or list(self.specs):
            p = self.path(name)
            out[name] = "ready" if verified_stamp(p, self.specs[name].sha256) else ("unverified" if p.exists() else "missing")
        return out

    def verify(self) -> dict[str, str]:
        """Re-hash the cached files: name → ok / corrupt (as ``cache verify`` does for engines)."""
        from .managers import verify_checkpoints

        return verify_checkpoints(self.cache, self.component, list(self.specs.values()))

    def ensure(self, names: list[str] | None = None, on_file: Callable[[ComponentFile], None] | None = None) -> dict[str, ComponentFile]:
        """Download and verify *names* (default: all); name → verified file."""
        names = names or list(self.specs)
        if self.offline:
            missing = [
                f"{n} ({self.specs[n].size:,} bytes) → {self.path(n)}"
                for n, state in self.status(names).items()
                if state == "missing"
                and not any(u.startswith("file:") for u in self.specs[n].urls)
                and verified_twin(self.path(n), self.specs[n].sha256, self.specs[n].size) is None  # linked from another entry
            ]
            if missing:
                raise OfflineError(
                    missing,
                    hint=f"Run '{setup_command(self.component)}' where there is network and copy the cache folder "
                    f"({self.cache.root}) here, or give file:// mirrors in a registry override file (--registry).",
                )
        files = {}
        for name in names:
            spec = self.specs[name]
            result = self.downloader.ensure(spec, self.path(name), self.cache.lock_path("ckpt", self.component, name))
            files[name] = ComponentFile(name, result.path, result.sha256, result.action)
            if on_file:
                on_file(files[name])
        return files
