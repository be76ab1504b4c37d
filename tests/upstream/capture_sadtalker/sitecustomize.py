"""TEST ONLY: capture what SadTalker's ``inference.py`` renders, and seed it as the warm worker does.

Put this folder on PYTHONPATH *after* lipsync-tool's compat site folder: its
``sitecustomize`` installs the compat shims, then runs the next
``sitecustomize`` on ``sys.path``, this one.  Nothing of upstream is copied
here; two of its modules are patched right after they are imported:

* ``src.facerender.animate``: its ``imageio`` name becomes a view of imageio
  whose ``mimsave`` first saves the frames it is handed (upstream's rendered
  video, before encoding) as a uint8 array (N, H, W, 3) to the ``.npy`` file
  named by ``LIPSYNC_TOOL_CAPTURE_FRAMES``; a second call (the enhanced video)
  goes to ``<name>.2.npy``, and so on.
* ``src.test_audio2coeff``: ``Audio2Coeff.generate`` first seeds ``random``,
  numpy and torch with ``LIPSYNC_TOOL_SEED``, as the worker's ``ctx.seed()``
  does just before it (Audio2Pose draws its noise there).
"""

import importlib.util
import os
import sys

ENV_CAPTURE = "LIPSYNC_TOOL_CAPTURE_FRAMES"
ENV_SEED = "LIPSYNC_TOOL_SEED"


def _reseed() -> None:
    raw = os.environ.get(ENV_SEED, "").strip()
    if not raw:
        return
    import random

    import numpy
    import torch

    seed = int(raw)
    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _capture_path(call: int) -> str:
    path = os.environ[ENV_CAPTURE]
    if call == 1:
        return path
    stem = path[:-4] if path.endswith(".npy") else path
    return f"{stem}.{call}.npy"


class _ImageioView:
    """imageio, with ``mimsave`` saving its frames first."""

    def __init__(self, real):
        self._real = real
        self._calls = 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def mimsave(self, uri, ims, *args, **kwargs):
        import numpy as np

        ims = list(ims)
        self._calls += 1
        if os.environ.get(ENV_CAPTURE):
            np.save(_capture_path(self._calls), np.stack([np.asarray(im, dtype=np.uint8) for im in ims]))
        return self._real.mimsave(uri, ims, *args, **kwargs)


def _patch_animate(module) -> None:
    module.imageio = _ImageioView(module.imageio)


def _patch_audio2coeff(module) -> None:
    generate = module.Audio2Coeff.generate

    def reseeded_generate(self, *args, **kwargs):
        _reseed()
        return generate(self, *args, **kwargs)

    module.Audio2Coeff.generate = reseeded_generate


PATCHES = {"src.facerender.animate": _patch_animate, "src.test_audio2coeff": _patch_audio2coeff}


class _Loader:
    def __init__(self, loader, patch):
        self._loader, self._patch = loader, patch

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)


class _Finder:
    """Wraps the loader of the modules in PATCHES, found by the other finders."""

    def __init__(self):
        self._busy = set()

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES or name in self._busy:
            return None
        self._busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy.discard(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, PATCHES[name])
        return spec


if os.environ.get(ENV_CAPTURE) or os.environ.get(ENV_SEED):
    sys.meta_path.insert(0, _Finder())
