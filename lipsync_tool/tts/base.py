"""The voice contract: a :class:`Voice` turns text into a WAV file.

A voice is local and offline: it never downloads anything while it speaks.
Built-in voices and plug-ins (entry point group ``lipsync_tool.tts``) go
through the same registry (:mod:`.registry`); a plug-in is a :class:`Voice`
subclass with a ``name`` and a ``synthesize`` method (the registry builds it
with the keywords ``cache_dir`` and ``registry_file``)::

    class MyVoice(Voice):
        name = "my-voice"

        def synthesize(self, text, out_wav, settings):
            ...  # write out_wav
            return SynthResult(self.name, {"rate": settings.rate}, out_wav, wav_duration(out_wav))
"""

from __future__ import annotations

import wave
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import RunError


class SpeechError(RunError):
    """A voice ran but did not produce usable speech."""


@dataclass(frozen=True)
class VoiceSettings:
    """What the user chose for the voice (None: the voice's own default)."""

    #: Words per minute.
    rate: int | None = None
    #: The voice's own voice or language, e.g. espeak-ng's ``en-us`` (``--voice espeak-ng:en-us``).
    variant: str | None = None
    #: A model file the voice reads (piper's ``.onnx``), given by the user or found in the cache.
    model: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rate": self.rate, "variant": self.variant, "model": str(self.model) if self.model else None}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class SynthResult:
    """One synthesis: the voice, the settings it actually used, the WAV and its length."""

    voice: str
    settings: dict[str, Any]
    wav: Path
    #: Seconds of audio in *wav*.
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return {"voice": self.voice, "settings": dict(self.settings), "wav": str(self.wav), "duration": round(self.duration, 4)}


class Voice(ABC):
    """A text-to-speech voice (see the module doc)."""

    #: The registry key and the ``--voice`` choice.
    name: ClassVar[str]
    #: One line for listings.
    description: ClassVar[str] = ""

    def __init__(self, *, cache_dir: Path | None = None, registry_file: Path | None = None):
        #: The tool's cache and registry override file, for a voice whose model lives there (never downloaded while speaking).
        self.cache_dir = cache_dir
        self.registry_file = registry_file

    def unavailable(self, settings: VoiceSettings) -> str | None:
        """Why this voice cannot speak here with *settings* (None: it can).  Cheap: no synthesis."""
        return None

    @abstractmethod
    def synthesize(self, text: str, out_wav: Path, settings: VoiceSettings) -> SynthResult:
        """Speak *text* into *out_wav* (a new PCM WAV file); raise a :mod:`lipsync_tool.errors` error on failure."""


def wav_duration(path: Path) -> float:
    """Seconds of audio in a PCM WAV file; a missing, unreadable or empty file is a :class:`SpeechError`."""
    try:
        with wave.open(str(path), "rb") as w:
            frames, rate = w.getnframes(), w.getframerate()
    except (OSError, EOFError, wave.Error) as exc:
        raise SpeechError(f"the voice's output is not a readable WAV file: {exc}", subject=path) from None
    if frames <= 0 or rate <= 0:
        raise SpeechError("the voice wrote a WAV file with no audio in it", subject=path, hint="Check the text: it may hold nothing the voice can speak.")
    return frames / rate
