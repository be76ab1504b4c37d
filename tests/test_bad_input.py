"""Every bad input exits 2 with one clear line, no traceback, nothing at OUTPUT."""

from __future__ import annotations

import pytest

from conftest import run_ffmpeg


@pytest.fixture
def good(media):
    return media.portrait(), media.audio(seconds=0.8)


def check(r, out, *needles):
    assert r.code == 2, r.output
    assert "Traceback" not in r.output
    first = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert first, r.output
    for n in needles:
        assert n in r.output, (n, r.output)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]


def test_missing_image(fake_engine, cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(tmp_path / "nope.png", good[1], out, "--engine", "fake"), out, "nope.png: no such file")


def test_text_file_named_png(fake_engine, cli, good, tmp_path):
    fake = tmp_path / "face.png"
    fake.write_text("this is not an image\n")
    out = tmp_path / "o.mp4"
    check(cli(fake, good[1], out, "--engine", "fake"), out, "face.png: is not an image that can be decoded")


def test_empty_image(fake_engine, cli, good, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.touch()
    out = tmp_path / "o.mp4"
    check(cli(empty, good[1], out, "--engine", "fake"), out, "empty.jpg: is empty")


def test_empty_audio(fake_engine, cli, good, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.touch()
    out = tmp_path / "o.mp4"
    check(cli(good[0], empty, out, "--engine", "fake"), out, "empty.wav: is empty")


def test_image_given_as_audio(fake_engine, cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(good[0], good[0], out, "--engine", "fake"), out, "has no audio stream", "Hint: Check the order")


def test_corrupt_video_given_as_audio(fake_engine, cli, good, media, tmp_path):
    clip = media.video()
    corrupt = tmp_path / "broken.mp4"
    data = clip.read_bytes()
    corrupt.write_bytes(data[:200] + b"\x00" * 300 + data[-100:])
    out = tmp_path / "o.mp4"
    check(cli(good[0], corrupt, out, "--engine", "fake"), out, "broken.mp4: ")


def test_too_short_audio(fake_engine, cli, good, media, tmp_path):
    short = media.audio("short.wav", seconds=0.1)
    out = tmp_path / "o.mp4"
    check(cli(good[0], short, out, "--engine", "fake"), out, "short.wav: lasts 0.10 s")


def test_no_face_in_image(fake_engine, cli, good, media, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(media.no_face(), good[1], out, "--engine", "fake"), out, "no face found by the pre-check", "--skip-face-check")


def test_skip_face_check_bypasses_it(fake_engine, cli, good, media, tmp_path):
    out = tmp_path / "o.mp4"
    r = cli(media.no_face(), good[1], out, "--engine", "fake", "--skip-face-check", "--no-upscale")
    assert r.code == 0, r.output


def test_degenerate_image(fake_engine, cli, good, tmp_path):
    from PIL import Image

    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (40, 40)).save(tiny)
    out = tmp_path / "o.mp4"
    check(cli(tiny, good[1], out, "--engine", "fake"), out, "is 40x40; each side must be at least 64 px")


def test_unknown_engine(cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "nosuch"), out, "unknown engine 'nosuch'", "sadtalker", "wav2lip")


def test_out_of_range_value(cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "sadtalker", "--pose-style", "99"), out, "--pose-style", "45")


def test_out_of_range_common_value(cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "wav2lip", "--crf", "80"), out, "--crf")


def test_odd_target_height(cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "wav2lip", "--target-height", "1081"), out, "must be even")


def test_bad_canvas(cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "wav2lip", "--canvas", "wide"), out, "--canvas", "WIDTHxHEIGHT")


def test_option_of_the_other_engine(cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "sadtalker", "--wav2lip-pads", "0", "10", "0", "0"), out, "--wav2lip-pads", "belongs to the wav2lip engine")
    check(cli(*good, out, "--engine", "wav2lip", "--preprocess", "full"), out, "--preprocess", "belongs to the sadtalker engine")


def test_bad_device(cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "wav2lip", "--device", "tpu"), out, "--device")


def test_output_exists(fake_engine, cli, good, tmp_path):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"precious")
    r = cli(*good, out, "--engine", "fake")
    assert r.code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert out.read_bytes() == b"precious"


def test_output_bad_extension(fake_engine, cli, good, tmp_path):
    out = tmp_path / "o.gif"
    check(cli(*good, out, "--engine", "fake"), out, "o.gif", ".mp4")


def test_output_folder_missing(fake_engine, cli, good, tmp_path):
    out = tmp_path / "missing" / "o.mp4"
    r = cli(*good, out, "--engine", "fake")
    assert r.code == 2 and "does not exist" in r.stderr and "mkdir -p" in r.stderr


def test_output_is_an_input(fake_engine, cli, media, tmp_path):
    clip = media.video("speech.mp4")
    r = cli(media.portrait(), clip, clip, "--engine", "fake", "--overwrite")
    assert r.code == 2 and "is one of the inputs" in r.stderr
    assert clip.stat().st_size > 0


def test_video_face_for_an_image_only_engine(cli, media, tmp_path):
    out = tmp_path / "o.mp4"
    check(cli(media.video(), media.audio(), out, "--engine", "sadtalker"), out, "is a video")


def test_wav2lip_video_only_option_on_image(cli, good, tmp_path, fake_engine):
    out = tmp_path / "o.mp4"
    check(cli(*good, out, "--engine", "wav2lip", "--wav2lip-rotate", "--skip-face-check"), out, "--wav2lip-rotate", "only applies to a face video")


def test_traceback_only_with_debug(cli, good, tmp_path, monkeypatch):
    out = tmp_path / "o.mp4"
    monkeypatch.setenv("LIPSYNC_TOOL_DEBUG", "1")
    r = cli(tmp_path / "nope.png", good[1], out, "--engine", "wav2lip")
    assert r.code == 2 and "Traceback" in r.stderr


def test_audio_formats_are_accepted(fake_engine, cli, media, tmp_path, ff):
    wav = media.audio(seconds=0.8)
    for ext in ("mp3", "m4a", "flac", "ogg", "opus"):
        src = tmp_path / f"speech.{ext}"
        run_ffmpeg(ff, "-i", str(wav), str(src))
        out = tmp_path / f"o-{ext}.mp4"
        r = cli(media.portrait(), src, out, "--engine", "fake", "--no-upscale")
        assert r.code == 0, (ext, r.output)


def test_video_with_no_audio_track(fake_engine, cli, media, tmp_path):
    silent_clip = media.video("mute.mp4", audio=False)
    out = tmp_path / "o.mp4"
    check(cli(media.portrait(), silent_clip, out, "--engine", "fake"), out, "mute.mp4: has no audio stream")
