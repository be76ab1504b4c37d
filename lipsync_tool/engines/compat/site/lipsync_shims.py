"""Import-time shims that let the pinned upstream engines run on current libraries.

This file is standalone: it is loaded by the ``sitecustomize`` beside it, in
the engine's own interpreter, which may not have lipsync-tool installed.  It
imports nothing heavy itself.  A post-import hook (a ``sys.meta_path`` finder
that wraps the loader's ``exec_module``, in ``lipsync_shims_hook.py`` beside
this file) patches a library right after it has been imported, and only when
the installed version needs it.

Every shim is idempotent (it marks what it replaced) and logs what it did to
the ``lipsync_shims`` logger at DEBUG; ``LIPSYNC_TOOL_SHIM_DEBUG=1`` sends that
log to stderr, which the engine log records.

Environment read here (set by lipsync-tool's ``compat_env``):

``LIPSYNC_TOOL_SEED``
    seeds ``random`` at start-up, numpy and torch when they are imported;
``LIPSYNC_TOOL_TRUSTED_WEIGHTS``
    a JSON list of files (sha256-verified or supplied by the user) that
    ``torch.load`` may unpickle in full (``weights_only=False``) when the
    caller did not choose;
``LIPSYNC_TOOL_URL_MAP``
    a JSON object ``{url: local path}``: download helpers return the verified
    local file for such a URL instead of fetching it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys

ENV_SEED = "LIPSYNC_TOOL_SEED"
ENV_TRUSTED = "LIPSYNC_TOOL_TRUSTED_WEIGHTS"
ENV_URL_MAP = "LIPSYNC_TOOL_URL_MAP"
ENV_DEBUG = "LIPSYNC_TOOL_SHIM_DEBUG"

#: Set on every function a shim puts in place, so a second pass leaves it alone.
MARK = "__lipsync_shim__"

log = logging.getLogger("lipsync_shims")

#: What each shim did in this process, in order (for tests and debugging).
applied: list[str] = []


def _note(what: str) -> None:
    applied.append(what)
    log.debug("%s", what)


def _setup_logging() -> None:
    if getattr(log, "_lipsync_configured", False):
        return
    log._lipsync_configured = True  # type: ignore[attr-defined]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[lipsync_shims %(process)d] %(levelname)s %(message)s"))
    debug = os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes", "on")
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    # The engine may configure the root logger; ours stays as set here.
    log.propagate = False


def version_tuple(text: str) -> tuple[int, ...]:
    """``"2.6.0+cpu"`` → ``(2, 6, 0)``; unknown parts count as 0."""
    parts = []
    for piece in re.split(r"[.+-]", str(text))[:3]:
        m = re.match(r"\d+", piece)
        parts.append(int(m.group()) if m else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def _wrapped(fn, wrapper):
    functools.update_wrapper(wrapper, fn)
    setattr(wrapper, MARK, True)
    wrapper.__wrapped__ = fn
    return wrapper


def _env_json(name: str, default):
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("%s is not valid JSON; ignored", name)
        return default


def seed_value() -> int | None:
    raw = os.environ.get(ENV_SEED, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        log.warning("%s=%r is not an integer; not seeding", ENV_SEED, raw)
        return None


# -- the shims ------------------------------------------------------------------------------


def shim_librosa_mel(module) -> None:
    """librosa >= 0.10 made ``filters.mel``'s ``sr`` and ``n_fft`` keyword-only;
    Wav2Lip's ``audio.py`` passes them by position."""
    import inspect

    mel = getattr(module, "mel", None)
    if mel is None or getattr(mel, MARK, False):
        return
    try:
        params = inspect.signature(mel).parameters
    except (TypeError, ValueError):
        return
    names = [n for n in ("sr", "n_fft") if n in params and params[n].kind is inspect.Parameter.KEYWORD_ONLY]
    if not names:
        return

    def mel_accepting_positionals(*args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"mel() takes at most {len(names)} positional arguments ({len(args)} given)")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"mel() got multiple values for argument {name!r}")
            kwargs[name] = value
        return mel(**kwargs)

    module.mel = _wrapped(mel, mel_accepting_positionals)
    _note(f"librosa.filters.mel accepts {', '.join(names)} by position (librosa {_version_of('librosa')})")


