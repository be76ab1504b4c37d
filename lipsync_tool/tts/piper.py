"""piper-tts: a neural local voice, first choice where it can run.

It runs when the ``piper`` Python package (``pip install piper-tts``, 1.3 or
newer) is importable and it has a voice model: the user's own
(``--voice-model FILE.onnx``, with ``FILE.onnx.json`` beside it; hashed and
stamped like a user checkpoint) or the ``piper`` component's
``en_US-lessac-medium`` voice from the verified cache (fetched ahead of time,
never while a run speaks).  Piper has no words-per-minute setting:
``--voice-rate`` becomes its ``length_scale``, relative to :data:`NORMAL_RATE`.
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
#: The words per minute that ``length_scale`` 1.0 stands for (an approximation: piper speaks at the pace it was trained on).
NORMAL_RATE = 175
INSTALL_HINT = "Install it with 'pip install piper-tts' (1.3 or newer), or use --voice espeak-ng."
SETUP_HINT = (
    f"Fetch the voice into the cache where there is network ('lipsync-tool setup --scorer {COMPONENT}'), "
    "give your own model with --voice-model FILE.onnx, or use --voice espeak-ng."
)


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

    def unavailable(self, settings: VoiceSettings) -> str | None:
        if not piper_importable():
            return "the piper-tts package is not installed"
        if settings.model is None and self.cached_model() is None:
            return f"its voice model {MODEL} is not in the verified cache"
        return None

    def synthesize(self, text: str, out_wav: Path, settings: VoiceSettings) -> SynthResult:
        if settings.variant:
            raise UsageError("piper takes its voice from the model file", subject=naming.option("voice"), hint="Use --voice piper with --voice-model FILE.onnx.")
        model, model_info = self._model(settings)
        try:
            from piper import PiperVoice as _Piper
            from piper import SynthesisConfig
        except ImportError as exc:
            raise DependencyError(f"piper-tts cannot be imported: {exc}", subject=naming.option("voice") + " piper", hint=INSTALL_HINT) from None
        length_scale = round(NORMAL_RATE / settings.rate, 3) if settings.rate else None
        log.info("speaking %d characters with piper (%s)", len(text), model)
        try:
            voice = _Piper.load(str(model), config_path=str(model) + ".json")
            with wave.open(str(out_wav), "wb") as w:
                voice.synthesize_wav(text, w, syn_config=SynthesisConfig(length_scale=length_scale))
        except (OSError, ValueError, RuntimeError) as exc:
            raise SpeechError(f"piper failed: {exc}", subject=model) from exc
        used = {**model_info, "rate": settings.rate, "length_scale": length_scale}
        return SynthResult(self.name, {k: v for k, v in used.items() if v is not None}, out_wav, wav_duration(out_wav))

    def _model(self, settings: VoiceSettings) -> tuple[Path, dict]:
        """The model to load and what the report says about it."""
        if settings.model is None:
            cached = self.cached_model()
            if cached is None:
                raise DependencyError(f"piper's voice model {MODEL} is not in the verified cache", subject=naming.option("voice") + " piper", hint=SETUP_HINT)
            return cached, {"model": str(cached), "source": "cache", "known": True}
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
