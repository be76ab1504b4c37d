"""Text input (lipsync_tool.tts): espeak-ng for real, piper and plug-in voices
through small fakes, the CLI's --text/--text-file and the run report.

The espeak-ng tests skip where it is not installed, and fail instead under
LIPSYNC_TOOL_REQUIRE_ESPEAK=1 (.ci/run sets it after installing it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import wave
from pathlib import Path

import pytest

from conftest import cli_subprocess
from lipsync_tool.errors import DependencyError, InputError, UsageError
from lipsync_tool.media import probe
from lipsync_tool.tts import Speech, SpeechError, SynthResult, Voice, VoiceSettings, choose_voice, get_voice, register_voice, unregister_voice, wav_duration
from lipsync_tool.tts.espeak import EspeakVoice

FAST = ("--x264-preset", "ultrafast")
FRAME = 1 / 25 + 1e-6
SENTENCE = "Hello there, this sentence is spoken by the text input."

# A stand-in for a voice plug-in (and for the piper package): a tone, 0.04 s per character.
TONE_VOICE = '''
import math, struct, wave
from lipsync_tool.tts import SynthResult, Voice, wav_duration

def write_tone(path, seconds, rate=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
        n = int(seconds * rate)
        w.writeframes(b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 220 * i / rate) * (0.6 + 0.4 * math.sin(2 * math.pi * 3 * i / rate)))) for i in range(n)))

class ToneVoice(Voice):
    name = "tone"

    def synthesize(self, text, out_wav, settings):
        write_tone(out_wav, 0.04 * len(text))
        return SynthResult(self.name, {"per_char": 0.04}, out_wav, wav_duration(out_wav))
'''

# The parts of piper-tts (1.3+) that lipsync_tool.tts.piper uses, with the real package's names and shapes:
# PiperVoice.load(model, config_path=) → .config (sample_rate, length_scale) and .synthesize(text, syn_config=),
# which yields one AudioChunk per sentence.  tests/test_tts_piper.py runs the real package.
FAKE_PIPER = '''
import json
from dataclasses import dataclass

@dataclass
class SynthesisConfig:
    speaker_id: int | None = None
    length_scale: float | None = None

@dataclass
class PiperConfig:
    sample_rate: int
    length_scale: float = 1.0

@dataclass
class AudioChunk:
    sample_rate: int
    sample_width: int
    sample_channels: int
    audio_int16_bytes: bytes

class PiperVoice:
    def __init__(self, config):
        self.config = config

    @staticmethod
    def load(model_path, config_path=None, use_cuda=False):
        raw = json.loads(open(config_path or f"{model_path}.json").read())
        return PiperVoice(PiperConfig(raw["audio"]["sample_rate"], raw.get("inference", {}).get("length_scale", 1.0)))

    def synthesize(self, text, syn_config=None):
        scale = syn_config.length_scale if syn_config and syn_config.length_scale is not None else self.config.length_scale
        for sentence in text.split("|"):  # 0.04 s per character and "|" ends a sentence, so the chunks add up
            rate = self.config.sample_rate
            yield AudioChunk(rate, 2, 1, b"\\x10\\x00" * int(0.04 * len(sentence) * scale * rate))
'''


@pytest.fixture
def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        if os.environ.get("LIPSYNC_TOOL_REQUIRE_ESPEAK", "") not in ("", "0"):
            pytest.fail("espeak-ng is not on PATH, and LIPSYNC_TOOL_REQUIRE_ESPEAK is set (.ci/run installed it)")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return exe


@pytest.fixture
def fakes(tmp_path, monkeypatch) -> Path:
    """The tone voice module and a fake ``piper`` package, importable (the real piper-tts, if loaded, is put back after)."""
    site = tmp_path / "fake-site"
    (site / "piper").mkdir(parents=True)
    (site / "tone_voice.py").write_text(TONE_VOICE)
    (site / "piper" / "__init__.py").write_text(FAKE_PIPER)

    def ours(module: str) -> bool:
        return module.partition(".")[0] in ("piper", "tone_voice")

    saved = {name: sys.modules.pop(name) for name in [m for m in sys.modules if ours(m)]}
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if ours(m)]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture
def no_piper(monkeypatch):
    """piper-tts not importable, whatever this machine has."""
    monkeypatch.setattr("lipsync_tool.tts.piper.piper_importable", lambda: False)


def piper_model(folder: Path, name: str = "voice.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / name
    model.write_bytes(os.urandom(2048))
    Path(str(model) + ".json").write_text(json.dumps({"audio": {"sample_rate": 22050}}))
    return model


# -- espeak-ng ------------------------------------------------------------------------------


def test_espeak_writes_a_wav_as_long_as_the_text_needs(espeak, tmp_path):
    normal = EspeakVoice().synthesize(SENTENCE, tmp_path / "normal.wav", VoiceSettings())
    # Ten words at espeak-ng's default 175 words per minute: about 3.4 s, with its pauses.
    assert 2.0 < normal.duration < 6.0
    assert normal.duration == pytest.approx(wav_duration(tmp_path / "normal.wav"))
    assert normal.settings == {"variant": "en-us", "rate": 175, "binary": espeak}
    fast = EspeakVoice().synthesize(SENTENCE, tmp_path / "fast.wav", VoiceSettings(rate=350, variant="en-gb"))
    assert fast.settings["rate"] == 350 and fast.settings["variant"] == "en-gb"
    assert fast.duration < normal.duration * 0.75


def test_espeak_text_is_never_an_option_or_a_shell_command(espeak, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "--help; touch pwned $(touch pwned2) `touch pwned3`"
    result = EspeakVoice().synthesize(text, tmp_path / "s.wav", VoiceSettings())
    assert result.duration > 1.0
    assert not list(tmp_path.glob("pwned*"))
    assert (tmp_path / "s.txt").read_text(encoding="utf-8") == text


def test_espeak_refuses_bad_settings(espeak, tmp_path):
    for settings, words in ((VoiceSettings(variant="-w/tmp/x"), "not an espeak-ng voice"), (VoiceSettings(rate=20), "80..450"), (VoiceSettings(model=tmp_path / "m.onnx"), "no model")):
        with pytest.raises(UsageError, match=words):
            EspeakVoice().synthesize("hi", tmp_path / "s.wav", settings)
    with pytest.raises(SpeechError, match="voice does not exist"):
        EspeakVoice().synthesize("hi", tmp_path / "s.wav", VoiceSettings(variant="zzz"))


def test_missing_espeak_is_a_dependency_error_with_the_apt_hint(tmp_path, monkeypatch, no_piper):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(DependencyError, match="espeak-ng is not installed") as exc:
        Speech.from_text("hi", voice="espeak-ng").synthesize(tmp_path / "s.wav")
    assert "apt-get install espeak-ng" in exc.value.hint
    # The default voice: none left.
    with pytest.raises(DependencyError, match=r"no local voice can speak here \(piper: .*; espeak-ng: espeak-ng is not installed") as exc:
        choose_voice(None, VoiceSettings(), cache_dir=tmp_path / "cache")
    assert "apt-get install espeak-ng" in exc.value.hint


def test_missing_espeak_from_the_cli(fake_engine, media, cli, tmp_path, monkeypatch, ff, no_piper):
    monkeypatch.setenv("LIPSYNC_TOOL_FFMPEG", ff.path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    r = cli(media.portrait(), tmp_path / "o.mp4", "--engine", "fake", "--text", "Hello", "--voice", "espeak-ng")
    assert r.code == 1, r.output
    assert "espeak-ng is not installed" in r.output and "apt-get install espeak-ng" in r.output
    assert not (tmp_path / "o.mp4").exists()


# -- the whole run --------------------------------------------------------------------------


def test_run_with_text_speaks_it_and_matches_its_length(espeak, fake_engine, media, cli, tmp_path, no_piper):
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    r = cli(media.portrait(), out, "--engine", "fake", "--text", SENTENCE, "--voice-rate", "200", "--report", report, "--keep-temp", *FAST)
    assert r.code == 0, r.output
    assert f"Spoke {len(SENTENCE)} characters with espeak-ng" in r.stdout
    assert "tts/speech.wav" in r.stdout  # --keep-temp lists it
    data = json.loads(report.read_text())
    speech = data["inputs"]["speech"]
    assert speech["voice"] == "espeak-ng"
    assert speech["settings"] == {"variant": "en-us", "rate": 200, "binary": espeak}
    assert speech["text"] == {"source": "--text", "sha256": hashlib.sha256(SENTENCE.encode()).hexdigest(), "characters": len(SENTENCE), "preview": SENTENCE, "truncated": False}
    wav = Path(speech["wav"])
    assert wav.is_file() and wav.parent.parent == Path(data["temp_dir"])
    assert data["inputs"]["audio"] == str(wav)
    assert speech["duration"] == pytest.approx(wav_duration(wav), abs=1e-3)
    info = probe(out, measure=True)
    assert abs(info.video.duration - speech["duration"]) <= FRAME
    assert abs(info.audio.duration - speech["duration"]) <= FRAME


def test_text_file_is_an_input_never_the_output(fake_engine, media, cli, tmp_path):
    text = tmp_path / "script.mp4"  # a text file, whatever its name
    text.write_text(SENTENCE)
    r = cli(media.portrait(), text, "--engine", "fake", "--text-file", text, "--overwrite")
    assert r.code == 2, r.output
    assert "is one of the inputs" in r.output
    old = tmp_path / "old.mp4"
    old.write_bytes(b"old video")
    r = cli(media.portrait(), old, "--engine", "fake", "--text-file", text)
    assert r.code == 2, r.output
    assert "exists" in r.output
    assert text.read_text() == SENTENCE and old.read_bytes() == b"old video"


def test_long_text_is_quoted_in_part():
    text = "word " * 100
    info = Speech.from_text(text).source_info()
    assert info["characters"] == len(text.strip()) and info["truncated"] is True
    assert info["preview"] == text.strip()[:200]
    assert info["sha256"] == hashlib.sha256(text.strip().encode()).hexdigest()


# -- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("AUDIO", "OUT", "--text", "hi"), "AUDIO and --text together"),
        (("AUDIO", "--text", "hi", "--hls", "HLS"), "AUDIO and --text together"),
        (("OUT", "--text", "hi", "--text-file", "TEXT"), "give --text or --text-file, not both"),
        (("OUT", "--text", ""), "the text is empty"),
        (("OUT", "--text", "  \n "), "the text is only white space"),
        (("OUT", "--text-file", "MISSING"), "cannot read the text file"),
        (("OUT", "--text-file", "FOLDER"), "cannot read the text file"),
        (("OUT", "--text-file", "LATIN1"), "is not UTF-8 text"),
        (("OUT", "--text-file", "EMPTY"), "the text is empty"),
        (("OUT", "--text-file", "BINARY"), "NUL bytes"),
        ((), "missing AUDIO"),
        (("AUDIO", "OUT", "--voice", "espeak-ng"), "chooses the voice of --text"),
    ],
)
def test_text_usage_errors(cli, media, tmp_path, extra, words):
    files = {
        "AUDIO": media.audio(),
        "OUT": tmp_path / "out.mp4",
        "HLS": tmp_path / "hls",
        "TEXT": tmp_path / "t.txt",
        "MISSING": tmp_path / "missing.txt",
        "FOLDER": tmp_path,
        "LATIN1": tmp_path / "latin1.txt",
        "EMPTY": tmp_path / "empty.txt",
        "BINARY": tmp_path / "binary.txt",
    }
    files["TEXT"].write_text("hi")
    files["LATIN1"].write_bytes("Grüße".encode("latin-1"))
    files["EMPTY"].write_bytes(b"")
    files["BINARY"].write_bytes(b"a\x00b")
    r = cli(media.portrait(), *(files.get(a, a) for a in extra))
    assert r.code == 2, r.output
    assert words in r.output
    assert not (tmp_path / "out.mp4").exists()


def test_unknown_voice_is_a_usage_error(fake_engine, media, cli, tmp_path):
    r = cli(media.portrait(), tmp_path / "o.mp4", "--engine", "fake", "--text", "hi", "--voice", "nobody")
    assert r.code == 2, r.output
    assert "unknown voice 'nobody'" in r.output and "espeak-ng" in r.output


# -- the default voice, piper and plug-ins --------------------------------------------------


def test_default_voice_is_espeak_without_piper(espeak, tmp_path, fakes):
    # piper-tts importable (the fake) but its voice model is not in the cache: espeak-ng.
    assert choose_voice(None, VoiceSettings(), cache_dir=tmp_path / "cache").name == "espeak-ng"


def test_default_voice_is_piper_with_its_verified_model(tmp_path, fakes, cli):
    """The piper component from the verified cache (here fetched by setup from file:// mirrors that a registry file names)."""
    model = piper_model(tmp_path / "mirror", "en_US-lessac-medium.onnx")
    config = Path(str(model) + ".json")
    lines = []
    for f in (model, config):
        lines += [f'[piper.checkpoints."{f.name}"]', f'urls = ["{f.as_uri()}"]', f'sha256 = "{hashlib.sha256(f.read_bytes()).hexdigest()}"', f"size = {f.stat().st_size}", ""]
    registry = tmp_path / "registry.toml"
    registry.write_text("\n".join(lines))
    cache = tmp_path / "cache"
    assert get_voice("piper", cache_dir=cache, registry_file=registry).unavailable(VoiceSettings()) == "its voice model en_US-lessac-medium.onnx is not in the verified cache"
    r = cli("setup", "--voice", "piper", "--registry", registry, "--cache-dir", cache)
    assert r.code == 0, r.output
    voice = choose_voice(None, VoiceSettings(), cache_dir=cache, registry_file=registry)
    assert voice.name == "piper"
    result = voice.synthesize("abcdefghij" * 5, tmp_path / "s.wav", VoiceSettings(rate=350))
    assert result.settings["source"] == "cache" and result.settings["length_scale"] == 0.5
    assert result.settings["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert result.duration == pytest.approx(0.04 * 50 * 0.5, abs=1e-3)


def test_piper_with_the_users_model_is_hashed_and_used(tmp_path, fakes):
    model = piper_model(tmp_path / "voices")
    speech = Speech.from_text("abcdefghij" * 3, voice="piper", model=model)
    assert speech.check_inputs() == [model]
    result = speech.synthesize(tmp_path / "s.wav", cache_dir=tmp_path / "cache")
    assert result.voice == "piper"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert result.settings == {"model": str(model.resolve()), "source": "user", "sha256": sha, "known": False, "length_scale": 1.0, "sample_rate": 22050}
    assert result.duration == pytest.approx(1.2, abs=1e-3)
    # A model file alone picks piper.
    assert choose_voice(None, VoiceSettings(model=model)).name == "piper"
    Path(str(model) + ".json").unlink()
    with pytest.raises(InputError, match=r"voice\.onnx\.json is missing"):
        speech.synthesize(tmp_path / "t.wav", cache_dir=tmp_path / "cache")


def test_piper_without_its_package_says_how_to_install_it(tmp_path, no_piper, monkeypatch):
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper fails
    with pytest.raises(DependencyError, match="piper-tts cannot be imported") as exc:
        Speech.from_text("hi", voice="piper", model=piper_model(tmp_path)).synthesize(tmp_path / "s.wav")
    assert "pip install piper-tts" in exc.value.hint


def test_a_registered_voice_is_used_in_process(tmp_path):
    class Quiet(Voice):
        name = "quiet-test"

        def synthesize(self, text, out_wav, settings):
            with wave.open(str(out_wav), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 8000)
            return SynthResult(self.name, {"rate": settings.rate}, out_wav, wav_duration(out_wav))

    register_voice(Quiet)
    try:
        result = Speech.from_text("hi", voice="quiet-test", rate=99).synthesize(tmp_path / "q.wav")
        assert (result.voice, result.settings, result.duration) == ("quiet-test", {"rate": 99}, 1.0)
    finally:
        unregister_voice("quiet-test")


def test_a_plugin_voice_from_an_entry_point_is_found_and_used(plugin_env, fakes, media, tmp_path):
    dist = fakes / "tone_voice-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tone-voice\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text("[lipsync_tool.tts]\ntone = tone_voice:ToneVoice\n")
    env = {**plugin_env, "PYTHONPATH": os.pathsep.join([str(fakes), plugin_env["PYTHONPATH"]])}
    out, report = tmp_path / "out.mp4", tmp_path / "r.json"
    r = cli_subprocess(media.portrait(), out, "--engine", "fake", "--text", "x" * 30, "--voice", "tone", "--report", report, "--no-upscale", env=env, timeout=240)
    assert r.code == 0, r.output
    speech = json.loads(report.read_text())["inputs"]["speech"]
    assert speech["voice"] == "tone" and speech["settings"] == {"per_char": 0.04}
    assert speech["duration"] == pytest.approx(1.2, abs=1e-3)
    assert abs(probe(out, measure=True).video.duration - 1.2) <= FRAME
