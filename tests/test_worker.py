"""Warm workers (issue 12) on the fake engine: the runner, the preprocessing
cache, frames streamed into the encoders, and failures that leave the worker
usable.  The real engines' adapters are checked in the opt-in upstream tests."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import run_ffmpeg
from lipsync_tool.media import probe

FAST = ("--x264-preset", "ultrafast")


def pipeline(**kw):
    from lipsync_tool import LipSyncPipeline

    kw.setdefault("x264_preset", "ultrafast")
    return LipSyncPipeline(engine="fake", **kw)


def frames_of(path: Path) -> int:
    return probe(path, measure=True).video.frames


# -- the runner ---------------------------------------------------------------------------------


def test_the_default_runner_is_a_warm_worker_whose_frames_stream_into_the_encode(fake_engine, media, tmp_path):
    image, audio = media.portrait(), media.audio(seconds=1.2)
    with pipeline(seed=3) as p:
        result = p.run(image, audio, tmp_path / "worker.mp4")
    engine = result.report["engine"]
    assert engine["runner"] == "worker"
    (job,) = engine["worker_jobs"]
    assert job["started_for_this_job"] and job["models"]["loaded"] and job["frames"] == 30
    assert "raw_output" not in engine  # no intermediate file: the frames went into the one encode
    cmd = result.report["commands"]["ffmpeg"]
    assert cmd[cmd.index("-f") + 1] == "rawvideo" and "pipe:0" in cmd
    info = probe(result.output, measure=True)
    assert (info.video.width, info.video.height, info.video.codec, info.audio.codec) == (1080, 1080, "h264", "aac")

    # The reference path: upstream's CLI per job.  Same frame count and duration.
    with pipeline(seed=3, runner="subprocess") as p:
        ref = p.run(image, audio, tmp_path / "subprocess.mp4")
    assert ref.report["engine"]["runner"] == "subprocess" and "worker_jobs" not in ref.report["engine"]
    a, b = probe(result.output, measure=True), probe(ref.output, measure=True)
    assert a.video.frames == b.video.frames == 30
    assert abs(a.video.duration - b.video.duration) < 1e-6 and abs(a.audio.duration - b.audio.duration) < 0.03


def test_one_pipeline_keeps_its_worker_and_models_across_runs(fake_engine, media, tmp_path):
    image = media.portrait()
    with pipeline() as p:
        first = p.run(image, media.audio("a.wav", seconds=0.8), tmp_path / "a.mp4")
        second = p.run(image, media.audio("b.wav", seconds=0.6), tmp_path / "b.mp4")
        pid = p.runner.workers()["fake@"]
    j1, j2 = first.report["engine"]["worker_jobs"][0], second.report["engine"]["worker_jobs"][0]
    assert j1["pid"] == j2["pid"] == pid
    assert (j1["started_for_this_job"], j2["started_for_this_job"]) == (True, False)
    assert (j1["models"]["loaded"], j2["models"]["loaded"]) == (True, False)
    assert (j1["frames"], j2["frames"]) == (20, 15)
    # the worker is gone once the pipeline is closed
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_a_failed_job_leaves_the_worker_usable_and_says_what_failed(fake_engine, media, tmp_path):
    from lipsync_tool.engines.worker import WorkerRunner
    from lipsync_tool.errors import EngineError, FaceNotFoundError

    image, audio = media.portrait(), media.audio(seconds=0.6)
    with WorkerRunner() as runner:
        with pytest.raises(EngineError) as err:
            pipeline(runner=runner, fake_mode="crash").run(image, audio, tmp_path / "crash.mp4")
        assert "Fake failed (RuntimeError: the fake engine crashed on purpose)" in str(err.value)
        assert "worker's own log" in (err.value.hint or "")
        # Upstream's own error text is translated as for a subprocess run.
        with pytest.raises(FaceNotFoundError, match="the fake engine found no face"):
            pipeline(runner=runner, fake_mode="noface").run(image, audio, tmp_path / "noface.mp4")
        pid = runner.workers()["fake@"]
        ok = pipeline(runner=runner).run(image, audio, tmp_path / "ok.mp4")
        assert ok.report["engine"]["worker_jobs"][0]["pid"] == pid
        assert not (tmp_path / "crash.mp4").exists() and not (tmp_path / "noface.mp4").exists()
        assert not list(tmp_path.glob(".*.partial*"))


def test_a_worker_that_dies_is_replaced_and_the_error_names_its_log(fake_engine, media, tmp_path):
    from lipsync_tool.engines.worker import WorkerRunner
    from lipsync_tool.errors import EngineError

    image, audio = media.portrait(), media.audio(seconds=0.6)
    with WorkerRunner() as runner:
        pipeline(runner=runner).run(image, audio, tmp_path / "first.mp4")
        first_pid = runner.workers()["fake@"]
        with pytest.raises(EngineError) as err:
            pipeline(runner=runner, fake_mode="die").run(image, audio, tmp_path / "died.mp4")
        message = str(err.value)
        assert f"worker (pid {first_pid}) died during the job (exit 9)" in message
        log = Path(err.value.log_path)
        assert log.is_file() and str(log) in message and "job 2 starts" in log.read_text()
        again = pipeline(runner=runner).run(image, audio, tmp_path / "again.mp4")
        job = again.report["engine"]["worker_jobs"][0]
        assert job["pid"] != first_pid and job["started_for_this_job"]
        assert not (tmp_path / "died.mp4").exists()
    assert log.is_file(), "a worker log that an error named is kept"


def test_a_timeout_stops_the_worker_and_everything_it_started(fake_engine, media, tmp_path, monkeypatch):
    from lipsync_tool.errors import EngineTimeoutError

    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    with pipeline(fake_mode="hang", timeout=4) as p, pytest.raises(EngineTimeoutError, match="its worker was stopped"):
        p.run(media.portrait(), media.audio(seconds=0.6), tmp_path / "out.mp4")
    pids = [int(x) for x in pidfile.read_text().split()]
    for pid in pids:
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"process {pid} survived the timeout")
    assert not (tmp_path / "out.mp4").exists()


def test_runner_choice_on_the_cli(fake_engine, media, cli, tmp_path):
    image, audio = media.portrait(), media.audio(seconds=0.6)
    report = tmp_path / "r.json"
    r = cli(image, audio, tmp_path / "s.mp4", "--engine", "fake", "--runner", "subprocess", "--report", report, *FAST)
    assert r.code == 0, r.output
    assert json.loads(report.read_text())["engine"]["runner"] == "subprocess"
    r = cli(image, audio, tmp_path / "w.mp4", "--engine", "fake", "--runner", "worker", "--report", report, "--overwrite", *FAST)
    assert r.code == 0, r.output
    assert json.loads(report.read_text())["engine"]["runner"] == "worker"
    r = cli(image, audio, tmp_path / "x.mp4", "--engine", "fake", "--runner", "threads")
    assert r.code == 2 and "threads" in r.output


def test_worker_for_an_engine_without_an_adapter_is_refused_not_switched(fake_engine):
    from lipsync_tool.engines import get_engine
    from lipsync_tool.errors import UsageError
    from lipsync_tool.pipeline import make_runner

    engine = get_engine("fake")
    type(engine).worker_adapter, saved = None, type(engine).worker_adapter
    try:
        with pytest.raises(UsageError, match="has no warm worker"):
            make_runner("worker", engine)
        auto = make_runner(None, engine)
        assert auto.kind_for(engine) == "subprocess" and not auto.streams_for(engine)
    finally:
        type(engine).worker_adapter = saved


# -- the preprocessing cache ----------------------------------------------------------------------


def _pre(result) -> dict:
    (entry,) = result.report["engine"]["preprocess"]
    return entry


def test_preprocessing_is_cached_by_content_and_survives_a_new_worker(fake_engine, media, tmp_path, caplog):
    from PIL import Image

    image = media.portrait()
    audio = media.audio(seconds=0.6)
    with pipeline() as p:
        miss = p.run(image, audio, tmp_path / "1.mp4")
    assert _pre(miss)["hit"] is False and _pre(miss)["stored"] and _pre(miss)["worker"] == {"hit": False}
    entry = Path(_pre(miss)["path"])
    assert (entry / "face.bgr").is_file() and json.loads((entry / "manifest.json").read_text())["files"]["face.bgr"]["size"] == 256 * 256 * 3
    with pipeline() as p:  # a new worker: the cache is on disk
        hit = p.run(image, audio, tmp_path / "2.mp4")
    assert _pre(hit)["hit"] is True and _pre(hit)["worker"] == {"hit": True} and _pre(hit)["key"] == _pre(miss)["key"]
    # Same path, edited content: a new key, never the stale entry.
    original = image.read_bytes()
    Image.open(image).transpose(Image.FLIP_LEFT_RIGHT).save(image)
    with pipeline() as p:
        edited = p.run(image, audio, tmp_path / "3.mp4")
    assert _pre(edited)["hit"] is False and _pre(edited)["key"] != _pre(miss)["key"]
    # A damaged entry is noticed, dropped and computed again.
    (entry / "face.bgr").write_bytes(b"\0" * 10)
    with pipeline() as p:
        image.write_bytes(original)  # back to the first content
        again = p.run(image, audio, tmp_path / "4.mp4")
    assert _pre(again)["key"] == _pre(miss)["key"] and _pre(again)["hit"] is False
    assert "is damaged" in caplog.text
    assert (entry / "face.bgr").stat().st_size == 256 * 256 * 3
    # --no-preprocess-cache: not read, not written
    with pipeline(preprocess_cache=False) as p:
        off = p.run(image, audio, tmp_path / "5.mp4")
    assert "preprocess" not in off.report["engine"]


def test_a_failed_job_stores_no_preprocessing(fake_engine, media, tmp_path):
    from lipsync_tool.errors import EngineError

    with pipeline(fake_mode="crash") as p, pytest.raises(EngineError):
        p.run(media.portrait(), media.audio(seconds=0.6), tmp_path / "x.mp4")
    root = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "preprocess" / "fake"
    assert not root.exists() or list(root.iterdir()) == []


def test_cache_info_lists_the_preprocessing_and_clean_removes_it(fake_engine, media, cli, tmp_path):
    with pipeline() as p:
        p.run(media.portrait(), media.audio(seconds=0.6), tmp_path / "1.mp4")
    r = cli("cache", "info")
    assert r.code == 0, r.output
    assert "Face preprocessing" in r.stdout and "fake: 1 entry" in r.stdout
    r = cli("cache", "clean", "--preprocess")
    assert r.code == 0, r.output
    assert "1 preprocessing entry" in r.stdout
    root = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "preprocess" / "fake"
    assert list(root.iterdir()) == []
    # the repository and checkpoint stay
    assert (Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "checkpoints" / "fake" / "fake.ckpt").is_file()


# -- streaming and HLS --------------------------------------------------------------------------------


def test_hls_segments_are_published_while_the_frames_are_still_being_made(fake_engine, media, tmp_path):
    hls = tmp_path / "hls"
    audio = media.audio(seconds=6.0)
    # 150 frames in batches of 8, 0.25 s apart: about 4.5 s of rendering.
    p = pipeline(hls=hls, hls_segment_seconds=1.0, fake_frame_delay=0.25)
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("r", p.run(media.portrait(), audio, None)), daemon=True)
    started = time.monotonic()
    t.start()
    playlist = hls / "index.m3u8"
    first_segment = None
    while t.is_alive() and time.monotonic() - started < 120:
        if playlist.exists() and "segment_00000.ts" in playlist.read_text():
            first_segment = time.monotonic() - started
            assert "#EXT-X-ENDLIST" not in playlist.read_text()
            break
        time.sleep(0.05)
    assert first_segment is not None, "no segment was published while the engine ran"
    assert t.is_alive(), "the first segment only appeared at the end"
    t.join(120)
    p.close()
    text = playlist.read_text()
    assert "#EXT-X-ENDLIST" in text and text.count("segment_") == 6
    total = sum(float(x.split(":")[1].rstrip(",")) for x in text.splitlines() if x.startswith("#EXTINF"))
    assert abs(total - 6.0) < 0.05
    assert result["r"].report["engine"]["runner"] == "worker"


def test_a_failure_mid_stream_leaves_no_output_and_a_marked_playlist(fake_engine, media, tmp_path, monkeypatch):
    from lipsync_tool.errors import EngineError

    out, hls = tmp_path / "out.mp4", tmp_path / "hls"
    # The worker dies after streaming some frames: the encoders stop, nothing is published.
    monkeypatch.setenv("FAKE_DIE_AFTER_FRAMES", "40")
    with pipeline(hls=hls, hls_segment_seconds=1.0, fake_frame_delay=0.1) as p, pytest.raises(EngineError) as err:
        p.run(media.portrait(), media.audio(seconds=4.0), out)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    text = (hls / "index.m3u8").read_text() if (hls / "index.m3u8").exists() else ""
    assert "#EXT-X-ENDLIST" not in text
    assert "marked as failed" in str(err.value)
    assert not list(hls.glob("*.tmp"))


# -- batch and long audio --------------------------------------------------------------------------------


def test_batch_renders_every_job_in_one_warm_worker(fake_engine, media, cli, tmp_path):
    image = media.portrait()
    rows = ["image,audio,output"] + [f"{image},{media.audio(f'a{i}.wav', seconds=0.6)},clip{i}.mp4" for i in range(3)]
    manifest = tmp_path / "batch.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = cli("batch", manifest, "--out-dir", out, "--engine", "fake", *FAST)
    assert r.code == 0, r.output
    jobs = [json.loads(p.read_text())["engine"] for p in sorted(out.glob("clip*.report.json"))]
    assert len(jobs) == 3
    pids = {j["worker_jobs"][0]["pid"] for j in jobs}
    assert len(pids) == 1
    assert sorted(j["worker_jobs"][0]["started_for_this_job"] for j in jobs) == [False, False, True]
    assert sorted(j["preprocess"][0]["hit"] for j in jobs) == [False, True, True]
    r = cli("batch", manifest, "--out-dir", tmp_path / "out2", "--engine", "fake", "--runner", "subprocess", *FAST)
    assert r.code == 0, r.output
    assert {json.loads(p.read_text())["engine"]["runner"] for p in (tmp_path / "out2").glob("clip*.report.json")} == {"subprocess"}


def test_long_audio_renders_every_chunk_in_one_worker(fake_engine, media, cli, tmp_path, ff):
    from test_long_audio import speech_with_silences  # noqa: F401 - the same generated speech

    samples_path = tmp_path / "long.wav"
    run_ffmpeg(ff, "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000,volume='gt(mod(t,3),0.4)':eval=frame", "-t", "7.5", samples_path.as_posix())
    report = tmp_path / "r.json"
    r = cli(media.portrait(), samples_path, tmp_path / "out.mp4", "--engine", "fake", "--chunk-seconds", "3", "--report", report, *FAST)
    assert r.code == 0, r.output
    data = json.loads(report.read_text())
    assert len(data["chunks"]) >= 2
    jobs = data["engine"]["worker_jobs"]
    assert len(jobs) == len(data["chunks"]) and len({j["pid"] for j in jobs}) == 1
    assert [j["started_for_this_job"] for j in jobs] == [True] + [False] * (len(jobs) - 1)
    assert [e["hit"] for e in data["engine"]["preprocess"]] == [False] + [True] * (len(jobs) - 1)
    assert abs(probe(tmp_path / "out.mp4", measure=True).video.duration - 7.5) <= 0.04 + 1e-6


# -- GPU options --------------------------------------------------------------------------------------


def test_fp16_is_refused_on_the_cpu_and_with_the_subprocess_runner(fake_engine, media, cli, tmp_path):
    image, audio = media.portrait(), media.audio(seconds=0.6)
    r = cli(image, audio, tmp_path / "o.mp4", "--engine", "fake", "--fp16", "--device", "cpu")
    assert r.code == 2 and "--fp16: needs a CUDA GPU; this run is on cpu" in r.output
    assert not (tmp_path / "o.mp4").exists()

    from lipsync_tool.engines.base import Device
    from lipsync_tool.errors import UsageError
    from lipsync_tool.streaming import check_gpu_options

    class Opts:
        fp16 = True

    with pytest.raises(UsageError, match="needs the warm worker"):
        check_gpu_options(Opts, Device("cuda", 0), "subprocess")
    check_gpu_options(Opts, Device("cuda", 0), "worker")


def test_the_encoder_choice_is_resolved_and_reported(fake_engine, media, tmp_path, ff):
    from lipsync_tool.engines.base import Device
    from lipsync_tool.errors import UsageError
    from lipsync_tool.streaming import resolve_encoder

    class NoNvenc:
        path = "/x/ffmpeg"

        def has_encoder(self, name):
            return False

    class Nvenc(NoNvenc):
        def has_encoder(self, name):
            return name == "h264_nvenc"

    cpu, gpu = Device("cpu"), Device("cuda", 0)
    assert resolve_encoder("auto", cpu, Nvenc()) == ("libx264", "auto: the run is on the CPU")
    assert resolve_encoder("auto", gpu, NoNvenc())[0] == "libx264"
    assert resolve_encoder("auto", gpu, Nvenc()) == ("h264_nvenc", "auto: a GPU run, and ffmpeg has NVENC")
    with pytest.raises(UsageError, match="built without h264_nvenc"):
        resolve_encoder("h264_nvenc", gpu, NoNvenc())
    with pipeline() as p:
        result = p.run(media.portrait(), media.audio(seconds=0.6), tmp_path / "o.mp4")
    assert result.report["engine"]["encoder"] == {"name": "libx264", "reason": "auto: the run is on the CPU"}

    from lipsync_tool.config import UpscaleOptions
    from lipsync_tool.media.encoding import video_codec_options

    nv = video_codec_options(UpscaleOptions(encoder="h264_nvenc", crf=20))
    assert nv["vcodec"] == "h264_nvenc" and nv["cq"] == 20 and "crf" not in nv


def test_batch_size_from_free_vram():
    import importlib.util

    from lipsync_tool.engines import workerd

    spec = importlib.util.spec_from_file_location("gpu", Path(workerd.__file__).with_name("gpu.py"))
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    item = gpu.PER_ITEM_BYTES["wav2lip"]
    assert gpu.batch_size_from_free(80 << 30, item) == 512  # capped
    assert gpu.batch_size_from_free(int(item * 10 / 0.75), item) == 10
    assert gpu.batch_size_from_free(int(item * 10 / 0.75), item, fp16=True) == 20
    assert gpu.batch_size_from_free(1 << 20, item) == 1  # never zero
    assert gpu.choose_batch_size(64, 128, kind="wav2lip", free_bytes=80 << 30) == (64, "option")
    assert gpu.choose_batch_size(None, 128, kind="wav2lip", free_bytes=None) == (128, "upstream's default")
    n, why = gpu.choose_batch_size("auto", 2, kind="sadtalker-256", free_bytes=20 << 30)
    assert n == int((20 << 30) * 0.75) // gpu.PER_ITEM_BYTES["sadtalker-256"] and "free VRAM 20.0 GiB" in why


# -- the protocol -------------------------------------------------------------------------------------


def test_the_protocol_frames_binary_payloads_and_rejects_garbage():
    from lipsync_tool.engines.workerd import protocol

    stream = io.BytesIO(protocol.encode({"type": "frames", "count": 2, "bytes": 6}) + b"abcdef" + protocol.encode({"type": "done"}))
    assert protocol.read_message(stream) == ({"type": "frames", "count": 2, "bytes": 6}, b"abcdef")
    assert protocol.read_message(stream) == ({"type": "done"}, None)
    with pytest.raises(EOFError):
        protocol.read_message(stream)
    with pytest.raises(protocol.ProtocolError):
        protocol.read_message(io.BytesIO(b"Traceback (most recent call last):\n"))
    with pytest.raises(EOFError, match="into a frame batch"):
        protocol.read_message(io.BytesIO(protocol.encode({"type": "frames", "count": 1, "bytes": 10}) + b"abc"))


# -- the same failures as upstream's CLI ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["noface", "noout", "hang"])
def test_failures_end_as_they_do_with_the_subprocess_runner(fake_engine, media, cli, tmp_path, monkeypatch, mode):
    """Same exit code, same error class (and for a translated error the same message), no output, the temp dir kept."""
    monkeypatch.setenv("FAKE_PIDFILE", str(tmp_path / "pids"))
    image, audio = media.portrait(), media.audio(seconds=0.6)
    seen = {}
    for runner in ("subprocess", "worker"):
        out, report = tmp_path / f"{runner}.mp4", tmp_path / f"{runner}.json"
        r = cli(image, audio, out, "--engine", "fake", "--fake-mode", mode, "--timeout", "4", "--runner", runner, "--report", report)
        data = json.loads(report.read_text())
        assert data["status"] == "failed" and not out.exists() and not list(tmp_path.glob(f".{runner}.*"))
        assert "kept for debugging" in r.stderr
        error_line = next(ln for ln in r.stderr.splitlines() if ln.startswith("Error:"))
        seen[runner] = (r.code, data["error"]["type"], error_line)
    assert seen["subprocess"][:2] == seen["worker"][:2], seen
    if mode == "noface":
        assert seen["subprocess"] == seen["worker"] == (2, "FaceNotFoundError", "Error: face: the fake engine found no face")


def test_two_jobs_that_fill_the_same_entry_leave_one_valid_entry(tmp_path):
    from lipsync_tool.resources.preprocess import PreprocessCache

    cache = PreprocessCache(tmp_path / "cache")
    key = cache.key({"face": "ab" * 32, "options": {"size": 256}})
    a, b = cache.slot("eng", key), cache.slot("eng", key)
    assert not a.hit and not b.hit and a.dir != b.dir
    (a.dir / "boxes.json").write_text("[1, 2]")
    (b.dir / "boxes.json").write_text("[1, 2]")
    assert cache.commit(a, {}) == cache.commit(b, {}) == cache.entry("eng", key)
    assert sorted(p.name for p in (tmp_path / "cache" / "v1" / "preprocess" / "eng").iterdir()) == [key]
    hit = cache.slot("eng", key)
    assert hit.hit and (hit.dir / "boxes.json").read_text() == "[1, 2]"
    # A job that wrote nothing stores nothing; a failed job's folder goes.
    empty = cache.slot("eng", cache.key({"other": 1}))
    assert cache.commit(empty, {}) is None and not empty.dir.exists()
    failed = cache.slot("eng", cache.key({"other": 2}))
    cache.discard(failed)
    assert not failed.dir.exists()
    count, freed = cache.clean("eng")
    assert count == 1 and freed >= len("[1, 2]") and not cache.entry("eng", key).exists()
