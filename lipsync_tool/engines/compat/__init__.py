"""Runtime shims for upstream code that breaks on current libraries.

They live in ``site/``: a ``sitecustomize.py`` plus ``lipsync_shims.py``, both
standalone (the engine may run in another interpreter, without lipsync-tool
installed).  Only the engine's subprocess gets ``site/`` on its PYTHONPATH, so
nothing is patched in this process.  Each shim patches only when the installed
library needs it, is idempotent, and logs at DEBUG to the engine log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SITE_DIR = Path(__file__).with_name("site")

ENV_SEED = "LIPSYNC_TOOL_SEED"
ENV_TRUSTED = "LIPSYNC_TOOL_TRUSTED_WEIGHTS"
ENV_URL_MAP = "LIPSYNC_TOOL_URL_MAP"
ENV_SHIM_LOG = "LIPSYNC_TOOL_SHIM_DEBUG"


def compat_env(pythonpath: str, *, seed: int | None, trusted: list[str], url_map: dict[str, str]) -> dict[str, str]:
    """Environment for an engine process: the shims first on PYTHONPATH."""
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(SITE_DIR), pythonpath) if p),
        ENV_TRUSTED: json.dumps(sorted(set(trusted))),
        ENV_URL_MAP: json.dumps(url_map),
    }
    if seed is not None:
        env[ENV_SEED] = str(seed)
    return env
