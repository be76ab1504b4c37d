"""Regression tests for issue 10: files the tool writes at user-chosen paths, exit
codes and hints for bad input, early path checks, help at 80 columns, messages
in the user's terms and the Python API's options."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_ffmpeg


@pytest.fixture
def good(media):
    return media.portrait(), media.audio(seconds=0.8)


def _ran_engine(result) -> bool:
    return "Wrote " in result.stdout


# -- 1. never overwrite a user's file -----------------------------------------------------------


@pytest.mark.parametrize("which", ["image", "audio"])
def test_report_never_replaces_an_input(fake_engine, cli, good, tmp_path, which):
    image, audio = good
    target = image if which == "image" else audio
    before = target.read_bytes()
    for extra in ([], ["--overwrite"]):
        r = cli(image, audio, tmp_path / "out.mp4", "--engine", "fake", "--no-upscale", "--report", target, *extra)
        assert r.code == 2, r.output
        assert "is one of the inputs" in r.output and "--report" in r.output
        assert target.read_bytes() == before
        assert not (tmp_path / "out.mp4").exists()


def test_report_never_replaces_a_link_to_an_input(fake_engine, cli, good, tmp_path):
    image, audio = good
    link = tmp_path / "report.json"
    link.symlink_to(audio)
    before = audio.read_bytes()
    r = cli(image, audio, tmp_path / "out.mp4", "--engine", "fake", "--no-upscale", "--report", link, "--overwrite")
    assert r.code == 2 and "is one of the inputs" in r.output, r.output
    assert audio.read_bytes() == before and link.is_symlink()


def test_report_at_the_output_path_is_refused_and_nothing_is_written(fake_engine, cli, good, tmp_path):
    out = tmp_path / "out.mp4"
    r = cli(*good, out, "--engine", "fake", "--no-upscale", "--report", out)
    assert r.code == 2, r.output
    assert "is also where OUTPUT goes" in r.output
    assert not out.exists()  # no JSON where the video should be
    assert not _ran_engine(r)


def test_report_replaces_an_existing_file_only_with_overwrite(fake_engine, cli, good, tmp_path):
    old = tmp_path / "old.mp4"
    old.write_bytes(b"an earlier video")
    r = cli(*good, tmp_path / "out.mp4", "--engine", "fake", "--no-upscale", "--report", old)
    assert r.code == 2 and "already exists" in r.output and "--overwrite" in r.output, r.output
    assert old.read_bytes() == b"an earlier video"
    assert not (tmp_path / "out.mp4").exists()
    r = cli(*good, tmp_path / "out.mp4", "--engine", "fake", "--no-upscale", "--report", old, "--overwrite")
    assert r.code == 0, r.output
    assert json.loads(old.read_text())["status"] == "ok"


def test_report_is_written_when_new(fake_engine, cli, good, tmp_path):
    report = tmp_path / "run.json"
    r = cli(*good, tmp_path / "out.mp4", "--engine", "fake", "--no-upscale", "--report", report)
    assert r.code == 0, r.output
    assert json.loads(report.read_text())["output"]["path"] == str(tmp_path / "out.mp4")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left beside it


def test_hls_folder_with_an_input_in_it_is_refused(fake_engine, cli, media, tmp_path):
    hls = tmp_path / "hls"
    hls.mkdir()
    audio = media.audio(seconds=0.8)
    seg = hls / "segment_000.ts"
    seg.write_bytes(audio.read_bytes())
    r = cli(media.portrait(), seg, "--engine", "fake", "--no-upscale", "--hls", hls, "--overwrite")
    assert r.code == 2 and "segment_000.ts" in r.output and "input" in r.output, r.output
    assert seg.read_bytes() == audio.read_bytes()


def test_hls_folder_with_segments_needs_overwrite(fake_engine, cli, good, tmp_path):
    hls = tmp_path / "hls"
    hls.mkdir()
    (hls / "segment_003.ts").write_bytes(b"old")
    r = cli(*good, "--engine", "fake", "--hls", hls)
    assert r.code == 2 and "already holds segment_003.ts" in r.output, r.output
    assert (hls / "segment_003.ts").read_bytes() == b"old"


def test_hls_folder_that_is_the_report_is_refused(fake_engine, cli, good, tmp_path):
    r = cli(*good, "--engine", "fake", "--hls", tmp_path / "hls", "--report", tmp_path / "hls" / "index.m3u8")
    assert r.code == 2 and "one path cannot hold both" in r.output, r.output


# -- 2. input problems exit 2 with a hint that names the fix ------------------------------------


def test_missing_audio_exits_2_with_a_path_hint(fake_engine, cli, media, tmp_path):
    r = cli(media.portrait(), tmp_path / "speech.wav", tmp_path / "out.mp4", "--engine", "fake")
    assert r.code == 2, r.output
    assert "speech.wav: no such file (given as AUDIO)" in r.output
    assert "Hint: Check the speech audio path" in r.output
    assert "free space" not in r.output


@pytest.mark.parametrize(
    "audio, expected",
    [("-", "standard input"), ("https://example.org/speech.wav", "https://example.org/speech.wav: is a URL")],
)
def test_stdin_and_urls_are_refused(fake_engine, cli, media, tmp_path, audio, expected):
    r = cli(media.portrait(), audio, tmp_path / "out.mp4", "--engine", "fake")
    assert r.code == 2 and expected in r.output and "Hint:" in r.output, r.output


def test_symlink_loop_exits_2(fake_engine, cli, media, tmp_path):
    (tmp_path / "a.wav").symlink_to(tmp_path / "b.wav")
    (tmp_path / "b.wav").symlink_to(tmp_path / "a.wav")
    r = cli(media.portrait(), tmp_path / "a.wav", tmp_path / "out.mp4", "--engine", "fake")
    assert r.code == 2 and "symbolic link loop" in r.output and "Hint:" in r.output, r.output


def test_cache_dir_that_is_a_file_exits_2(fake_engine, cli, good, tmp_path, monkeypatch):
    afile = tmp_path / "notadir"
    afile.write_text("x")
    r = cli(*good, tmp_path / "out.mp4", "--engine", "fake", "--cache-dir", afile)
    assert r.code == 2 and "not a folder" in r.output and "--cache-dir" in r.output and "Hint:" in r.output, r.output
    monkeypatch.setenv("LIPSYNC_TOOL_CACHE", str(afile / "sub"))
    r = cli(*good, tmp_path / "out.mp4", "--engine", "fake")
    assert r.code == 2 and "LIPSYNC_TOOL_CACHE" in r.output, r.output


def test_image_given_as_a_wav2lip_checkpoint_exits_2(cli, good, tmp_path):
    image, audio = good
    r = cli(image, audio, tmp_path / "out.mp4", "--engine", "wav2lip", "--wav2lip-checkpoint", image, "--offline")
    assert r.code == 2, r.output
    assert "is a JPEG image, not a PyTorch checkpoint" in r.output and "--wav2lip-checkpoint" in r.output


@pytest.mark.parametrize("flag", ["--ref-eyeblink", "--ref-pose"])
def test_image_or_audio_given_as_a_reference_video_exits_2(cli, good, tmp_path, flag):
    image, audio = good
    for wrong, kind in ((image, "a JPEG image"), (audio, "WAV audio")):
        r = cli(image, audio, tmp_path / "out.mp4", "--engine", "sadtalker", flag, wrong, "--offline")
        assert r.code == 2, r.output
        assert f"is {kind}, not a video (given as {flag})" in r.output


# -- 3. non-UTF-8 names are refused before the engine runs -------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")
@pytest.mark.parametrize("which", ["audio", "output"])
def test_non_utf8_names_are_refused_up_front(fake_engine, cli, media, tmp_path, which):
    audio = media.audio(seconds=0.8)
    out = tmp_path / "out.mp4"
    if which == "audio":
        raw = os.fsencode(tmp_path) + b"/sp\xffeech.wav"
        os.link(audio, raw)
        audio = Path(os.fsdecode(raw))
    else:
        out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/out\xff.mp4"))
    r = cli(media.portrait(), audio, out, "--engine", "fake", "--fake-sleep", "5")
    assert r.code == 2, r.output
    assert "not valid UTF-8" in r.output and "Hint: Rename it" in r.output
    assert not _ran_engine(r) and "Traceback" not in r.output
    assert not os.path.exists(os.fsencode(tmp_path) + b"/out\xff.mp4")


# -- 10. every option name is readable at 80 columns --------------------------------------------


def _help(*args: str, columns: int) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)}
    proc = subprocess.run([sys.executable, "-m", "lipsync_tool", *args, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _flags(command: str) -> set[str]:
    from typer.main import get_command

    from lipsync_tool.cli import build_app

    group = get_command(build_app())
    cmd = group.commands[command]  # type: ignore[attr-defined]
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


@pytest.mark.parametrize("command", ["run", "setup", "batch", "compare", "demo"])
def test_every_option_name_is_whole_at_80_columns(command):
    text = _help(command, columns=80)
    flags = _flags(command)
    assert "--wav2lip-face-det-batch-size" in flags or command not in ("run", "batch")
    words = set(re.findall(r"--[a-z0-9][a-z0-9-]*", text))
    missing = sorted(f for f in flags if f not in words)
    assert not missing, f"cut or missing at 80 columns: {missing}"
    assert not re.search(r"--[a-z0-9-]+…", text)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_wide_terminals_keep_the_option_panels():
    text = _help("run", columns=220)
    assert "Wav2Lip options (--engine wav2lip)" in text and "╭" in text
    assert not re.search(r"--[a-z0-9-]+…", text)


def test_rich_or_plain_never_cuts_a_name_at_any_width():
    flags = _flags("run")
    for columns in (60, 100, 118, 140, 170):
        words = set(re.findall(r"--[a-z0-9][a-z0-9-]*", _help("run", columns=columns)))
        assert flags <= words, (columns, sorted(flags - words))


# -- 11. messages in the user's terms ---------------------------------------------------------


def test_nan_fps_says_it_must_be_a_number(cli, good, tmp_path):
    r = cli(*good, tmp_path / "out.mp4", "--fps", "nan")
    assert r.code == 2, r.output
    assert "--fps: must be a finite number, not nan" in r.output
    assert "120" not in r.output


def test_output_that_is_a_folder_says_so(fake_engine, cli, good, tmp_path):
    r = cli(*good, tmp_path, "--engine", "fake")
    assert r.code == 2, r.output
    assert "is a folder; OUTPUT must be a video file name" in r.output and "(none)" not in r.output
    assert "Hint: Name a file inside it" in r.output


def test_output_without_extension_says_so(fake_engine, cli, good, tmp_path):
    r = cli(*good, tmp_path / "out", "--engine", "fake")
    assert r.code == 2 and "has no extension" in r.output and "Hint: Name it e.g. out.mp4" in r.output, r.output


def test_very_short_audio_has_a_hint(fake_engine, cli, media, ff, tmp_path):
    short = tmp_path / "short.wav"
    run_ffmpeg(ff, "-f", "lavfi", "-i", "sine=frequency=220", "-t", "0.05", short.as_posix())
    r = cli(media.portrait(), short, tmp_path / "out.mp4", "--engine", "fake")
    assert r.code == 2, r.output
    assert "lip-sync needs at least" in r.output and "Hint: Give a longer recording" in r.output


# -- 12. the Python API: its options, and errors that name keywords ------------------------------


def test_help_lists_the_options():
    import pydoc

    from lipsync_tool import LipSyncPipeline

    text = pydoc.render_doc(LipSyncPipeline, renderer=pydoc.plaintext)
    for expected in ("fps: float = 25.0", "wav2lip_pads", "[wav2lip]", "expression_scale", "overwrite: bool = False"):
        assert expected in text


def test_options_are_typed_and_documented():
    from lipsync_tool import LipSyncPipeline, OptionInfo

    opts = {o.name: o for o in LipSyncPipeline.options()}
    assert isinstance(opts["fps"], OptionInfo)
    assert opts["fps"].type == "float" and opts["fps"].default == 25.0 and opts["fps"].engine is None and opts["fps"].help
    assert opts["wav2lip_pads"].engine == "wav2lip" and opts["wav2lip_pads"].flag == "--wav2lip-pads"
    only = LipSyncPipeline.options("sadtalker")
    assert {o.engine for o in only} == {None, "sadtalker"}


def test_python_errors_name_keywords_and_cli_errors_name_flags(cli, good, tmp_path):
    from lipsync_tool import LipSyncPipeline
    from lipsync_tool.errors import UsageError

    with pytest.raises(UsageError) as e:
        LipSyncPipeline(engine="wav2lip", fps=float("nan"))
    assert str(e.value).startswith("fps: ") and "--fps" not in str(e.value)
    with pytest.raises(UsageError) as e:
        LipSyncPipeline(engine="wav2lip", expression_scale=1.2)
    assert str(e.value).startswith("expression_scale: ") and "engine='sadtalker'" in (e.value.hint or "")
    r = cli(*good, tmp_path / "out.mp4", "--engine", "wav2lip", "--expression-scale", "1.2")
    assert r.code == 2 and "--expression-scale:" in r.output and "--engine sadtalker" in r.output, r.output


def test_python_output_errors_name_keywords(fake_engine, good, tmp_path):
    from lipsync_tool import LipSyncPipeline
    from lipsync_tool.errors import OutputPathError

    out = tmp_path / "out.mp4"
    out.write_bytes(b"x")
    with pytest.raises(OutputPathError) as e:
        LipSyncPipeline(engine="fake", no_upscale=True, report=tmp_path / "r.json").run(*good, out)
    assert "overwrite=True" in (e.value.hint or "") and "--overwrite" not in (e.value.hint or "")
    assert not (tmp_path / "r.json").exists()


# -- 14. the demo's first run fits the default timeout on a CPU --------------------------------


def test_default_cpu_timeout_leaves_room_for_sadtalker_on_two_cores():
    from lipsync_tool.engines.base import Device
    from lipsync_tool.runtime import default_timeout

    seconds = 6.8  # the bundled speech
    measured = seconds * 25 * 10.6 + 60  # ~10.6 s per frame at 25 fps, plus model loading (shared/upstream)
    assert default_timeout(seconds, Device("cpu", None, "test")) > 1.5 * measured
    assert default_timeout(seconds, Device("cuda", 0, "test")) < default_timeout(seconds, Device("cpu", None, "test"))


def test_files_published_through_a_temp_file_get_the_usual_mode(tmp_path):
    from lipsync_tool.targets import write_text_file

    umask = os.umask(0o022)
    try:
        write_text_file(tmp_path / "r.json", "{}", overwrite=False)
    finally:
        os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