#: numpy aliases removed in 1.20-1.24 (and 2.0), with what they meant.
NUMPY_ALIASES = {
    "int": int,
    "float": float,
    "bool": bool,
    "object": object,
    "complex": complex,
    "str": str,
    "unicode": str,
    "long": int,
}


def _numpy_has(np, name: str) -> bool:
    """Whether numpy still provides *name* (directly, lazily or with a warning)."""
    if name in np.__dict__:
        return True
    import warnings

    with warnings.catch_warnings():
        # numpy's module __getattr__ warns about some removed names before it raises
        warnings.simplefilter("ignore")
        try:
            getattr(np, name)
        except AttributeError:
            return False
    return True


def shim_numpy(np) -> None:
    """Restore the builtin-type aliases numpy removed, and
    ``np.VisibleDeprecationWarning`` (moved to ``np.exceptions`` in 2.0)."""
    restored = []
    for name, value in NUMPY_ALIASES.items():
        if not _numpy_has(np, name):
            setattr(np, name, value)
            restored.append(name)
    if restored:
        _note(f"numpy {np.__version__}: restored np.{', np.'.join(restored)}")
    if not _numpy_has(np, "VisibleDeprecationWarning"):
        cls = getattr(getattr(np, "exceptions", None), "VisibleDeprecationWarning", None)
        if cls is not None:
            np.VisibleDeprecationWarning = cls
            _note(f"numpy {np.__version__}: np.VisibleDeprecationWarning = np.exceptions.VisibleDeprecationWarning")
    seed = seed_value()
    if seed is not None and not getattr(np.random, "_lipsync_seeded", False):
        np.random.seed(seed % 2**32)
        np.random._lipsync_seeded = True
        _note(f"numpy.random seeded with {seed % 2**32}")


def shim_pil_image(image) -> None:
    """Pillow >= 10 removed ``Image.ANTIALIAS`` (it was LANCZOS all along)."""
    if "ANTIALIAS" in image.__dict__ or not hasattr(image, "LANCZOS"):
        return
    image.ANTIALIAS = image.LANCZOS
    _note(f"PIL.Image.ANTIALIAS = LANCZOS (Pillow {getattr(image, '__version__', _version_of('pillow'))})")


