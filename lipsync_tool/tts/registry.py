"""The voice registry: the built-in voices and plug-ins (entry point group ``lipsync_tool.tts``).

``--voice NAME`` (or ``NAME:VARIANT``, e.g. ``espeak-ng:en-gb``) picks one;
without it the first local voice that can speak here is used, in
:data:`DEFAULT_ORDER`: piper where its package and a verified voice model are
there, else espeak-ng.  Nothing is downloaded to make a voice available.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import naming
from ..errors import DependencyError, UsageError
from .base import Voice, VoiceSettings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lipsync_tool.tts"
#: The default voice's candidates, best first.
DEFAULT_ORDER = ("piper", "espeak-ng")
ALIASES = {"espeak": "espeak-ng", "auto": None, "default": None}

_VOICES: dict[str, type[Voice]] = {}
_loaded = False


def register_voice(cls: type[Voice], *, replace: bool = False) -> type[Voice]:
    """Add a voice class to the registry (usable as a decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"voice class {cls!r} needs a name without ':'")
    if name in _VOICES and _VOICES[name] is not cls and not replace:
        raise ValueError(f"a voice named {name!r} is already registered")
    _VOICES[name] = cls
    return cls


def unregister_voice(name: str) -> None:
    _VOICES.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from .espeak import EspeakVoice
    from .piper import PiperVoice

    register_voice(EspeakVoice)
    register_voice(PiperVoice)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register_voice(ep.load())
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the tool
            log.warning("voice plug-in %s could not be loaded: %s", ep.value, exc)


def voice_classes() -> dict[str, type[Voice]]:
    _load()
    return dict(sorted(_VOICES.items()))


def available_voices() -> list[str]:
    return list(voice_classes())


def parse_voice(spec: str | None) -> tuple[str | None, str | None]:
    """``espeak-ng:en-gb`` → ``("espeak-ng", "en-gb")``; None or ``auto`` → ``(None, None)`` (the default voice)."""
    if spec is None or not spec.strip():
        return None, None
    name, _, variant = spec.strip().partition(":")
    resolved = ALIASES[name.lower()] if name.lower() in ALIASES else name
    if resolved is None and variant:
        raise UsageError(f"{spec!r}: a variant needs a voice name", subject=naming.option("voice"), hint="e.g. espeak-ng:en-gb")
    return resolved, variant or None


def get_voice(name: str, *, cache_dir: Path | None = None, registry_file: Path | None = None) -> Voice:
    classes = voice_classes()
    if name not in classes:
        raise UsageError(f"unknown voice {name!r}", subject=naming.option("voice"), hint="Choose one of: " + ", ".join(classes) + " (or install a voice plug-in).")
    return classes[name](cache_dir=cache_dir, registry_file=registry_file)


def choose_voice(name: str | None, settings: VoiceSettings, *, cache_dir: Path | None = None, registry_file: Path | None = None) -> Voice:
    """The voice named, or the default: the first of :data:`DEFAULT_ORDER` that can speak here."""
    if name is None and settings.model is not None:
        name = "piper"  # a model file is piper's
    if name is not None:
        return get_voice(name, cache_dir=cache_dir, registry_file=registry_file)
    reasons = []
    for candidate in DEFAULT_ORDER:
        voice = get_voice(candidate, cache_dir=cache_dir, registry_file=registry_file)
        why = voice.unavailable(settings)
        if why is None:
            log.info("voice: %s (the default)", candidate)
            return voice
        reasons.append(f"{candidate}: {why}")
    from .espeak import INSTALL_HINT

    raise DependencyError("no local voice can speak here (" + "; ".join(reasons) + ")", subject=naming.option("voice"), hint=INSTALL_HINT)
