"""Text input with the real piper-tts package (its phonemizer, onnxruntime and WAV chunks) and a stand-in voice.

The published voices live on Hugging Face, out of reach here, so tests/piper_rig.py
builds a tiny ONNX voice with the same inputs and outputs, whose audio has a known
length for a text.  Everything between ``--text`` and the video is real: the
verified download of the voice from a loopback server, piper's espeak-ng
phonemizer (bundled with piper-tts), the model run, the WAV and the run report.

The module skips where piper-tts (or onnx, for the rig) is not installed, and
fails instead under LIPSYNC_TOOL_REQUIRE_PIPER=1 (for CI, which installs them)."""

from __future__ import annotations

import json
import logging
import os
import wave
from pathlib import Path

import pytest

try:
    import onnx  # noqa: F401 - builds the stand-in voice
    import piper  # noqa: F401
except ImportError as exc:
    if os.environ.get("LIPSYNC_TOOL_REQUIRE_PIPER", "") not in ("", "0"):
        pytest.fail(f"piper-tts or onnx cannot be imported ({exc}), and LIPSYNC_TOOL_REQUIRE_PIPER is set", pytrace=False)
    pytest.skip(f"piper-tts or onnx is not installed (pip install piper-tts onnx): {exc}", allow_module_level=True)

import piper_rig

from httpserver import LoopbackServer
from lipsync_tool.errors import DependencyError, InputError, UsageError
from lipsync_tool.media import probe
from lipsync_tool.tts import Speech, SpeechError, choose_voice, wav_duration
from lipsync_tool.tts.piper import CONFIG, MODEL

FAST = ("--x264-preset", "ultrafast")
FRAME = 1 / 25 + 1e-6
SHORT = "Hello there."
TEXT = "Hello there, this sentence is spoken by the text input. And here is a second one!"


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> Path:
    """The stand-in voice, as a user gives it (``--voice-model FILE.onnx`` with ``FILE.onnx.json`` beside it)."""
    return piper_rig.write_voice(tmp_path_factory.mktemp("voices"))


@pytest.fixture
def mirror(tmp_path):
    """A loopback server holding the stand-in under the cached voice's file names, and a registry file pointing at it."""
    model = piper_rig.write_voice(tmp_path / "mirror", MODEL)
    config = Path(str(model) + ".json")
    with LoopbackServer() as server:
        for f in (model, config):
            server.add(f"/piper/{f.name}", f.read_bytes())
        registry = tmp_path / "registry.toml"
        registry.write_text(piper_rig.registry_entries("piper", [model, config], server.url("/piper")))
        yield server, registry, model


def speak(model: Path, text: str, out: Path, rate: int | None = None):
    return Speech.from_text(text, voice="piper", model=model, rate=rate).synthesize(out, cache_dir=out.parent / "cache")


def seconds(samples: int) -> float:
    return samples / piper_rig.SAMPLE_RATE


# -- the voice on its own ---------------------------------------------------------------------------


