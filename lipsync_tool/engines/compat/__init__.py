"""Runtime shims for upstream code that breaks on current libraries.

They live in ``site/``: a ``sitecustomize.py``, ``lipsync_shims.py`` (the
shims) and ``lipsync_shims_hook.py`` (the post-import hook that runs them), all
standalone (the engine may run in another interpreter, without lipsync-tool
installed).  Only the engine's subprocess gets ``site/`` on its PYTHONPATH, so
nothing is patched in this process.  Each shim patches only when the installed
library needs it, is idempotent, and logs at DEBUG to the engine log.

The shims, one per breakage (``site/lipsync_shims.py`` has the details):

* librosa >= 0.10: ``filters.mel(sr, n_fft, ...)`` by position (Wav2Lip);
* numpy >= 1.24 / 2.0: ``np.int``, ``np.float``, … and ``np.VisibleDeprecationWarning``;
* numpy >= 1.24: SadTalker's ragged ``trans_params`` in ``src/face3d/util/preprocess.py``;
* torchvision >= 0.17: ``torchvision.transforms.functional_tensor`` (basicsr);
* Pillow >= 10: ``Image.ANTIALIAS``;
* OpenCV >= 4.6: ``cv2.cv2``;
* torch >= 2.6: ``torch.load``'s ``weights_only`` default, relaxed for trusted files only;

plus seeding (``LIPSYNC_TOOL_SEED``) and serving verified local files for URLs
upstream would download at run time (``LIPSYNC_TOOL_URL_MAP``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...errors import EngineError
    from ..base import Workspace

SITE_DIR = Path(__file__).with_name("site")

ENV_SEED = "LIPSYNC_TOOL_SEED"
ENV_TRUSTED = "LIPSYNC_TOOL_TRUSTED_WEIGHTS"
ENV_URL_MAP = "LIPSYNC_TOOL_URL_MAP"
ENV_SHIM_LOG = "LIPSYNC_TOOL_SHIM_DEBUG"


def compat_env(
    pythonpath: str,
    *,
    seed: int | None,
    trusted: list[str],
    url_map: dict[str, str],
    debug: bool | None = None,
) -> dict[str, str]:
    """Environment for an engine process: the shims first on PYTHONPATH.

    *debug* sends the shims' log to the engine log; by default it follows
    whether lipsync-tool itself logs at DEBUG (an explicit
    ``LIPSYNC_TOOL_SHIM_DEBUG`` in the environment is left alone).
    """
    parts = [str(SITE_DIR)] + [p for p in pythonpath.split(os.pathsep) if p and Path(p) != SITE_DIR]
    env = {
        "PYTHONPATH": os.pathsep.join(parts),
        ENV_TRUSTED: json.dumps(sorted({os.path.realpath(p) for p in trusted})),
        ENV_URL_MAP: json.dumps(url_map),
    }
    if seed is not None:
        env[ENV_SEED] = str(seed)
    if debug is None:
        debug = logging.getLogger("lipsync_tool").isEnabledFor(logging.DEBUG) or None
    if debug is not None:
        env[ENV_SHIM_LOG] = "1" if debug else "0"
    return env


def is_cpu_oom(text: str) -> bool:
    """torch's CPU allocator failed (its own words, e.g. "DefaultCPUAllocator: can't allocate memory")."""
    return "DefaultCPUAllocator: can't allocate memory" in text or "DefaultCPUAllocator: not enough memory" in text


def translate_common(log_text: str, ws: Workspace) -> EngineError | None:
    """Failures of the compatibility kind that any engine can hit."""
    from ...errors import EngineError
    from ..base import tail_lines

    if "Weights only load failed" in log_text:
        return EngineError(
            "torch refused to unpickle a checkpoint (torch >= 2.6 loads with weights_only=True by default)",
            log_path=ws.log,
            log_tail=tail_lines(log_text),
            hint="lipsync-tool relaxes weights_only only for files it verified or that you supplied; if this file came from "
            "elsewhere (e.g. downloaded by upstream at run time), put it in the registry or pass it as your own checkpoint.",
        )
    return None