def shim_cv2(_module) -> None:
    """OpenCV >= 4.6 has no ``cv2.cv2``.  OpenCV's loader swaps module objects
    while it boots, so patch the one it leaves in ``sys.modules``."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None or "cv2" in cv2.__dict__:
        return
    cv2.cv2 = cv2
    _note(f"cv2.cv2 = cv2 (OpenCV {getattr(cv2, '__version__', '?')})")


class _TrustedWeights:
    """The realpaths in LIPSYNC_TOOL_TRUSTED_WEIGHTS, read once."""

    _paths: frozenset[str] | None = None

    @classmethod
    def paths(cls) -> frozenset[str]:
        if cls._paths is None:
            raw = _env_json(ENV_TRUSTED, [])
            cls._paths = frozenset(os.path.realpath(p) for p in raw if isinstance(p, str)) if isinstance(raw, list) else frozenset()
        return cls._paths

    @classmethod
    def contains(cls, f) -> bool:
        name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
        if not isinstance(name, (str, os.PathLike)):
            return False
        try:
            return os.path.realpath(os.fspath(name)) in cls.paths()
        except (TypeError, ValueError, OSError):
            return False


def shim_torch(torch) -> None:
    """torch >= 2.6 loads with ``weights_only=True`` by default, which rejects
    the pickles of older checkpoints.  Relax it for trusted files only, and
    only when the caller did not choose.  Also seed torch."""
    if version_tuple(torch.__version__) >= (2, 6, 0) and not getattr(torch.load, MARK, False):
        original = torch.load

        def load(f, *args, **kwargs):
            if "weights_only" not in kwargs and _TrustedWeights.contains(f):
                kwargs["weights_only"] = False
                log.debug("torch.load(%s, weights_only=False): a trusted file", getattr(f, "name", f))
            return original(f, *args, **kwargs)

        torch.load = _wrapped(original, load)
        serialization = sys.modules.get("torch.serialization")
        if serialization is not None and getattr(serialization, "load", None) is original:
            serialization.load = torch.load
        _note(f"torch {torch.__version__}: torch.load relaxes weights_only for {len(_TrustedWeights.paths())} trusted file(s)")
    seed = seed_value()
    if seed is not None and not getattr(torch, "_lipsync_seeded", False):
        torch.manual_seed(seed)
        cuda = getattr(torch, "cuda", None)
        if cuda is not None:
            cuda.manual_seed_all(seed)  # lazy: queued until CUDA initialises
        torch._lipsync_seeded = True
        _note(f"torch seeded with {seed}")


def _url_map() -> dict[str, str]:
    raw = _env_json(ENV_URL_MAP, {})
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def _map_downloader(module, attr: str, label: str) -> None:
    fn = getattr(module, attr, None)
    mapping = _url_map()
    if fn is None or getattr(fn, MARK, False) or not mapping:
        return

    def load_file_from_url(url, *args, **kwargs):
        local = mapping.get(url)
        if local is not None:
            if os.path.isfile(local):
                log.debug("%s(%s) → %s (verified local copy)", label, url, local)
                return local
            log.warning("%s: the local copy %s of %s is missing; downloading", label, local, url)
        return fn(url, *args, **kwargs)

    setattr(module, attr, _wrapped(fn, load_file_from_url))
    _note(f"{label} serves {len(mapping)} URL(s) from verified local files")


def shim_basicsr_download(module) -> None:
    _map_downloader(module, "load_file_from_url", f"{module.__name__}.load_file_from_url")


def shim_facexlib_utils(module) -> None:
    _map_downloader(module, "load_file_from_url", f"{module.__name__}.load_file_from_url")
    misc = sys.modules.get("facexlib.utils.misc")
    if misc is not None and getattr(misc, "load_file_from_url", None) is not None and not getattr(misc.load_file_from_url, MARK, False):
        wrapped = getattr(module, "load_file_from_url", None)
        if wrapped is not None and getattr(wrapped, MARK, False) and wrapped.__wrapped__ is misc.load_file_from_url:
            misc.load_file_from_url = wrapped


def shim_torch_hub(hub) -> None:
    """torch.hub's download helpers: a mapped URL is served from its local file."""
    mapping = _url_map()
    if not mapping:
        return
    download = getattr(hub, "download_url_to_file", None)
    if download is not None and not getattr(download, MARK, False):

        def download_url_to_file(url, dst, *args, **kwargs):
            local = mapping.get(url)
            if local is not None and os.path.isfile(local):
                import shutil

                log.debug("torch.hub.download_url_to_file(%s) → copy of %s", url, local)
                shutil.copyfile(local, dst)
                return None
            return download(url, dst, *args, **kwargs)

        hub.download_url_to_file = _wrapped(download, download_url_to_file)
    state = getattr(hub, "load_state_dict_from_url", None)
    if state is not None and not getattr(state, MARK, False):

        def load_state_dict_from_url(url, *args, **kwargs):
            local = mapping.get(url)
            if local is not None and os.path.isfile(local):
                import torch

                log.debug("torch.hub.load_state_dict_from_url(%s) → %s", url, local)
                return torch.load(local, map_location=kwargs.get("map_location"), weights_only=bool(kwargs.get("weights_only", False)))
            return state(url, *args, **kwargs)

        hub.load_state_dict_from_url = _wrapped(state, load_state_dict_from_url)
        model_zoo = sys.modules.get("torch.utils.model_zoo")
        if model_zoo is not None and getattr(model_zoo, "load_url", None) is state:
            model_zoo.load_url = hub.load_state_dict_from_url
    _note(f"torch.hub serves {len(mapping)} URL(s) from verified local files")


class _FloatableArray:
    """Factory for an ndarray subclass whose 1-element slices convert with
    ``float()`` (numpy 2.4 refuses ``float()`` on arrays with ndim > 0)."""

    cls = None

    @classmethod
    def make(cls, np):
        if cls.cls is None:

            class FloatableArray(np.ndarray):
                def __float__(self):
                    if self.size != 1:
                        raise TypeError(f"only 1-element arrays convert to float, not shape {self.shape}")
                    return float(self.reshape(()).view(np.ndarray)[()])

            cls.cls = FloatableArray
        return cls.cls


