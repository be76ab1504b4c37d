"""lipsync-tool's sitecustomize, on the PYTHONPATH of engine processes only.

It installs the compat shims (``lipsync_shims.py`` beside it), then runs the
``sitecustomize`` this one shadows, if there is one further on ``sys.path``
(a distribution's or a virtual environment's), so nothing it did is lost.
Standalone: the engine's interpreter need not have lipsync-tool installed.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _install_shims() -> None:
    try:
        import lipsync_shims
    except ImportError:  # our dir is not on sys.path (only this file was copied)
        import importlib.util

        spec = importlib.util.spec_from_file_location("lipsync_shims", os.path.join(_HERE, "lipsync_shims.py"))
        if spec is None or spec.loader is None:
            return
        lipsync_shims = importlib.util.module_from_spec(spec)
        sys.modules["lipsync_shims"] = lipsync_shims
        spec.loader.exec_module(lipsync_shims)
    lipsync_shims.install()


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path (the one this file shadows)."""
    import importlib.machinery
    import importlib.util

    for entry in sys.path:
        try:
            if not entry or os.path.realpath(entry) == os.path.realpath(_HERE):
                continue
        except (TypeError, ValueError):
            continue
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
        if spec is None or spec.loader is None or not spec.origin:
            continue
        if os.path.realpath(spec.origin) == os.path.realpath(__file__):
            continue
        module = importlib.util.module_from_spec(spec)
        # While it runs it is "sitecustomize", as it would have been.
        ours = sys.modules.get("sitecustomize")
        sys.modules["sitecustomize"] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - as site.py does: report, never abort start-up
            print(f"Error in sitecustomize {spec.origin}: {exc!r}", file=sys.stderr)
        finally:
            if ours is not None:
                sys.modules["sitecustomize"] = ours
        sys.modules["_lipsync_chained_sitecustomize"] = module
        return


try:
    _install_shims()
except Exception as _exc:  # noqa: BLE001 - the engine must still start
    print(f"lipsync-tool: the compat shims could not be installed: {_exc!r}", file=sys.stderr)
_chain()
