"""The engine registry.

Built-in engines and plug-ins (entry point group ``lipsync_tool.engines``)
go through the same :func:`register`.  The CLI's ``--engine`` choices, its
engine option panels, ``setup`` and ``engines`` all come from here.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import naming
from ..errors import UsageError
from .base import Engine, EngineOptions, OptionMeta, option_meta

_FACE_INPUTS = ("image", "video", "either")

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lipsync_tool.engines"

#: The engine a run uses when none is named.
DEFAULT_ENGINE = "sadtalker"
#: The engines that ship with the tool (what ``compare`` runs by default).
BUILTIN_ENGINES = ("sadtalker", "wav2lip")

_ENGINES: dict[str, type[Engine]] = {}
_loaded = False


def register(engine_cls: type[Engine], *, replace: bool = False) -> type[Engine]:
    """Add an engine class to the registry (usable as a decorator)."""
    name = engine_cls.name
    if engine_cls.face_input not in _FACE_INPUTS:
        raise ValueError(f"engine {name!r}: face_input must be one of {', '.join(_FACE_INPUTS)}, not {engine_cls.face_input!r}")
    if not (engine_cls.entry_module or engine_cls.entry_script):
        raise ValueError(f"engine {name!r} sets neither entry_script nor entry_module")
    if name in _ENGINES and _ENGINES[name] is not engine_cls and not replace:
        raise ValueError(f"an engine named {name!r} is already registered")
    _ENGINES[name] = engine_cls
    return engine_cls


def unregister(name: str) -> None:
    _ENGINES.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from .sadtalker import SadTalker
    from .wav2lip import Wav2Lip

    register(SadTalker)
    register(Wav2Lip)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            register(cls)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the tool
            log.warning("engine plug-in %s could not be loaded: %s", ep.value, exc)


def available_engines() -> list[str]:
    _load()
    return sorted(_ENGINES)


def engine_classes() -> dict[str, type[Engine]]:
    _load()
    return dict(sorted(_ENGINES.items()))


def get_engine(name: str) -> Engine:
    _load()
    try:
        return _ENGINES[name]()
    except KeyError:
        raise UsageError(
            f"unknown engine {name!r}",
            subject=naming.option("engine"),
            hint="Choose one of: " + ", ".join(available_engines()),
        ) from None


def engines_accepting(*, video: bool) -> list[str]:
    """The engines that take a face video (*video*) or a still image."""
    return [n for n, cls in engine_classes().items() if cls.face_input in (("video", "either") if video else ("image", "either"))]


def option_owner(field: str) -> list[str]:
    """The engines whose options model has *field*."""
    return [n for n, cls in engine_classes().items() if field in cls.Options.model_fields]


def option_label(field: str) -> str:
    """How messages name an option field: its CLI flag on the command line, its keyword from Python."""
    from .. import naming

    return naming.option(field, flag_of(field))


def meta_of(field: str) -> OptionMeta | None:
    """The CLI metadata of an engine option field (the first engine's that has it)."""
    for cls in engine_classes().values():
        info = cls.Options.model_fields.get(field)
        meta = option_meta(info) if info is not None else None
        if meta is not None:
            return meta
    return None


def flag_of(field: str) -> str:
    """The CLI spelling of an option field."""
    meta = meta_of(field)
    return meta.name if meta is not None else "--" + field.replace("_", "-")


def make_options(engine: Engine, values: dict[str, Any]) -> EngineOptions:
    """Build *engine*'s options from *values*, naming the owner of a stray option."""
    from pydantic import ValidationError

    own = engine.Options.model_fields
    ignored = []
    for key in values:
        if key not in own:
            owners = option_owner(key)
            if owners and all(_elsewhere(name, key) == "warn" for name in owners):
                _check_ignored(owners[0], key, values[key])
                ignored.append(key)
                continue
            if owners:
                raise UsageError(
                    f"this option belongs to the {' and '.join(owners)} engine, not to {engine.name}",
                    subject=option_label(key),
                    hint=f"Drop it, or use {naming.setting('engine', owners[0])}.",
                )
            raise UsageError(f"unknown option for engine {engine.name}", subject=key, hint=f"See {'lipsync-tool run --help' if naming.cli_names() else 'LipSyncPipeline.options()'} for the options.")
    try:
        options = engine.Options(**{k: v for k, v in values.items() if k not in ignored})
    except ValidationError as exc:
        raise validation_to_usage(exc) from None
    options._ignored = tuple(ignored)
    return options


def _check_ignored(owner: str, field: str, value: Any) -> None:
    """An option this engine ignores must still be a valid value for its owner."""
    from pydantic import ValidationError

    try:
        engine_classes()[owner].Options(**{field: value})
    except ValidationError as exc:
        raise validation_to_usage(exc) from None


def _elsewhere(engine: str, field: str) -> str:
    meta = option_meta(engine_classes()[engine].Options.model_fields[field])
    return meta.elsewhere if meta is not None else "reject"


def validation_to_usage(exc: Any) -> UsageError:
    """The first problem of a pydantic ValidationError as a UsageError."""
    err = exc.errors()[0]
    loc = err.get("loc") or ()
    field = str(loc[0]) if loc else ""
    msg = err.get("msg", str(exc))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif err.get("type") == "finite_number":
        msg = "must be a finite number"
    given = err.get("input")
    if isinstance(given, (int, float, str)) and not isinstance(given, bool) and err.get("type") != "value_error":
        msg += f", not {given!r}" if isinstance(given, str) else f", not {given}"
    subject = option_label(field) if field else None
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return UsageError(msg, subject=subject)


__all__ = [
    "BUILTIN_ENGINES",
    "DEFAULT_ENGINE",
    "Engine",
    "EngineOptions",
    "OptionMeta",
    "available_engines",
    "engine_classes",
    "engines_accepting",
    "flag_of",
    "get_engine",
    "make_options",
    "meta_of",
    "option_meta",
    "register",
    "unregister",
]
