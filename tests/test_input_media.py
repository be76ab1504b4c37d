"""Input images of every bit depth and mode, truncated audio, several faces,
animated images (issue 10, items 5 to 7)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from conftest import PORTRAIT, run_ffmpeg
from lipsync_tool.media import FaceBox, count_faces, find_faces, several_faces_message, stage_audio, stage_face

FAST = ("--no-upscale",)


# -- item 5: bit depths and modes ------------------------------------------------------------------


def _portrait() -> Image.Image:
    with Image.open(PORTRAIT) as im:
        return im.convert("RGB")


def _white_block(im: Image.Image) -> Image.Image:
    """*im* with its top-left 128x128 block white: what a transparent block flattens to."""
    out = im.copy()
    out.paste((255,) * len(out.getbands()) if out.mode != "L" else 255, (0, 0, 128, 128))
    return out


def _gray16() -> np.ndarray:
    return np.asarray(_portrait().convert("L")).astype(np.uint16) * 257


def _ffmpeg_png(ff, path: Path, pix_fmt: str) -> Path:
    run_ffmpeg(ff, "-i", str(PORTRAIT), "-pix_fmt", pix_fmt, str(path))
    return path


def _make(kind: str, ff, d: Path) -> tuple[Path, Image.Image, str | None]:
    """The portrait as *kind*: (file, the 8-bit reference it must stage like, the Pillow mode it opens as)."""
    rgb, gray = _portrait(), _portrait().convert("L")
    p = d / kind
    if kind == "gray16-png-ffmpeg":  # 16-bit grayscale PNG, as ffmpeg (and most tools) write it
        return _ffmpeg_png(ff, p.with_suffix(".png"), "gray16be"), gray, "I;16"
    if kind == "gray16-png-pillow":
        Image.fromarray(_gray16()).save(p.with_suffix(".png"))
        return p.with_suffix(".png"), gray, "I;16"
    if kind == "gray16-tiff":
        return _ffmpeg_png(ff, p.with_suffix(".tiff"), "gray16le"), gray, "I;16"
    if kind == "int32-16bit-tiff":  # mode "I" holding 16-bit values
        Image.fromarray(_gray16().astype(np.int32)).save(p.with_suffix(".tiff"))
        return p.with_suffix(".tiff"), gray, "I"
    if kind == "int32-8bit-tiff":  # mode "I" holding 8-bit values
        gray.convert("I").save(p.with_suffix(".tiff"))
        return p.with_suffix(".tiff"), gray, "I"
    if kind == "float-0-1-tiff":
        Image.fromarray(np.asarray(gray).astype(np.float32) / 255).save(p.with_suffix(".tiff"))
        return p.with_suffix(".tiff"), gray, "F"
    if kind == "float-0-255-tiff":
        gray.convert("F").save(p.with_suffix(".tiff"))
        return p.with_suffix(".tiff"), gray, "F"
    if kind == "rgb48-png":  # Pillow has no 16-bit RGB mode: it reads these as 8-bit RGB
        return _ffmpeg_png(ff, p.with_suffix(".png"), "rgb48be"), rgb, "RGB"
    if kind == "rgba64-png":
        return _ffmpeg_png(ff, p.with_suffix(".png"), "rgba64be"), rgb, "RGBA"
    if kind == "gray16-alpha-tiff":  # Pillow cannot read it at all: ffmpeg decodes it
        return _ffmpeg_png(ff, p.with_suffix(".tiff"), "ya16le"), gray, None
    if kind == "gray8-png":
        gray.save(p.with_suffix(".png"))
        return p.with_suffix(".png"), gray, "L"
    if kind == "palette-png":
        rgb.quantize(256).save(p.with_suffix(".png"))
        return p.with_suffix(".png"), rgb, "P"
    if kind == "palette-transparent-png":
        pal = rgb.quantize(255)  # index 255 is free: it becomes the transparent one
        colours = pal.getpalette()
        pal.putpalette(colours + [0, 0, 0] * (256 - len(colours) // 3))
        pal.paste(255, (0, 0, 128, 128))
        pal.save(p.with_suffix(".png"), transparency=255)
        return p.with_suffix(".png"), _white_block(rgb), "P"
    if kind == "gray-alpha-png":
        la = gray.convert("LA")
        la.putalpha(_white_block(Image.new("L", la.size, 0)).point(lambda v: 255 - v))
        la.save(p.with_suffix(".png"))
        return p.with_suffix(".png"), _white_block(gray), "LA"
    if kind == "cmyk-jpeg":
        rgb.convert("CMYK").save(p.with_suffix(".jpg"), quality=95)
        return p.with_suffix(".jpg"), rgb, "CMYK"
    raise AssertionError(kind)


KINDS = [
    "gray16-png-ffmpeg",
    "gray16-png-pillow",
    "gray16-tiff",
    "int32-16bit-tiff",
    "int32-8bit-tiff",
    "float-0-1-tiff",
    "float-0-255-tiff",
    "rgb48-png",
    "rgba64-png",
    "gray16-alpha-tiff",
    "gray8-png",
    "palette-png",
    "palette-transparent-png",
    "gray-alpha-png",
    "cmyk-jpeg",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_bit_depth_and_mode_stages_like_the_8bit_original(kind, ff, tmp_path):
    src, reference, mode = _make(kind, ff, tmp_path)
    if mode is None:
        with pytest.raises(UnidentifiedImageError):
            Image.open(src)
    else:
        with Image.open(src) as im:
            assert im.mode == mode  # the file really is what the case claims
    (tmp_path / "staged").mkdir()
    staged, face = stage_face(src, tmp_path / "staged" / "face", ff, allow_video=False)
    with Image.open(staged) as im:
        assert im.mode == "RGB" and im.size == reference.size == (face.width, face.height)
        got = np.asarray(im).astype(np.float64)
    want = np.asarray(reference.convert("RGB")).astype(np.float64)
    got_means, want_means = got.mean(axis=(0, 1)), want.mean(axis=(0, 1))
    assert np.all(np.abs(got_means - want_means) <= 0.02 * want_means), (kind, got_means, want_means)
    # Not only the mean: every pixel is where it belongs (no clipping, no stretch).
    assert np.abs(got - want).mean() < 3.0, kind


def test_face_precheck_finds_the_face_in_a_16bit_gray_png(ff, tmp_path):
    src, _, _ = _make("gray16-png-ffmpeg", ff, tmp_path)
    assert count_faces(src) == 1  # the file as it is
    staged, _ = stage_face(src, tmp_path / "face", ff, allow_video=False)
    assert count_faces(staged) == 1  # and the copy the pipeline checks


def test_16bit_gray_portrait_runs_without_skipping_the_face_check(fake_engine, cli, media, ff, tmp_path):
    src, _, _ = _make("gray16-png-ffmpeg", ff, tmp_path)
    report = tmp_path / "report.json"
    r = cli(src, media.audio(seconds=0.8), tmp_path / "o.mp4", "--engine", "fake", "--report", report, *FAST)
    assert r.code == 0, r.output
    assert json.loads(report.read_text())["inputs"]["face"]["faces_found"] == 1


# -- item 6: truncated audio -------------------------------------------------------------------


def _mp3(ff, path: Path, seconds: float) -> Path:
    run_ffmpeg(ff, "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=44100", "-ac", "2", "-b:a", "128k", "-t", f"{seconds}", str(path))
    return path


def _declared_seconds(ff, path: Path) -> float:
    err = subprocess.run([ff.path, "-hide_banner", "-i", str(path)], capture_output=True, text=True, check=False).stderr
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err).groups()
    assert "Estimating duration from bitrate" not in err  # the Xing header states it
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_truncated_mp3_renders_with_a_warning(fake_engine, cli, media, ff, tmp_path):
    full = _mp3(ff, media.root / "full.mp3", 5.0)
    cut = media.root / "cut.mp3"
    cut.write_bytes(full.read_bytes()[:20_000])
    # The damage is detectable: the header still declares the full length.
    assert _declared_seconds(ff, cut) == pytest.approx(5.0, abs=0.1)
    report = tmp_path / "report.json"
    r = cli(media.portrait(), cut, tmp_path / "o.mp4", "--engine", "fake", "--report", report, *FAST)
    assert r.code == 0, r.output
    m = re.search(r"WARNING: (\S*cut\.mp3): only ([\d.]+) s of audio decodes, but the file declares ([\d.]+) s; the file may be truncated or damaged", r.stderr)
    assert m, r.stderr
    assert 1.0 < float(m.group(2)) < 1.5 and float(m.group(3)) == pytest.approx(5.0, abs=0.1)
    audio = json.loads(report.read_text())["inputs"]["audio_info"]
    assert audio["duration"] == pytest.approx(float(m.group(2)), abs=0.01)
    assert audio["declared_duration"] == pytest.approx(5.0, abs=0.1)
    assert audio["warnings"] and "truncated" in audio["warnings"][0]


def test_whole_and_truncated_audio_files(ff, media, tmp_path, caplog):
    full = _mp3(ff, media.root / "full.mp3", 5.0)
    check = stage_audio(full, tmp_path / "a.wav", ff)
    assert check.warnings == [] and check.declared_duration == pytest.approx(5.0, abs=0.1)
    # A WAV cut short: ffmpeg then estimates the length, but the RIFF header still declares it.
    wav = media.audio("long.wav", seconds=3.0)
    cut = media.root / "cut.wav"
    cut.write_bytes(wav.read_bytes()[: len(wav.read_bytes()) // 3])
    check = stage_audio(cut, tmp_path / "b.wav", ff)
    assert check.duration == pytest.approx(1.0, abs=0.05) and check.declared_duration == pytest.approx(3.0, abs=0.01)
    assert "truncated or damaged" in check.warnings[0]
    assert any(r.levelname == "WARNING" and "cut.wav" in r.getMessage() for r in caplog.records)
    # An MP3 with no header stating its length: nothing to compare, no false alarm.
    run_ffmpeg(ff, "-f", "lavfi", "-i", "sine=sample_rate=44100", "-t", "5", "-write_xing", "0", str(media.root / "noxing.mp3"))
    noxing = media.root / "noxing_cut.mp3"
    noxing.write_bytes((media.root / "noxing.mp3").read_bytes()[:20_000])
    check = stage_audio(noxing, tmp_path / "c.wav", ff)
    assert check.declared_duration is None and check.warnings == []


# -- item 7: several faces, animated images -------------------------------------------------------


def _two_portraits(path: Path) -> Path:
    """The portrait twice: full size on the left, smaller on the right."""
    p = _portrait()
    two = Image.new("RGB", (512 + 360, 512), "white")
    two.paste(p, (0, 0))
    two.paste(p.resize((360, 360)), (512, 0))
    two.save(path)
    return path


def test_several_faces_are_reported_naming_the_largest(fake_engine, cli, media, tmp_path):
    group = _two_portraits(media.root / "group.png")
    report = tmp_path / "report.json"
    r = cli(group, media.audio(seconds=0.8), tmp_path / "o.mp4", "--engine", "fake", "--report", report, *FAST)
    assert r.code == 0, r.output
    m = re.search(r"WARNING: 2 faces found in \S*group\.png; .*likely the (\d+)x\d+ px face at x=(\d+), y=(\d+)\)\. Crop the input to one face", r.stderr)
    assert m, r.stderr
    assert int(m.group(2)) < 512 - int(m.group(1))  # the larger, left portrait
    face = json.loads(report.read_text())["inputs"]["face"]
    assert len([b for b in face["face_boxes"] if b["score"] >= 0.3]) == 2
    assert any("2 faces found" in w for w in face["warnings"])


def test_one_face_is_not_reported(fake_engine, cli, media, tmp_path):
    r = cli(media.portrait(), media.audio(seconds=0.8), tmp_path / "o.mp4", "--engine", "fake", *FAST)
    assert r.code == 0, r.output
    assert "faces found" not in r.output


def test_several_faces_message():
    boxes = [FaceBox(10, 20, 50, 50, 1.2), FaceBox(300, 40, 90, 90, 0.8), FaceBox(5, 400, 120, 120, 0.02)]
    msg = several_faces_message(Path("group.jpg"), boxes, scale=2.0)
    # The weak detection does not count; the largest remaining one is named, in the user's pixels.
    assert msg.startswith("2 faces found in group.jpg;") and "180x180 px face at x=600, y=80" in msg
    assert several_faces_message(Path("one.jpg"), boxes[:1]) is None
    assert several_faces_message(Path("one.jpg"), [boxes[0], boxes[2]]) is None
    assert "the first frame of clip.mp4" in several_faces_message(Path("clip.mp4"), boxes[:2], first_frame=True)
    assert [b.x for b in find_faces(PORTRAIT)][:1] and count_faces(PORTRAIT) >= 1


def _frames(n: int) -> list[Image.Image]:
    p = _portrait()
    return [p.point(lambda v, i=i: min(255, v + 12 * i)) for i in range(n)]


def test_animated_gif_warns_that_only_the_first_frame_is_used(fake_engine, cli, media, tmp_path):
    gif = media.root / "anim.gif"
    first, *rest = _frames(3)
    first.save(gif, save_all=True, append_images=rest, duration=100, loop=0)
    assert Image.open(gif).n_frames == 3
    report = tmp_path / "report.json"
    r = cli(gif, media.audio(seconds=0.8), tmp_path / "o.mp4", "--engine", "fake", "--report", report, *FAST)
    assert r.code == 0, r.output
    assert re.search(r"WARNING: \S*anim\.gif has 3 frames .*only the first frame is used", r.stderr), r.stderr
    # The fake engine, like Wav2Lip, takes face videos: say how to use every frame.
    assert "convert it to a video" in r.stderr
    face = json.loads(report.read_text())["inputs"]["face"]
    assert face["frames"] == 3 and not face["is_video"] and "3 frames" in face["warnings"][0]


@pytest.mark.parametrize("ext", ["webp", "png"])
def test_animated_webp_and_apng_warn(ext, ff, tmp_path, caplog):
    src = tmp_path / f"anim.{ext}"
    first, *rest = _frames(2)
    first.save(src, save_all=True, append_images=rest, duration=100, loop=0)
    staged, face = stage_face(src, tmp_path / "face", ff, allow_video=False)
    assert face.frames == 2 and "only the first frame is used" in face.warnings[0]
    assert "convert it to a video" not in face.warnings[0]  # an image-only engine
    assert any("has 2 frames" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    # It is the first frame that is staged.
    want = np.asarray(first).astype(float).mean()
    assert abs(np.asarray(Image.open(staged)).astype(float).mean() - want) < 0.01 * want
