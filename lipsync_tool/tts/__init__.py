"""Text to speech: text in place of the speech audio (``--text``, ``--text-file``).

:class:`Voice` is the contract, :class:`Speech` the text a run speaks; voices
come from :mod:`.registry` (built-ins: piper, espeak-ng; plug-ins: entry point
group ``lipsync_tool.tts``).  Nothing here imports more than the standard
library until a voice speaks.
"""

from .base import SpeechError, SynthResult, Voice, VoiceSettings, wav_duration
from .registry import ENTRY_POINT_GROUP, available_voices, choose_voice, get_voice, register_voice, unregister_voice, voice_classes
from .speech import Speech, speak

__all__ = [
    "ENTRY_POINT_GROUP",
    "Speech",
    "SpeechError",
    "SynthResult",
    "Voice",
    "VoiceSettings",
    "available_voices",
    "choose_voice",
    "get_voice",
    "register_voice",
    "speak",
    "unregister_voice",
    "voice_classes",
    "wav_duration",
]
