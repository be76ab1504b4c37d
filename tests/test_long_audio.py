"""Long audio in chunks, progressive HLS output, and audio of any format."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ffmpeg
from lipsync_tool.chunking import plan_chunks
from lipsync_tool.hls import playlist_durations
from lipsync_tool.media import probe

FAST = ("--x264-preset", "ultrafast")
#: Silences (start, end) in the generated "speech"; chunk targets are 3 s apart.
SILENCES = [(3.5, 3.8), (6.9, 7.2)]
LENGTH = 9.0


def speech_with_silences(rate: int = 16000):
    t = np.arange(int(LENGTH * rate)) / rate
    # a "voice" whose loudness wobbles like syllables, never quiet except in the gaps
    x = 0.5 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    for a, b in SILENCES:
        x[(t >= a) & (t < b)] = 0
    return x.astype("float32"), rate


@pytest.fixture
def long_speech(ff, tmp_path) -> Path:
    path = tmp_path / "long.wav"
    expr = "+".join(f"between(t,{a},{b - 0.0001})" for a, b in SILENCES)
    run_ffmpeg(ff, "-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=44100,volume='if({expr},0,0.6+0.4*sin(2*PI*3*t))':eval=frame", "-t", str(LENGTH), str(path))
    return path


def test_boundaries_land_in_the_silences():
    samples, rate = speech_with_silences()
    plan = plan_chunks(samples, rate, 25, 3.0)
    cuts = [c.start for c in plan[1:]]
    assert len(cuts) == len(SILENCES)
    for cut, (a, b) in zip(cuts, SILENCES):
        assert a <= cut <= b, (cut, a, b)
    # frame-aligned, contiguous, and the frames add up to the audio's
    assert plan[0].start == 0 and all(x.end == y.start for x, y in zip(plan, plan[1:]))
    assert sum(c.frames for c in plan) == round(LENGTH * 25)
    assert all(abs(c.start * 25 - round(c.start * 25)) < 1e-9 for c in plan)


def test_short_audio_and_chunking_off_stay_whole():
    samples, rate = speech_with_silences()
    assert len(plan_chunks(samples, rate, 25, 45.0)) == 1
    assert len(plan_chunks(samples, rate, 25, 0)) == 1


def test_chunked_run_joins_exactly_and_publishes_hls(fake_engine, cli, media, long_speech, tmp_path, ff, monkeypatch):
    trace = tmp_path / "trace"
    monkeypatch.setenv("FAKE_ENGINE_TRACE", str(trace))
    out, hls, report = tmp_path / "out.mp4", tmp_path / "hls", tmp_path / "r.json"
    r = cli(media.portrait(), long_speech, out, "--engine", "fake", "--chunk-seconds", "3", "--hls", hls, "--report", report, *FAST)
    assert r.code == 0, r.output
    data = json.loads(report.read_text())
    starts = [c["start"] for c in data["chunks"][1:]]
    assert len(data["chunks"]) == 3 and all(a <= s <= b for s, (a, b) in zip(starts, SILENCES))
    assert trace.read_text().count("start") == 3
    info = probe(out, measure=True)
    assert info.video.frames == round(LENGTH * 25)
    assert abs(info.video.duration - LENGTH) <= 1 / 25 and abs(info.audio.duration - LENGTH) <= 1 / 25
    assert info.video.height == 1080
    # HLS: complete, durations add up, and ffmpeg reads it back whole
    playlist = hls / "index.m3u8"
    text = playlist.read_text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert abs(sum(playlist_durations(playlist)) - LENGTH) <= 1 / 25
    back = probe(playlist, ff=ff, measure=True)
    assert abs(back.video.frames - LENGTH * 25) <= 1
    assert back.audio is not None and back.video.height == 1080
    decoded = subprocess.run([ff.path, "-hide_banner", "-v", "error", "-i", str(playlist), "-f", "null", "-"], capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr.strip() == ""
    # the resumable chunk state is gone after a successful run
    chunk_root = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "chunks"
    assert chunk_root.is_dir() and list(chunk_root.iterdir()) == []


def test_segments_are_readable_before_the_run_finishes(plugin_env, media, long_speech, tmp_path):
    trace, hls = tmp_path / "trace", tmp_path / "hls"
    env = {**plugin_env, "FAKE_ENGINE_TRACE": str(trace)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync_tool", str(media.portrait()), str(long_speech), "--hls", str(hls),
         "--engine", "fake", "--chunk-seconds", "3", "--fake-sleep", "2", *FAST],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    playlist = hls / "index.m3u8"
    observed = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        events = trace.read_text() if trace.exists() else ""
        if events.count("start") == 2 and events.count("end") == 1:  # chunk 2 is rendering
            observed = playlist.read_text() if playlist.exists() else ""
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert observed is not None, "never saw the second chunk rendering"
    assert "segment_00000.ts" in observed, "chunk 1's segments were not published while chunk 2 was rendering"
    assert "#EXT-X-ENDLIST" not in observed
    assert "#EXT-X-ENDLIST" in playlist.read_text()
    assert "Wrote the HLS playlist" in stdout


def test_chunk_failure_names_the_chunk_marks_the_playlist_and_a_rerun_reuses_chunks(fake_engine, cli, media, long_speech, tmp_path, monkeypatch):
    counter, trace = tmp_path / "counter", tmp_path / "trace"
    monkeypatch.setenv("FAKE_ENGINE_COUNTER", str(counter))
    monkeypatch.setenv("FAKE_ENGINE_TRACE", str(trace))
    image = media.portrait()
    out, hls, report = tmp_path / "out.mp4", tmp_path / "hls", tmp_path / "r.json"
    args = (image, long_speech, out, "--engine", "fake", "--chunk-seconds", "3", "--hls", hls, "--fake-fail-on-run", "2", *FAST)
    r = cli(*args)
    assert r.code == 1
    m = re.search(r"Error: chunk 2/3 \((\d+\.\d\d)–(\d+\.\d\d) s\): Fake failed \(RuntimeError: the fake engine crashed on purpose\)", r.stderr)
    assert m, r.stderr
    assert SILENCES[0][0] <= float(m.group(1)) <= SILENCES[0][1] and SILENCES[1][0] <= float(m.group(2)) <= SILENCES[1][1]
    assert "index.m3u8 stops after" in r.stderr and "marked as failed" in r.stderr
    text = (hls / "index.m3u8").read_text()
    assert "#EXT-X-ENDLIST" not in text and "# lipsync-tool: FAILED" in text
    assert not out.exists()
    # The rerun renders only chunks 2 and 3 (the counter moved on, so run 2 is behind us).
    trace.unlink()
    r = cli(*args, "--overwrite", "--report", report)
    assert r.code == 0, r.output
    assert json.loads(report.read_text())["chunks_reused"] == [0]
    assert trace.read_text().count("start") == 2
    assert probe(out, measure=True).video.frames == round(LENGTH * 25)


def test_keep_temp_keeps_the_chunks(fake_engine, cli, media, long_speech, tmp_path):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), long_speech, out, "--engine", "fake", "--chunk-seconds", "3", "--keep-temp", "--no-upscale")
    assert r.code == 0, r.output
    temp = Path(next(ln for ln in r.stdout.splitlines() if ln.startswith("Temp files kept in ")).removeprefix("Temp files kept in ").rstrip(":"))
    assert sorted(p.name for p in (temp / "chunks").glob("chunk_*.mp4")) == ["chunk_000.mp4", "chunk_001.mp4", "chunk_002.mp4"]
    assert (temp / "inputs" / "audio_chunk_001.wav").is_file()


def test_hls_without_chunking_and_without_mp4(fake_engine, cli, media, tmp_path, ff):
    hls = tmp_path / "hls"
    r = cli(media.portrait(), media.audio(seconds=6.0), "--hls", hls, "--hls-segment-seconds", "2", "--engine", "fake", *FAST)
    assert r.code == 0, r.output
    durations = playlist_durations(hls / "index.m3u8")
    assert len(durations) == 3 and abs(sum(durations) - 6.0) <= 1 / 25
    assert not list(tmp_path.glob("*.mp4"))


def test_audio_track_of_a_video_is_used(fake_engine, cli, media, tmp_path):
    clip = media.video("talk.mp4", seconds=1.5)
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), clip, out, "--engine", "fake", "--no-upscale")
    assert r.code == 0, r.output
    assert abs(probe(out, measure=True).audio.duration - 1.5) <= 1 / 25


def test_neither_output_nor_hls_is_a_usage_error(fake_engine, cli, media):
    r = cli(media.portrait(), media.audio(), "--engine", "fake")
    assert r.code == 2 and "give an OUTPUT file, --hls DIR, or both" in r.stderr


def test_audio_is_converted_once_to_16k_mono(fake_engine, cli, media, tmp_path, ff):
    stereo48 = tmp_path / "s.flac"
    run_ffmpeg(ff, "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000", "-ac", "2", "-t", "1", str(stereo48))
    out = tmp_path / "o.mp4"
    r = cli(media.portrait(), stereo48, out, "--engine", "fake", "--no-upscale", "--keep-temp")
    assert r.code == 0, r.output
    temp = Path(next(ln for ln in r.stdout.splitlines() if ln.startswith("Temp files kept in ")).removeprefix("Temp files kept in ").rstrip(":"))
    staged = probe(temp / "inputs" / "audio.wav")
    assert staged.audio.sample_rate == 16000 and staged.audio.channels == "mono" and staged.audio.codec == "pcm_s16le"
    # the published audio is the original (48 kHz), encoded once to AAC
    assert probe(out).audio.sample_rate == 48000


def test_runs_sharing_chunks_at_once_both_succeed(fake_engine, media, long_speech, tmp_path):
    """Same inputs and engine options, other output settings: the same chunk key.
    The second run waits for the first instead of losing its chunks."""
    import threading

    from lipsync_tool import LipSyncPipeline

    results, errors = {}, []

    def run(height: int) -> None:
        try:
            pipe = LipSyncPipeline(engine="fake", chunk_seconds=3, target_height=height, x264_preset="ultrafast", seed=5, fake_sleep=0.5)
            results[height] = pipe.run(media.portrait(f"p{height}.jpg"), long_speech, tmp_path / f"o{height}.mp4")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in (720, 1080)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for h in (720, 1080):
        info = probe(tmp_path / f"o{h}.mp4", measure=True)
        assert info.video.height == h and info.video.frames == round(LENGTH * 25)
