"""``lipsync-tool demo``: the bundled portrait and speech, run like ``run`` (the fake engine)."""

from __future__ import annotations

import json
import subprocess
from importlib.resources import as_file, files
from pathlib import Path

import pytest

from conftest import DATA
from lipsync_tool.media import probe

FAST = ("--x264-preset", "ultrafast")


def bundled(name: str) -> Path:
    with as_file(files("lipsync_tool") / "data" / name) as path:
        return Path(path)


def test_demo_writes_output_from_the_bundled_files(fake_engine, cli, tmp_path):
    out, report = tmp_path / "demo.mp4", tmp_path / "report.json"
    r = cli("demo", out, "--engine", "fake", "--no-upscale", "--report", report, *FAST)
    assert r.code == 0, r.output
    image, audio = bundled("portrait.jpg"), bundled("speech.wav")
    # It says up front what it runs, then what it wrote.
    assert str(image) in r.stdout and str(audio) in r.stdout
    assert r.stdout.index(str(image)) < r.stdout.index(f"Wrote {out}")
    data = json.loads(report.read_text())
    assert data["status"] == "ok"
    assert Path(data["inputs"]["image"]).resolve() == image.resolve()
    assert Path(data["inputs"]["audio"]).resolve() == audio.resolve()
    info = probe(out, measure=True)
    assert info.video.width == 256  # --no-upscale: the fake engine's size
    assert abs(info.audio.duration - data["inputs"]["audio_info"]["duration"]) <= 1 / 25 + 1e-6


def test_demo_default_output_name_in_the_current_folder(fake_engine, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("demo", "--engine", "fake", "--no-upscale", *FAST)
    assert r.code == 0, r.output
    assert (tmp_path / "lipsync-demo-fake.mp4").is_file()
    assert "lipsync-demo-fake.mp4" in r.stdout


def test_demo_is_not_taken_for_an_image_path():
    from typer.testing import CliRunner

    from lipsync_tool.cli import build_app

    r = CliRunner().invoke(build_app(), ["demo", "--help"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "demo [OPTIONS] [output]" in text and "lipsync-demo-ENGINE.mp4" in text


def test_bundled_files_ship_in_the_package():
    from lipsync_tool.data import SAMPLES, sample

    assert set(SAMPLES.values()) == {"portrait.jpg", "speech.wav"}
    for role in SAMPLES:
        assert sample(role).is_file()
    # tests/data links to the packaged copies (one copy in git).
    for name in SAMPLES.values():
        assert (DATA / name).resolve() == bundled(name).resolve()
    # and the build ships them (package data in pyproject.toml).
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["lipsync_tool.data"]
    assert {"*.jpg", "*.wav"} <= set(patterns)


def test_bundled_speech_is_short_real_speech(ff):
    speech = bundled("speech.wav")
    assert speech.stat().st_size < 300 * 1024
    proc = subprocess.run([ff.path, "-hide_banner", "-i", str(speech), "-af", "volumedetect", "-f", "null", "-"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    peak = float(proc.stderr.split("max_volume:")[1].split("dB")[0])
    assert peak > -20
    info = probe(speech)
    assert info.audio is not None and info.video is None
    assert 3 <= info.duration <= 8
