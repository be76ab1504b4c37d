"""piper-tts: a neural local voice, first choice where it can run.

It runs when the ``piper`` Python package (``pip install piper-tts``, 1.3 or
newer) is importable and it has a voice model: the user's own
(``--voice-model FILE.onnx``, with ``FILE.onnx.json`` beside it; hashed and
stamped like a user checkpoint) or the ``piper`` component's
``en_US-lessac-medium`` voice from the verified cache (fetched ahead of time,
never while a run speaks).  Piper has no words-per-minute setting:
``--voice-rate`` scales the voice's own ``length_scale`` (its config's
``inference.length_scale``) by :data:`NORMAL_RATE` / rate, within
:data:`RATE_RANGE`.  Piper speaks one chunk per sentence (its bundled
espeak-ng phonemizer splits them); the chunks are written into one 16-bit mono
WAV at the voice's own sample rate as they come.  The report records the
model, its sha256, the length scale and the sample rate used.
"""

from __future__ import annotations

import importlib.util
import logging
import wave
from pathlib import Path

from .. import naming
from ..errors import DependencyError, InputError, UsageError
from .base import SpeechError, SynthResult, Voice, VoiceSettings, wav_duration

log = logging.getLogger(__name__)

COMPONENT = "piper"
MODEL = "en_US-lessac-medium.onnx"
CONFIG = MODEL + ".json"
#: The words per minute that the voice's own ``length_scale`` stands for (an approximation: piper speaks at the pace it was trained on).
NORMAL_RATE = 175
#: The ``--voice-rate`` range piper is asked for (espeak-ng's): a length scale of about 0.39 to 2.2 times the voice's own.
RATE_RANGE = (80, 450)
INSTALL_HINT = "Install it with 'pip install piper-tts' (1.3 or newer), or use --voice espeak-ng."
SETUP_HINT = (
    f"Fetch the voice into the cache where there is network ('lipsync-tool setup --voice {COMPONENT}'), "
    "give your own model with --voice-model FILE.onnx, or use --voice espeak-ng."
)
CONFIG_HINT = "Use the .onnx.json that was published with the voice (piper-tts 1.3+ reads audio.sample_rate, espeak.voice, phoneme_id_map, num_symbols, num_speakers)."
MODEL_HINT = "Give a piper voice model (.onnx) that downloaded completely; the .onnx.json beside it must be that voice's."


def piper_importable() -> bool:
    try:
        return importlib.util.find_spec("piper") is not None
    except (ImportError, ValueError):
        return False


class PiperVoice(Voice):
    name = COMPONENT
    description = f"piper-tts (local neural voice; {MODEL.removesuffix('.onnx')} from the verified cache, or --voice-model)"

    def cached_model(self) -> Path | None:
        """The component's model, when both its files are verified in the cache (stamps only: no hashing, no network)."""
        if self.cache_dir is None:
            return None
        from ..resources.components import ComponentResources

        res = ComponentResources(COMPONENT, self.cache_dir, registry_file=self.registry_file)
        return res.path(MODEL) if set(res.status([MODEL, CONFIG]).values()) == {"ready"} else None

    def cached_sha256(self) -> str:
        """The sha256 the cached model was verified against (the registry's, or its override's)."""
        from ..resources.components import ComponentResources

        return ComponentResources(COMPONENT, self.cache_dir, registry_file=self.registry_file).specs[MODEL].sha256

    def unavailable(self, settings: VoiceSettings) -> str | None:
        if not piper_importable():
            return "the piper-tts package is not installed"
        if settings.model is None and self.cached_model() is None:
            return f"its voice model {MODEL} is not in the verified cache"
        return None

    def synthesize(self, text: str, out_wav: Path, settings: VoiceSettings) -> SynthResult:
        if settings.variant:
            raise UsageError("piper takes its voice from the model file", subject=naming.option("voice"), hint="Use --voice piper with --voice-model FILE.onnx.")
        check_rate(settings.rate)
        model, model_info = self._model(settings)
        piper = _import_piper()
        log.info("speaking %d characters with piper (%s)", len(text), model)
        voice = _load(piper, model)
        length_scale = speaking_scale(voice.config.length_scale, settings.rate)
        try:
            chunks = voice.synthesize(text, syn_config=piper.SynthesisConfig(length_scale=length_scale))
            sample_rate = write_wav(chunks, out_wav)
        except Exception as exc:  # piper and onnxruntime raise their own untyped errors (onnxruntime's derive from Exception only)
            out_wav.unlink(missing_ok=True)
            raise SpeechError(f"piper failed while speaking: {type(exc).__name__}: {exc}", subject=model, hint="Check that the model and its .onnx.json belong together.") from exc
        if sample_rate is None:
            raise SpeechError("piper made no speech from this text", subject=naming.option("text"), hint="Give words it can read aloud (punctuation alone is not spoken).")
        used = {**model_info, "rate": settings.rate, "length_scale": length_scale, "sample_rate": sample_rate}
        return SynthResult(self.name, {k: v for k, v in used.items() if v is not None}, out_wav, wav_duration(out_wav))

    def _model(self, settings: VoiceSettings) -> tuple[Path, dict]:
        """The model to load and what the report says about it."""
        if settings.model is None:
            cached = self.cached_model()
            if cached is None:
                raise DependencyError(f"piper's voice model {MODEL} is not in the verified cache", subject=naming.option("voice") + " piper", hint=SETUP_HINT)
            return cached, {"model": str(cached), "source": "cache", "sha256": self.cached_sha256(), "known": True}
        model = Path(settings.model).expanduser()
        config = Path(str(model) + ".json")
        if not config.is_file():
            raise InputError(f"piper needs the voice's config beside the model: {config.name} is missing", subject=model, hint="Put FILE.onnx.json next to FILE.onnx.")
        sha256, known = self._user_model_sha(model)
        return model.resolve(), {"model": str(model.resolve()), "source": "user", "sha256": sha256, "known": known}

    def _user_model_sha(self, model: Path) -> tuple[str, bool]:
        """Hash the user's model (stamped, so a warm run does not re-hash it) and compare it with the registry's."""
        from ..resources.cache import Cache, Stamp, atomic_write_text, sha256_file
        from ..resources.registry import component_specs

        stamp = None
        stamp_file = Cache(self.cache_dir).user_stamp(model) if self.cache_dir is not None else None
        if stamp_file is not None:
            stamp = Stamp.load(stamp_file)
        if stamp is None or not stamp.matches(model):
            log.info("hashing %s", model)
            stamp = Stamp.of(model, sha256_file(model))
            if stamp_file is not None:
                atomic_write_text(stamp_file, stamp.dumps())
        known = any(spec.sha256 == stamp.sha256 for spec in component_specs(COMPONENT).values())
        if not known:
            log.warning("%s has sha256 %s, which is not in the registry; using it as given (your own voice is fine)", model, stamp.sha256)
        return stamp.sha256, known


