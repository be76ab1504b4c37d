"""The main job end to end, with the fake engine: clone, verified checkpoint,
engine subprocess, output discovery, upscale, publish, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_subprocess, git
from lipsync_tool.media import probe

FAST = ("--x264-preset", "ultrafast")


def volume_of(ff, path: Path) -> float:
    """Peak level (dB) of a file's audio, by ffmpeg's volumedetect."""
    proc = subprocess.run([ff.path, "-hide_banner", "-i", str(path), "-map", "0:a:0", "-af", "volumedetect", "-f", "null", "-"], capture_output=True, text=True)
    line = [ln for ln in proc.stderr.splitlines() if "max_volume" in ln][-1]
    value = line.split("max_volume:")[1].split("dB")[0].strip()
    return float("-inf") if value == "-inf" else float(value)


def test_run_writes_1080p_h264_aac_matching_the_audio(fake_engine, media, cli, tmp_path, ff):
    image, audio = media.portrait(), media.audio(seconds=1.3)
    out = tmp_path / "out.mp4"
    report = tmp_path / "report.json"
    r = cli(image, audio, out, "--engine", "fake", "--report", report, "--seed", "7", *FAST)
    assert r.code == 0, r.output
    assert f"Wrote {out}" in r.stdout
    info = probe(out, measure=True)
    assert info.video.height == 1080 and info.video.width == 1080
    assert info.video.codec == "h264" and info.video.pix_fmt == "yuv420p"
    assert info.audio.codec == "aac"
    assert abs(info.video.duration - 1.3) <= 1 / 25 + 1e-6
    assert abs(info.audio.duration - 1.3) <= 1 / 25 + 1e-6
    # The fake engine muxes silence: a loud output proves the user's original audio was used.
    assert volume_of(ff, out) > -40
    data = json.loads(report.read_text())
    assert data["status"] == "ok"
    assert data["engine"]["commit"] == fake_engine.upstream.first
    assert data["engine"]["checkpoints"][0]["sha256"] == fake_engine.sha256
    assert data["options"]["seed"] == 7
    assert set(data["timings"]) >= {"validate", "resources", "stage", "engine", "upscale", "publish"}
    assert data["commands"]["engine"][1] == "inference.py"
    assert data["commands"]["ffmpeg"][0] == data["tool"]["ffmpeg"]["path"]
    assert data["output"]["media"]["video"]["height"] == 1080
    assert data["device"]["device"] == "cpu"
    # Nothing was left beside the output, and the cached clone is untouched.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    clone = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "repos" / "fake" / fake_engine.upstream.first
    assert git("status", "--porcelain", "--untracked-files=all", "--ignored", cwd=clone) == ""
    assert git("rev-parse", "HEAD", cwd=clone) == fake_engine.upstream.first
    assert not (clone / "NEWER.txt").exists()


def test_poc_invocation_equals_run_subcommand(fake_engine, media, cli, tmp_path):
    image, audio = media.portrait(), media.audio(seconds=0.8)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    assert cli("run", image, audio, a, "--engine", "fake", "--no-upscale").code == 0
    assert cli(image, audio, b, "--engine", "fake", "--no-upscale").code == 0
    assert probe(a).video.width == probe(b).video.width == 256


@pytest.mark.parametrize(("canvas", "fit"), [("1920x1080", "pad"), ("1080x1920", "crop"), ("1280x720", "crop")])
def test_canvas_gives_exact_frame_size(fake_engine, media, cli, tmp_path, canvas, fit):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--canvas", canvas, "--fit", fit, *FAST)
    assert r.code == 0, r.output
    w, h = map(int, canvas.split("x"))
    info = probe(out)
    assert (info.video.width, info.video.height) == (w, h)


def test_target_height_720_and_mkv(fake_engine, media, cli, tmp_path):
    out = tmp_path / "out.mkv"
    r = cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--target-height", "720", *FAST)
    assert r.code == 0, r.output
    info = probe(out)
    assert info.video.height == 720 and "matroska" in info.container


def test_no_upscale_keeps_engine_size_and_original_audio(fake_engine, media, cli, tmp_path, ff):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=1.0), out, "--engine", "fake", "--no-upscale")
    assert r.code == 0, r.output
    info = probe(out, measure=True)
    assert (info.video.width, info.video.height) == (256, 256)
    assert info.audio is not None and volume_of(ff, out) > -40


def test_remove_audio_gives_no_audio_stream(fake_engine, media, cli, tmp_path):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=1.0), out, "--engine", "fake", "--remove-audio", *FAST)
    assert r.code == 0, r.output
    info = probe(out, measure=True)
    assert info.audio is None
    assert abs(info.video.duration - 1.0) <= 1 / 25 + 1e-6


def test_engine_longer_than_audio_is_cut_to_the_audio(fake_engine, media, cli, tmp_path):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=1.0), out, "--engine", "fake", "--fake-extra-seconds", "0.7", *FAST)
    assert r.code == 0, r.output
    assert abs(probe(out, measure=True).video.duration - 1.0) <= 1 / 25 + 1e-6


def test_fps_option_is_honoured(fake_engine, media, cli, tmp_path):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=1.0), out, "--engine", "fake", "--fps", "30", *FAST)
    assert r.code == 0, r.output
    info = probe(out, measure=True)
    assert info.video.fps == 30 and info.video.frames == 30


@pytest.mark.parametrize(("runner", "raw"), [("subprocess", "work/results/result.mp4"), ("worker", "work/results/worker.mp4")])
def test_keep_temp_leaves_debugging_files(fake_engine, media, cli, tmp_path, runner, raw):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--keep-temp", "--runner", runner, *FAST)
    assert r.code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Temp files kept in "))
    temp = Path(line.removeprefix("Temp files kept in ").rstrip(":"))
    # The worker streams its frames into the encode; --keep-temp also keeps them, losslessly.
    assert probe(temp / raw, measure=True).video.frames == 20
    for rel in ("inputs/face.png", "inputs/audio.wav", "engine_command.txt", "engine.log", raw, "upscale_command.txt", "report.json"):
        assert (temp / rel).is_file(), rel
        assert rel in r.stdout
    assert "inference.py" in (temp / "engine_command.txt").read_text()
    assert "flags=bicubic" in (temp / "upscale_command.txt").read_text()
    assert "Rendering: 100%" in (temp / "engine.log").read_text()
    # Upstream's relative writes landed in the run's own work dir.
    assert (temp / "work" / "temp" / "written_by_engine.txt").is_file()


def test_temp_dir_is_removed_without_keep_temp(fake_engine, media, cli, tmp_path):
    out = tmp_path / "out.mp4"
    report = tmp_path / "r.json"
    assert cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--report", report, "--no-upscale").code == 0
    data = json.loads(report.read_text())
    assert data["temp_dir"] is None
    staged = Path(data["inputs"]["face"]["staged"])
    assert not staged.parent.parent.exists()


@pytest.mark.parametrize(("runner", "failed"), [("subprocess", "Fake failed (exit 3)"), ("worker", "Fake failed (RuntimeError: the fake engine crashed on purpose)")])
def test_crashing_engine_exits_1_with_log_tail_and_no_output(fake_engine, media, cli, tmp_path, runner, failed):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--fake-mode", "crash", "--runner", runner)
    assert r.code == 1
    assert failed in r.stderr
    assert "RuntimeError: the fake engine crashed on purpose" in r.stderr
    assert "engine.log" in r.stderr
    assert "Traceback" not in r.stderr.split("--- last lines")[0]
    assert "kept for debugging in" in r.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize("mode", ["noout", "empty"])
def test_engine_exiting_0_without_output_is_a_failure(fake_engine, media, cli, tmp_path, mode):
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--fake-mode", mode)
    assert r.code == 1
    assert "exited without an error but" in r.stderr
    assert not out.exists()


def test_engine_face_error_is_an_input_error(fake_engine, media, cli, tmp_path):
    r = cli(media.portrait(), media.audio(seconds=0.8), tmp_path / "o.mp4", "--engine", "fake", "--fake-mode", "noface")
    assert r.code == 2
    assert "Error: face: the fake engine found no face" in r.stderr
    assert "Hint:" in r.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_timeout_kills_the_whole_process_group(fake_engine, media, cli, tmp_path, monkeypatch):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    out = tmp_path / "out.mp4"
    start = time.monotonic()
    r = cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--fake-mode", "hang", "--timeout", "3")
    assert r.code == 1
    assert "ran past the timeout of 3 s" in r.stderr
    assert time.monotonic() - start < 60
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "engine processes survived the timeout"
    assert not out.exists()


def test_ctrl_c_kills_the_engine_and_exits_130(plugin_env, media, tmp_path):
    pidfile = tmp_path / "pids"
    env = {**plugin_env, "FAKE_PIDFILE": str(pidfile)}
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync_tool", str(media.portrait()), str(media.audio(seconds=0.8)), str(out), "--engine", "fake", "--fake-mode", "hang"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pidfile.exists(), proc.stderr.read() if proc.poll() is not None else "engine never started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Interrupted" in stderr
    assert "Traceback" not in stderr
    pids = [int(p) for p in pidfile.read_text().split()]
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


@pytest.mark.parametrize("on_path", ["no ffmpeg", "another ffmpeg"])
def test_engine_finds_the_tools_ffmpeg_by_name(fake_engine, media, cli, tmp_path, monkeypatch, on_path):
    """The fake upstream calls plain `ffmpeg`, which must be the one lipsync-tool
    chose: the bundled imageio-ffmpeg binary when PATH has no ffmpeg at all, and
    LIPSYNC_TOOL_FFMPEG's when PATH has another one (here one that fails)."""
    import shutil

    import imageio_ffmpeg

    bundled = imageio_ffmpeg.get_ffmpeg_exe()
    image, audio, out, report = media.portrait(), media.audio(seconds=0.8), tmp_path / "out.mp4", tmp_path / "report.json"
    # Drop every PATH entry that holds an ffmpeg; git may live beside it (Debian's
    # /usr/bin), so it comes back through a directory of its own.
    tools = tmp_path / "path-bin"
    tools.mkdir()
    os.symlink(shutil.which("git"), tools / "git")
    kept = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "ffmpeg").exists()]
    if on_path == "another ffmpeg":
        decoy = tools / "ffmpeg"
        decoy.write_text("#!/bin/sh\necho 'the ffmpeg on PATH ran, not the one lipsync-tool chose' >&2\nexit 97\n")
        decoy.chmod(0o755)
        monkeypatch.setenv("LIPSYNC_TOOL_FFMPEG", bundled)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tools), *kept]))
    assert (shutil.which("ffmpeg") is None) == (on_path == "no ffmpeg")
    r = cli(image, audio, out, "--engine", "fake", "--no-upscale", "--report", report)
    assert r.code == 0, r.output
    chosen = json.loads(report.read_text())["tool"]["ffmpeg"]
    assert chosen["path"] == bundled
    assert chosen["source"] == ("imageio-ffmpeg" if on_path == "no ffmpeg" else "LIPSYNC_TOOL_FFMPEG")
    assert probe(out).video is not None


