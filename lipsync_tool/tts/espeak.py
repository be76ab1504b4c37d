"""espeak-ng: the always-available local voice (a small Debian package, no model files).

It runs as ``espeak-ng -b 1 -v VARIANT -s WPM -w OUT.wav -f TEXT.txt``: an
argument list, never a shell, and the text from a UTF-8 file beside the WAV
(so the text can never be read as an option).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from .. import naming
from ..errors import DependencyError, UsageError
from .base import SpeechError, SynthResult, Voice, VoiceSettings, wav_duration

log = logging.getLogger(__name__)

BINARY = "espeak-ng"
#: espeak-ng's own defaults, written into the report so a run can be repeated.
DEFAULT_VARIANT = "en-us"
DEFAULT_RATE = 175
#: espeak-ng accepts 80..450 words per minute.
RATE_RANGE = (80, 450)
_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+./-]{0,63}$")
INSTALL_HINT = (
    "Install espeak-ng: 'sudo apt-get install espeak-ng' (Debian/Ubuntu), 'sudo dnf install espeak-ng' (Fedora) "
    "or 'brew install espeak-ng' (macOS); or choose another voice with --voice, or give AUDIO instead of text."
)


def find_espeak() -> str | None:
    return shutil.which(BINARY)


class EspeakVoice(Voice):
    name = BINARY
    description = "espeak-ng (local, formant synthesis; install it with apt-get install espeak-ng)"

    def unavailable(self, settings: VoiceSettings) -> str | None:
        return None if find_espeak() else "espeak-ng is not installed (not found on PATH)"

    def synthesize(self, text: str, out_wav: Path, settings: VoiceSettings) -> SynthResult:
        exe = find_espeak()
        if exe is None:
            raise DependencyError("espeak-ng is not installed (not found on PATH)", subject=naming.option("voice") + " espeak-ng", hint=INSTALL_HINT)
        variant, rate = check_settings(settings)
        text_file = out_wav.with_suffix(".txt")
        text_file.write_text(text, encoding="utf-8")
        argv = [exe, "-b", "1", "-v", variant, "-s", str(rate), "-w", str(out_wav), "-f", str(text_file)]
        log.info("speaking %d characters with %s", len(text), " ".join(argv))
        timeout = 60 + len(text) / 20
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SpeechError(f"espeak-ng did not finish within {timeout:.0f} s", subject=BINARY) from None
        except OSError as exc:
            raise DependencyError(f"espeak-ng could not be started: {exc.strerror or exc}", subject=exe, hint=INSTALL_HINT) from None
        if proc.returncode != 0 or not out_wav.is_file():
            tail = (proc.stderr or proc.stdout).strip()[-500:]
            hint = "List the voices with 'espeak-ng --voices'." if "voice" in tail.lower() else None
            raise SpeechError(f"espeak-ng failed (exit {proc.returncode}): {tail or 'no message'}", subject=BINARY, hint=hint)
        return SynthResult(self.name, {"variant": variant, "rate": rate, "binary": exe}, out_wav, wav_duration(out_wav))


def check_settings(settings: VoiceSettings) -> tuple[str, int]:
    """espeak-ng's ``-v`` and ``-s`` from *settings*, checked (a variant is one argument, never an option)."""
    if settings.model is not None:
        raise UsageError("espeak-ng takes no model file", subject=naming.option("voice_model"), hint="Leave --voice-model out, or use --voice piper.")
    variant = settings.variant or DEFAULT_VARIANT
    if not _VARIANT_RE.match(variant):
        raise UsageError(f"{variant!r} is not an espeak-ng voice name", subject=naming.option("voice"), hint="e.g. --voice espeak-ng:en-gb; list them with 'espeak-ng --voices'.")
    rate = settings.rate or DEFAULT_RATE
    lo, hi = RATE_RANGE
    if not lo <= rate <= hi:
        raise UsageError(f"espeak-ng speaks {lo}..{hi} words per minute, not {rate}", subject=naming.option("voice_rate"))
    return variant, rate