def check_rate(rate: int | None) -> None:
    lo, hi = RATE_RANGE
    if rate is not None and not lo <= rate <= hi:
        raise UsageError(f"piper speaks {lo}..{hi} words per minute (approximately), not {rate}", subject=naming.option("voice_rate"))


def speaking_scale(voice_scale: float, rate: int | None) -> float:
    """The ``length_scale`` for *rate* words per minute: the voice's own scale at :data:`NORMAL_RATE`, shorter when faster."""
    return round(voice_scale * NORMAL_RATE / rate, 4) if rate else voice_scale


def _import_piper():
    try:
        import piper
    except ImportError as exc:
        raise DependencyError(f"piper-tts cannot be imported: {exc}", subject=naming.option("voice") + " piper", hint=INSTALL_HINT) from None
    if not all(hasattr(piper, name) for name in ("PiperVoice", "SynthesisConfig")):
        raise DependencyError("the installed piper package is not piper-tts 1.3 or newer", subject=naming.option("voice") + " piper", hint=INSTALL_HINT)
    return piper


def _load(piper, model: Path):
    """piper's voice for *model* and ``MODEL.json``; a file it cannot read is the user's input error, named with its cause."""
    config = Path(str(model) + ".json")
    try:
        return piper.PiperVoice.load(str(model), config_path=str(config))
    except (KeyError, TypeError, ValueError) as exc:  # the config: a missing field (KeyError), not JSON (ValueError), a wrong type
        what = f"field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InputError(f"is not a piper voice config ({type(exc).__name__}: {what})", subject=config, hint=CONFIG_HINT) from None
    except OSError as exc:
        raise InputError(f"cannot read the voice: {exc.strerror or exc}", subject=model) from None
    except Exception as exc:  # onnxruntime's load errors (InvalidProtobuf, Fail, …) derive from Exception only
        raise InputError(f"is not a model onnxruntime can load ({type(exc).__name__}: {exc})", subject=model, hint=MODEL_HINT) from exc


def write_wav(chunks, out_wav: Path) -> int | None:
    """Write piper's audio chunks (one per sentence) into one PCM WAV as they come; the sample rate, or None when there were none."""
    w, rate = None, None
    try:
        for chunk in chunks:
            if w is None:
                w, rate = wave.open(str(out_wav), "wb"), chunk.sample_rate
                w.setframerate(rate), w.setsampwidth(chunk.sample_width), w.setnchannels(chunk.sample_channels)
            w.writeframes(chunk.audio_int16_bytes)
    finally:
        if w is not None:
            w.close()
    return rate
