"""The pure parts of media handling: exact ffmpeg argv, probe parsing, ffmpeg discovery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync_tool.config import UpscaleOptions
from lipsync_tool.errors import DependencyError
from lipsync_tool.media import AudioSource, find_ffmpeg, parse_probe, slice_adts, upscale_argv

RAW, AUD, OUT = Path("/w/raw.mp4"), Path("/in/speech.mp3"), Path("/out/.o.partial.mp4")


def test_default_upscale_argv_is_exact():
    argv = upscale_argv("ffmpeg", RAW, AudioSource(AUD), OUT, UpscaleOptions(), 3.04, fmt="mp4")
    assert argv == [
        "ffmpeg", "-hide_banner", "-nostdin", "-y",
        "-i", "/w/raw.mp4",
        "-i", "/in/speech.mp3",
        "-filter_complex", "[0:v]fps=fps=25[s0];[s0]tpad=stop=-1:stop_mode=clone[s1];[s1]scale=-2:1080:flags=bicubic[s2];[s2]setsar=1[s3]",
        "-map", "[s3]", "-map", "1:a:0",
        "-f", "mp4", "-b:a", "192k", "-acodec", "aac", "-crf", "18", "-movflags", "+faststart",
        "-pix_fmt", "yuv420p", "-preset", "medium", "-t", "3.040000", "-vcodec", "libx264",
        "/out/.o.partial.mp4",
    ]  # fmt: skip


def test_canvas_pad_crop_and_options_argv():
    opts = UpscaleOptions(canvas="1920x1080", fit="pad", crf=20, x264_preset="slow", fps=30)
    argv = upscale_argv("ffmpeg", RAW, AudioSource(AUD), OUT, opts, 2.0, fmt="mp4")
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph == (
        "[0:v]fps=fps=30[s0];[s0]tpad=stop=-1:stop_mode=clone[s1];"
        "[s1]scale=1920:1080:flags=bicubic:force_divisible_by=2:force_original_aspect_ratio=decrease[s2];"
        "[s2]pad=1920:1080:(ow-iw)/2:(oh-ih)/2:color=black[s3];[s3]setsar=1[s4]"
    )
    assert argv[argv.index("-crf") + 1] == "20" and argv[argv.index("-preset") + 1] == "slow"
    crop = upscale_argv("ffmpeg", RAW, AudioSource(AUD), OUT, UpscaleOptions(canvas=(1080, 1920), fit="crop"), 2.0, fmt="mp4")
    assert "force_original_aspect_ratio=increase[s2];[s2]crop=1080:1920[s3]" in crop[crop.index("-filter_complex") + 1]


def test_no_upscale_remove_audio_and_mkv_argv():
    argv = upscale_argv("ffmpeg", RAW, AudioSource(AUD), Path("/o.mkv"), UpscaleOptions(enabled=False, remove_audio=True, target_height=720), 1.5, fmt="mkv")
    graph = argv[argv.index("-filter_complex") + 1]
    assert "scale" not in graph and "crop=trunc(iw/2)*2:trunc(ih/2)*2" in graph
    assert "-an" in argv and "/in/speech.mp3" not in argv and "-acodec" not in argv
    assert argv[argv.index("-f") + 1] == "matroska" and "-movflags" not in argv


def test_target_height_and_odd_canvas_validation():
    assert "scale=-2:1440:flags=bicubic" in " ".join(upscale_argv("ffmpeg", RAW, None, OUT, UpscaleOptions(target_height=1440), 1, fmt="mp4"))
    with pytest.raises(ValueError):
        UpscaleOptions(canvas="1921x1080")
    with pytest.raises(ValueError):
        UpscaleOptions(target_height=1079)


PROBE = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'out.mp4':
  Metadata:
    major_brand     : isom
  Duration: 00:00:03.04, start: 0.000000, bitrate: 123 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, progressive), 1920x1080 [SAR 1:1 DAR 16:9], 45 kb/s, 25 fps, 25 tbr, 12800 tbn (default)
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 69 kb/s (default)
At least one output file must be specified
"""


def test_parse_probe_without_ffprobe():
    info = parse_probe(PROBE, "out.mp4")
    assert info.duration == pytest.approx(3.04)
    assert (info.video.codec, info.video.width, info.video.height, info.video.fps, info.video.pix_fmt) == ("h264", 1920, 1080, 25.0, "yuv420p")
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", 44100, "mono")
    assert "mp4" in info.container


def test_slice_adts_picks_whole_frames_without_overlap(ff, tmp_path):
    from lipsync_tool.media import AAC_FRAME, adts_frames, encode_aac_argv

    wav = tmp_path / "a.wav"
    subprocess.run([ff.path, "-v", "error", "-f", "lavfi", "-i", "sine=sample_rate=16000", "-t", "3", str(wav)], check=True)
    aac = tmp_path / "a.aac"
    subprocess.run(encode_aac_argv(ff.path, wav, aac, "64k"), check=True, capture_output=True)
    data = aac.read_bytes()
    rate, frames = adts_frames(data)
    assert rate == 16000
    a, first_a = slice_adts(data, 0.0, 1.3)
    b, first_b = slice_adts(data, 1.3, None)
    assert len(a) + len(b) == len(data) - frames[0][1]  # all but the priming frame, none twice
    assert first_a == 0.0 and 1.3 <= first_b < 1.3 + AAC_FRAME / rate


def test_ffmpeg_discovery_order(tmp_path, monkeypatch):
    real = find_ffmpeg()
    # LIPSYNC_TOOL_FFMPEG wins
    assert find_ffmpeg(real.path).source == "LIPSYNC_TOOL_FFMPEG"
    with pytest.raises(DependencyError):
        find_ffmpeg(str(tmp_path / "no-ffmpeg"))
    # then `ffmpeg` on PATH
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(real.path, bindir / "ffmpeg")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert find_ffmpeg().source == "PATH"
    # then the imageio-ffmpeg binary
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_ffmpeg().source == "imageio-ffmpeg"


def test_cli_import_path_stays_light():
    code = (
        "import sys; import lipsync_tool.cli as c; app = c.build_app(True); "
        "heavy = [m for m in ('torch', 'cv2', 'librosa', 'git', 'numpy', 'PIL', 'dlib', 'requests') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
