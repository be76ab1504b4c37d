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
from .base import Engine, EngineOptions

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lipsync_tool.engines"

_ENGINES: dict[str, type[Engine]] = {}
_loaded = False


def register(engine_cls: type[Engine], *, replace: bool = False) -> type[Engine]:
    """Add an engine class to the registry (usable as a decorator)."""
    name = engine_cls.name
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
        except Exception as exc:  # a broken plug-in must not break the tool
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


def option_owner(field: str) -> list[str]:
    """The engines whose options model has *field*."""
    return [n for n, cls in engine_classes().items() if field in cls.Options.model_fields]


def option_label(field: str) -> str:
    """How messages name an option field: its CLI flag on the command line, its keyword from Python."""
    from .. import naming

    return naming.option(field, flag_of(field))


def flag_of(field: str) -> str:
    """The CLI spelling of an option field."""
    for cls in engine_classes().values():
        info = cls.Options.model_fields.get(field)
        if info is not None and isinstance(info.json_schema_extra, dict):
            return info.json_schema_extra["cli"]["flag"].split("/")[0]
    return "--" + field.replace("_", "-")


def make_options(engine: Engine, values: dict[str, Any]) -> EngineOptions:
    """Build *engine*'s options from *values*, naming the owner of a stray option."""
    from pydantic import ValidationError

    own = engine.Options.model_fields
    for key in values:
        if key not in own:
            owners = option_owner(key)
            if owners:
                raise UsageError(
                    f"this option belongs to the {' and '.join(owners)} engine, not to {engine.name}",
                    subject=option_label(key),
                    hint=f"Drop it, or use {naming.setting('engine', owners[0])}.",
                )
            raise UsageError(f"unknown option for engine {engine.name}", subject=key, hint=f"See {'lipsync-tool run --help' if naming.cli_names() else 'LipSyncPipeline.options()'} for the options.")
    try:
        return engine.Options(**values)
    except ValidationError as exc:
        raise validation_to_usage(exc) from None


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
    "Engine",
    "EngineOptions",
    "available_engines",
    "engine_classes",
    "get_engine",
    "make_options",
    "register",
    "unregister",
]