def test_piper_speaks_with_the_stand_in_voice(voice, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    result = speak(voice, TEXT, tmp_path / "s.wav")
    samples, ids = piper_rig.expected_samples(voice, TEXT)
    # Two sentences, each phonemized by piper's espeak-ng and numbered by the voice's map: no phoneme dropped.
    assert ids > len(TEXT) // 2
    assert not [r for r in caplog.records if "Missing phoneme" in r.getMessage()]
    with wave.open(str(tmp_path / "s.wav"), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, piper_rig.SAMPLE_RATE, samples)
        pcm = w.readframes(w.getnframes())
    assert max(abs(int.from_bytes(pcm[i : i + 2], "little", signed=True)) for i in range(0, 20000, 2)) > 16000  # real audio, normalised
    assert result.voice == "piper" and result.duration == pytest.approx(seconds(samples))
    sha = piper_rig.sha256(voice)
    assert result.settings == {"model": str(voice), "source": "user", "sha256": sha, "known": False, "length_scale": 1.0, "sample_rate": piper_rig.SAMPLE_RATE}


def test_longer_text_is_longer_and_the_rate_is_the_length_scale(voice, tmp_path):
    short = speak(voice, SHORT, tmp_path / "short.wav")
    normal = speak(voice, TEXT, tmp_path / "normal.wav")
    assert short.duration == pytest.approx(seconds(piper_rig.expected_samples(voice, SHORT)[0]))
    assert normal.duration > 3 * short.duration
    fast = speak(voice, TEXT, tmp_path / "fast.wav", rate=350)
    slow = speak(voice, TEXT, tmp_path / "slow.wav", rate=100)
    assert (fast.settings["length_scale"], slow.settings["length_scale"]) == (0.5, 1.75)
    assert fast.settings["rate"] == 350
    assert fast.duration == pytest.approx(seconds(piper_rig.expected_samples(voice, TEXT, 0.5)[0]))
    assert slow.duration == pytest.approx(seconds(piper_rig.expected_samples(voice, TEXT, 1.75)[0]))
    assert fast.duration < normal.duration < slow.duration


def test_the_rate_scales_the_voices_own_length_scale(tmp_path):
    model = piper_rig.write_voice(tmp_path / "slow-voice", length_scale=1.2, sample_rate=22050, speakers=3)
    own = speak(model, SHORT, tmp_path / "own.wav")
    assert own.settings["length_scale"] == 1.2 and own.settings["sample_rate"] == 22050
    assert wav_duration(tmp_path / "own.wav") == pytest.approx(piper_rig.expected_samples(model, SHORT, 1.2)[0] / 22050)
    faster = speak(model, SHORT, tmp_path / "faster.wav", rate=350)
    assert faster.settings["length_scale"] == 0.6


def test_bad_inputs_are_clear_errors(voice, tmp_path):
    with pytest.raises(SpeechError, match="piper made no speech from this text"):
        speak(voice, "---", tmp_path / "dash.wav")
    assert not (tmp_path / "dash.wav").exists()
    with pytest.raises(UsageError, match=r"80\.\.450 words per minute"):
        speak(voice, SHORT, tmp_path / "s.wav", rate=5)
    # Not an ONNX model (e.g. a cut-off download given as --voice-model).
    broken = tmp_path / "broken" / "voice.onnx"
    broken.parent.mkdir()
    broken.write_bytes(voice.read_bytes()[:300])
    Path(str(broken) + ".json").write_text(Path(str(voice) + ".json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(InputError, match="is not a model onnxruntime can load") as exc:
        speak(broken, SHORT, tmp_path / "s.wav")
    assert exc.value.hint and "downloaded completely" in exc.value.hint
    # A config without what piper needs.
    bare = tmp_path / "bare" / "voice.onnx"
    bare.parent.mkdir()
    bare.write_bytes(voice.read_bytes())
    Path(str(bare) + ".json").write_text(json.dumps({"audio": {"sample_rate": 16000}}))
    with pytest.raises(InputError, match=r"is not a piper voice config \(KeyError: field 'num_symbols'") as exc:
        speak(bare, SHORT, tmp_path / "s.wav")
    Path(str(bare) + ".json").write_text("{not json")
    with pytest.raises(InputError, match=r"is not a piper voice config \(JSONDecodeError"):
        speak(bare, SHORT, tmp_path / "s.wav")
    # A config that is not this model's: three speakers, for a model without a speaker input.
    Path(str(bare) + ".json").write_text(json.dumps(piper_rig.voice_config(speakers=3)))
    with pytest.raises(SpeechError, match=r"piper failed while speaking: .*sid") as exc:
        speak(bare, SHORT, tmp_path / "s.wav")
    assert "belong together" in exc.value.hint
    assert not (tmp_path / "s.wav").exists()


# -- the verified cache and whole runs ----------------------------------------------------------------


def test_setup_fetches_the_voice_and_a_run_speaks_with_it(mirror, fake_engine, media, cli, tmp_path):
    server, registry, model = mirror
    r = cli("setup", "--voice", "piper", "--registry", registry)
    assert r.code == 0, r.output
    assert [len(server.routes[f"/piper/{n}"].requests) for n in (MODEL, CONFIG)] == [1, 1]
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    # No --voice: piper is the default once its package and its verified model are here.
    r = cli(media.portrait(), out, "--engine", "fake", "--text", TEXT, "--registry", registry, "--report", report, *FAST)
    assert r.code == 0, r.output
    assert f"Spoke {len(TEXT)} characters with piper" in r.stdout
    speech = json.loads(report.read_text())["inputs"]["speech"]
    samples, _ = piper_rig.expected_samples(model, TEXT)
    assert speech["voice"] == "piper"
    assert speech["settings"]["source"] == "cache" and speech["settings"]["known"] is True
    assert Path(speech["settings"]["model"]).name == MODEL and Path(speech["settings"]["model"]).read_bytes() == model.read_bytes()
    assert speech["settings"]["sha256"] == piper_rig.sha256(model)
    assert speech["duration"] == pytest.approx(seconds(samples), abs=1e-4)
    info = probe(out, measure=True)
    assert abs(info.video.duration - speech["duration"]) <= FRAME
    assert abs(info.audio.duration - speech["duration"]) <= FRAME
    # Nothing is fetched again while speaking.
    assert [len(server.routes[f"/piper/{n}"].requests) for n in (MODEL, CONFIG)] == [1, 1]


def test_a_run_with_the_users_model_records_it(voice, fake_engine, media, cli, tmp_path):
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    r = cli(media.portrait(), out, "--engine", "fake", "--text", SHORT, "--voice", "piper", "--voice-model", voice, "--voice-rate", "350", "--report", report, *FAST)
    assert r.code == 0, r.output
    speech = json.loads(report.read_text())["inputs"]["speech"]
    assert speech["settings"] == {
        "model": str(voice),
        "source": "user",
        "sha256": piper_rig.sha256(voice),
        "known": False,
        "rate": 350,
        "length_scale": 0.5,
        "sample_rate": piper_rig.SAMPLE_RATE,
    }
    assert speech["duration"] == pytest.approx(seconds(piper_rig.expected_samples(voice, SHORT, 0.5)[0]), abs=1e-4)
    assert abs(probe(out, measure=True).video.duration - speech["duration"]) <= FRAME


def test_a_corrupt_voice_is_refused_and_never_spoken(mirror, fake_engine, media, cli, tmp_path):
    server, registry, _ = mirror
    server.routes[f"/piper/{MODEL}"].wrong = True  # right length, one wrong byte: only the sha256 can tell
    r = cli("setup", "--voice", "piper", "--registry", registry)
    assert r.code != 0, r.output
    assert "does not match the registry" in r.output and "could not download from any mirror" in r.output
    cache = Path(os.environ["LIPSYNC_TOOL_CACHE"])
    assert not [p for p in cache.rglob(MODEL + "*") if p.is_file()]
    # The run then says how to get the voice rather than speaking with anything unverified.
    with pytest.raises(DependencyError, match="not in the verified cache") as exc:
        choose_voice("piper", Speech.from_text(SHORT).settings, cache_dir=cache, registry_file=registry).synthesize(SHORT, tmp_path / "s.wav", Speech.from_text(SHORT).settings)
    assert "lipsync-tool setup --voice piper" in exc.value.hint
    r = cli(media.portrait(), tmp_path / "o.mp4", "--engine", "fake", "--text", SHORT, "--voice", "piper", "--registry", registry)
    assert r.code != 0 and "not in the verified cache" in r.output and "setup --voice piper" in r.output
    assert not (tmp_path / "o.mp4").exists()
