"""Text in place of an audio file: :class:`Speech`, what the run speaks, and :func:`speak`, the run's hook.

``LipSyncPipeline.run(image, Speech.from_text("Hello"), "out.mp4")`` speaks the
text into the run's temp dir (``tts/speech.wav``, kept by ``keep_temp``) and
uses that WAV as the audio.  The report's ``inputs.speech`` records the text
(its sha256, its length and the first :data:`PREVIEW` characters, never more),
the voice, the settings it used and the WAV.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import naming
from ..errors import UsageError
from .base import SynthResult, VoiceSettings

if TYPE_CHECKING:
    from ..config import Settings
    from ..report import InputsInfo

#: The longest text a run speaks (about two hours of speech).
MAX_CHARS = 100_000
#: How much of the text the report quotes.
PREVIEW = 200


@dataclass(frozen=True)
class Speech:
    """Text to speak, and the voice to speak it (give it where an audio path goes)."""

    text: str
    #: The text file it was read from (an input: never written).
    file: Path | None = None
    #: ``NAME`` or ``NAME:VARIANT``; None: the default voice.
    voice: str | None = None
    settings: VoiceSettings = field(default_factory=VoiceSettings)

    @classmethod
    def from_text(cls, text: str, *, voice: str | None = None, rate: int | None = None, model: Path | None = None, file: Path | None = None) -> Speech:
        label = naming.option("text_file") if file is not None else naming.option("text")
        if not text.strip():
            raise UsageError("the text is empty" if not text else "the text is only white space", subject=file or label, hint="Give some words to speak.")
        if len(text) > MAX_CHARS:
            raise UsageError(f"the text has {len(text):,} characters; at most {MAX_CHARS:,} are spoken in one run", subject=file or label, hint="Split it into several runs.")
        return cls(text.strip(), file, voice, VoiceSettings(rate=rate, model=Path(model) if model is not None else None))

    @classmethod
    def from_file(cls, path: Path, *, voice: str | None = None, rate: int | None = None, model: Path | None = None) -> Speech:
        """The UTF-8 text of *path* (a byte-order mark is dropped)."""
        label = naming.option("text_file")
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the text file: {exc.strerror or exc} (given as {label})", subject=path, hint="Check the path and its permissions.") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}; given as {label})",
                subject=path,
                hint="Save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8 in.txt > out.txt).",
            ) from None
        if "\x00" in text:
            raise UsageError(f"is not a text file: it holds NUL bytes (given as {label})", subject=path, hint="Give a plain UTF-8 text file.")
        return cls.from_text(text, voice=voice, rate=rate, model=model, file=path)

    def __str__(self) -> str:
        return f"text from {self.file}" if self.file is not None else f"text ({len(self.text)} characters)"

    def source_info(self) -> dict[str, Any]:
        """The text as the report records it: where from, its sha256 and length, and its beginning."""
        return {
            "source": str(self.file) if self.file is not None else naming.option("text"),
            "sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
            "characters": len(self.text),
            "preview": self.text[:PREVIEW],
            "truncated": len(self.text) > PREVIEW,
        }

    def check_inputs(self) -> list[Path]:
        """The files this speech reads (the text file, a voice model), checked as inputs; for the output path checks."""
        from ..targets import check_input_file

        files = []
        if self.file is not None:
            check_input_file(self.file, naming.option("text_file"), what="text file")
            files.append(self.file)
        if self.settings.model is not None:
            check_input_file(self.settings.model, naming.option("voice_model"), what="voice model (.onnx)")
            files.append(self.settings.model)
        return files

    def synthesize(self, out_wav: Path, *, cache_dir: Path | None = None, registry_file: Path | None = None) -> SynthResult:
        from dataclasses import replace

        from .registry import choose_voice, parse_voice

        name, variant = parse_voice(self.voice)
        settings = replace(self.settings, variant=variant) if variant else self.settings
        voice = choose_voice(name, settings, cache_dir=cache_dir, registry_file=registry_file)
        out_wav.parent.mkdir(parents=True, exist_ok=True)
        return voice.synthesize(self.text, out_wav, settings)


def speak(speech: Speech, temp_root: Path, inputs: InputsInfo, settings: Settings | None = None) -> Path:
    """The run's hook: speak *speech* into ``temp_root/tts/speech.wav``, record it in the report's *inputs*, return the WAV.

    *settings* (the run's) name the cache and the registry file, where a voice model may be."""
    started = time.perf_counter()
    where = {"cache_dir": settings.cache_dir, "registry_file": settings.registry} if settings is not None else {}
    result = speech.synthesize(temp_root / "tts" / "speech.wav", **where)
    inputs.audio = str(result.wav)
    inputs.speech = {"text": speech.source_info(), **result.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
    return result.wav