def shim_sadtalker_face3d_preprocess(module) -> None:
    """SadTalker's ``src/face3d/util/preprocess.py`` on numpy >= 1.24:

    * ``POS`` returns ``t`` shaped (2, 1), so ``resize_n_crop_img`` calls
      ``float()`` on 1-element arrays and ``align_img`` builds the ragged
      ``np.array([w0, h0, s, t[0], t[1]])``;
    * ``src/utils/preprocess.py`` then does
      ``float(item) for item in np.hsplit(trans_params, 5)``.

    ``POS`` is wrapped to return ``t`` flat, and ``align_img`` to return
    ``trans_params`` as a flat float array whose 1-element slices still
    convert with ``float()``.
    """
    import numpy as np

    if version_tuple(np.__version__) < (1, 24, 0):
        return
    pos = getattr(module, "POS", None)
    align = getattr(module, "align_img", None)
    if pos is None or align is None or getattr(align, MARK, False):
        return

    def POS(xp, x):
        t, s = pos(xp, x)
        return np.asarray(t, dtype=np.float64).reshape(-1), s

    floatable = _FloatableArray.make(np)

    def align_img(*args, **kwargs):
        trans_params, *rest = align(*args, **kwargs)
        flat = np.asarray(trans_params, dtype=np.float64).reshape(-1).view(floatable)
        return (flat, *rest)

    if not getattr(pos, MARK, False):
        module.POS = _wrapped(pos, POS)
    module.align_img = _wrapped(align, align_img)
    _note(f"SadTalker {module.__name__}: POS returns a flat t, align_img a flat float trans_params (numpy {np.__version__})")


#: module name → the shims to run right after it has been imported.
HOOKS: dict[str, tuple] = {
    "numpy": (shim_numpy,),
    "librosa.filters": (shim_librosa_mel,),
    "PIL.Image": (shim_pil_image,),
    "cv2": (shim_cv2,),
    "torch": (shim_torch,),
    "torch.hub": (shim_torch_hub,),
    "basicsr.utils.download_util": (shim_basicsr_download,),
    "facexlib.utils": (shim_facexlib_utils,),
    "src.face3d.util.preprocess": (shim_sadtalker_face3d_preprocess,),
}

#: Modules that newer releases moved: old name → new name.  Served only when
#: the old name cannot be found.
ALIASES: dict[str, str] = {
    # torchvision >= 0.17 removed it; basicsr's data/degradations.py imports it
    "torchvision.transforms.functional_tensor": "torchvision.transforms._functional_tensor",
}


def run_hooks(name: str, module=None) -> None:
    module = sys.modules.get(name, module)
    if module is None:
        return
    for shim in HOOKS.get(name, ()):
        try:
            shim(module)
        except Exception as exc:  # noqa: BLE001 - a shim must never break the engine's import
            log.warning("shim %s for %s failed: %r", shim.__name__, name, exc)


def _version_of(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - only for a log line
        return "?"


def _load_hook_module():
    """``lipsync_shims_hook.py`` from beside this file.

    Loaded by path: this directory need not be on sys.path (``sitecustomize``
    may have loaded this file by path too).
    """
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lipsync_shims_hook.py")
    spec = importlib.util.spec_from_file_location("lipsync_shims_hook", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lipsync_shims_hook"] = module
    spec.loader.exec_module(module)
    return module


def install() -> None:
    """Install the hook (once per process), seed ``random``, and patch what is already imported."""
    _setup_logging()
    # a sentinel on sys, not a module global: the module may be loaded twice under different names
    if getattr(sys, "_lipsync_shims_installed", False) or any(type(f).__name__ == "PostImportFinder" for f in sys.meta_path):
        return
    sys._lipsync_shims_installed = True  # type: ignore[attr-defined]
    sys.meta_path.insert(0, _load_hook_module().PostImportFinder(HOOKS, ALIASES, run_hooks, _note))
    seed = seed_value()
    if seed is not None:
        import random

        random.seed(seed)
        _note(f"random seeded with {seed}")
    for name in HOOKS:
        if name in sys.modules:
            run_hooks(name)