def test_python_api_returns_result_with_report(fake_engine, media, tmp_path):
    from lipsync_tool import LipSyncPipeline

    out = tmp_path / "api.mp4"
    result = LipSyncPipeline(engine="fake", no_upscale=True, fake_mode="ok").run(media.portrait(), media.audio(seconds=0.8), out)
    assert result.output == out and out.is_file()
    assert result.report["status"] == "ok"
    assert result.report["options"]["engine_options"]["fake_mode"] == "ok"


def test_webp_and_uppercase_extension_are_accepted(fake_engine, media, cli, tmp_path):
    from PIL import Image

    src = media.portrait()
    webp = tmp_path / "Face.WEBP"
    Image.open(src).save(webp, format="WEBP")
    out = tmp_path / "out.mp4"
    r = cli(webp, media.audio(seconds=0.8), out, "--engine", "fake", "--no-upscale")
    assert r.code == 0, r.output


def test_huge_image_is_downscaled_with_a_notice(fake_engine, media, cli, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.open(media.portrait()).resize((3000, 3000)).save(big)
    report = tmp_path / "r.json"
    r = cli(big, media.audio(seconds=0.8), tmp_path / "o.mp4", "--engine", "fake", "--no-upscale", "--report", report)
    assert r.code == 0, r.output
    assert "downscaling it to 2048x2048" in r.stderr
    assert json.loads(report.read_text())["inputs"]["face"]["downscaled_from"] == [3000, 3000]


def test_digital_silence_is_a_warning_not_an_error(fake_engine, media, cli, tmp_path):
    r = cli(media.portrait(), media.audio(seconds=0.8, silence=True), tmp_path / "o.mp4", "--engine", "fake", "--no-upscale")
    assert r.code == 0, r.output
    assert "digital silence" in r.stderr


def test_overwrite_replaces_existing_output(fake_engine, media, cli, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")
    r = cli(media.portrait(), media.audio(seconds=0.8), out, "--engine", "fake", "--no-upscale", "--overwrite")
    assert r.code == 0, r.output
    assert out.stat().st_size > 1000


def test_python_m_entry_point_and_help(plugin_env):
    r = cli_subprocess("--help", env=plugin_env)
    assert r.code == 0 and "Usage" in r.stdout
    r = cli_subprocess("run", "--help", env=plugin_env)
    assert r.code == 0
    for panel in ("SadTalker options", "Wav2Lip options", "Fake options"):
        assert panel in r.stdout
    assert "--wav2lip-pads" in r.stdout and "--preprocess" in r.stdout


def test_engine_dies_with_a_killed_lipsync_tool(plugin_env, media, tmp_path):
    """SIGKILL leaves no chance to clean up; the parent-death signal still ends the engine."""
    pidfile = tmp_path / "pids"
    env = {**plugin_env, "FAKE_PIDFILE": str(pidfile)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync_tool", str(media.portrait()), str(media.audio(seconds=0.8)), str(tmp_path / "o.mp4"), "--engine", "fake", "--fake-mode", "hang"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pidfile.exists()
    engine, grandchild = (int(p) for p in pidfile.read_text().split())
    proc.kill()
    proc.wait()
    try:
        deadline = time.monotonic() + 5
        while _alive(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(engine), "the engine outlived a SIGKILLed lipsync-tool"
    finally:
        for pid in (engine, grandchild):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_upstreams_final_mux_becomes_a_stream_copy(fake_engine, media, cli, tmp_path):
    """Wav2Lip re-encodes temp/result.avi in its final mux; the ffmpeg the engine
    sees copies the video instead (the tool encodes once, at the end)."""
    out = tmp_path / "out.mp4"
    r = cli(media.portrait(), media.audio(seconds=1.0), out, "--engine", "fake", "--fake-wav2lip-mux", "--keep-temp", "--runner", "subprocess", *FAST)
    assert r.code == 0, r.output
    temp = Path(next(ln for ln in r.stdout.splitlines() if ln.startswith("Temp files kept in ")).removeprefix("Temp files kept in ").rstrip(":"))
    raw = probe(temp / "work" / "results" / "result.mp4")
    assert raw.video.codec == "mpeg4"  # copied from the .avi, not re-encoded to H.264
    assert raw.audio is not None
    final = probe(out, measure=True)
    assert final.video.codec == "h264" and final.video.height == 1080 and abs(final.video.duration - 1.0) <= 1 / 25


def test_engine_ffmpeg_shim_rewrites_only_the_final_mux(tmp_path, ff):
    env = ff.engine_env(tmp_path / "bin", copy_video_to="results/out.mp4")
    shim = tmp_path / "bin" / "ffmpeg"
    assert env["LIPSYNC_TOOL_FFMPEG_COPY_VIDEO_TO"] == "results/out.mp4"
    # Other commands pass through untouched: print the argv ffmpeg would see via a fake real binary.
    echo = tmp_path / "echo-ffmpeg"
    echo.write_text("#!/bin/sh\necho \"$@\"\n")
    echo.chmod(0o755)
    shim.write_text(shim.read_text().replace(repr(ff.path), repr(str(echo))))
    run = lambda *a: subprocess.run([str(shim), *a], capture_output=True, text=True, env={**os.environ, **env}).stdout.strip()
    assert run("-y", "-i", "a.wav", "-i", "temp/result.avi", "-strict", "-2", "-q:v", "1", "results/out.mp4") == "-y -i a.wav -i temp/result.avi -strict -2 -c:v copy results/out.mp4"
    assert run("-y", "-i", "x.mp3", "-strict", "-2", "temp/temp.wav") == "-y -i x.mp3 -strict -2 temp/temp.wav"
    assert run("-i", "a", "-c:v", "libx264", "results/out.mp4") == "-i a -c:v libx264 results/out.mp4"


def test_link_farm_links_inputs_and_every_symlinked_folder(tmp_path):
    from lipsync_tool.workspace import build_link_farm, create_workspace

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "inference.py").write_text("print(1)\n")
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "shared1").mkdir()
    (tmp_path / "shared2").mkdir()
    os.symlink(tmp_path / "shared1", repo / "a_link")
    os.symlink(tmp_path / "shared2", repo / "b_link")
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"w")
    ws = create_workspace(tmp_path)
    build_link_farm(repo, ws.work, "inference.py", {"weights/w.pth": ckpt})
    assert (ws.work / "a_link").is_symlink() and (ws.work / "b_link").is_symlink()
    assert (ws.work / "pkg").is_dir() and not (ws.work / "pkg").is_symlink() and (ws.work / "pkg" / "mod.py").is_symlink()
    assert (ws.work / "inference.py").is_file() and not (ws.work / "inference.py").is_symlink()
    assert (ws.work / "weights" / "w.pth").resolve() == ckpt.resolve()
    assert (ws.work / "lipsync_inputs").resolve() == ws.inputs.resolve()


def test_seed_reaches_the_engine_process(fake_engine, media, cli, tmp_path):
    def first_random(seed: str) -> str:
        report = tmp_path / f"r{seed}-{len(list(tmp_path.iterdir()))}.json"
        r = cli(media.portrait(), media.audio(seconds=0.6), tmp_path / f"o{report.stem}.mp4", "--engine", "fake", "--no-upscale", "--seed", seed, "--keep-temp", "--report", report)
        assert r.code == 0, r.output
        log = (Path(json.loads(report.read_text())["temp_dir"]) / "engine.log").read_text()
        return next(line for line in log.splitlines() if line.startswith("first random number"))

    assert first_random("42") == first_random("42")
    assert first_random("42") != first_random("43")
