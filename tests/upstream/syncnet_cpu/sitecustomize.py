"""Run syncnet_python (and Wav2Lip's ``evaluation/scores_LSE``) on a CPU-only torch.

Only for the opt-in reference check (``tests/upstream/syncnet_reference.py``
puts this folder on the reference's ``PYTHONPATH``); lipsync-tool never loads
it.  The reference hard-codes CUDA and an old numpy.  This file, which Python
imports at start-up, changes only that:

* ``Module.cuda()`` and ``Tensor.cuda()`` return the object itself (on the CPU);
* ``Module.to``, ``Tensor.to`` and ``torch.load(map_location=…)`` read a CUDA
  device (``"cuda"``, ``"cuda:0"``, ``torch.device("cuda")``) as ``"cpu"``, so
  ``S3FD(device="cuda")`` works;
* ``np.int`` is ``int`` again (``detectors/s3fd/box_utils.py`` uses it);
* ``torchvision``, which ``detectors/s3fd/__init__.py`` imports (``transforms``)
  but never uses, is an empty stand-in when it is not installed: PyPI's
  torchvision wheels are built against a CUDA torch and do not load on the
  CPU build.

Nothing else in the reference's computation is touched.
"""

import sys
import types


def _cpu(device):
    """*device* with CUDA read as the CPU (anything else unchanged)."""
    import torch

    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _patch_torch() -> None:
    try:
        import torch
    except ImportError:
        return
    module_to, tensor_to, load = torch.nn.Module.to, torch.Tensor.to, torch.load

    def to_module(self, *args, **kwargs):
        return module_to(self, *[_cpu(a) for a in args], **{k: _cpu(v) for k, v in kwargs.items()})

    def to_tensor(self, *args, **kwargs):
        return tensor_to(self, *[_cpu(a) for a in args], **{k: _cpu(v) for k, v in kwargs.items()})

    def load_cpu(*args, **kwargs):
        if "map_location" in kwargs:
            kwargs["map_location"] = _cpu(kwargs["map_location"])
        return load(*args, **kwargs)

    torch.nn.Module.cuda = lambda self, device=None: self
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.to, torch.Tensor.to, torch.load = to_module, to_tensor, load_cpu


def _patch_numpy() -> None:
    try:
        import numpy as np
    except ImportError:
        return
    if "int" not in np.__dict__:
        np.int = int


def _stand_in_torchvision() -> None:
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        return
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.__path__ = []
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tv.transforms


_patch_torch()
_patch_numpy()
_stand_in_torchvision()
