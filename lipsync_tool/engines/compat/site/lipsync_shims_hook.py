"""The post-import hook behind ``lipsync_shims``: a ``sys.meta_path`` finder that
runs a callback right after a named module has been imported, and serves
moved modules under their old names.

Standalone, like the rest of this directory, and generic: ``lipsync_shims``
decides which modules to patch and how, and loads this file by path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping


class _HookedLoader:
    """Wraps a loader for one import: runs the real ``exec_module``, puts the
    real loader back on the module, then runs the module's shims."""

    def __init__(self, loader, name: str, on_import: Callable[[str, object], None]):
        self._loader = loader
        self._name = name
        self._on_import = on_import

    def __getattr__(self, attr):
        return getattr(self._loader, attr)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self._loader
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self._loader
        self._on_import(self._name, module)


class _AliasLoader:
    """Serves a module under its old name, as a view of the new one."""

    def __init__(self, target: str, note: Callable[[str], None]):
        self.target = target
        self._note = note

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        import importlib

        real = importlib.import_module(self.target)
        module.__dict__.update({k: v for k, v in vars(real).items() if not (k.startswith("__") and k.endswith("__"))})
        module.__all__ = list(getattr(real, "__all__", [k for k in vars(real) if not k.startswith("_")]))
        module.__getattr__ = lambda attr: getattr(real, attr)
        self._note(f"{module.__name__} is an alias of {self.target}")


class PostImportFinder:
    """A ``sys.meta_path`` finder that only decorates other finders' specs.

    *hooks*: the module names to call *on_import(name, module)* for, right
    after each is imported; *aliases*: old module name → new one, served only
    when the old name cannot be found; *note* records what an alias did.
    """

    def __init__(
        self,
        hooks: Collection[str],
        aliases: Mapping[str, str],
        on_import: Callable[[str, object], None],
        note: Callable[[str], None],
    ) -> None:
        self._hooks = hooks
        self._aliases = aliases
        self._on_import = on_import
        self._note = note
        self._busy: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if (fullname not in self._hooks and fullname not in self._aliases) or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or type(finder).__name__ == "PostImportFinder":
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(fullname)
        if spec is None:
            return self._alias_spec(fullname)
        if fullname in self._hooks and spec.loader is not None and hasattr(spec.loader, "exec_module") and not isinstance(spec.loader, _HookedLoader):
            spec.loader = _HookedLoader(spec.loader, fullname, self._on_import)
        return spec

    def _alias_spec(self, fullname: str):
        """A spec that serves *fullname* as its new name, if it has one that can be found."""
        if fullname not in self._aliases:
            return None
        import importlib.machinery
        import importlib.util

        parent = fullname.rpartition(".")[0]
        try:
            found = importlib.util.find_spec(self._aliases[fullname]) if parent in sys.modules else None
        except (ImportError, ValueError):
            found = None
        if found is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(self._aliases[fullname], self._note))
