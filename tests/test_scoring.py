"""SyncNet scores (issue 15): the maths, the MFCCs, the networks by name, and ``score`` / ``compare --score`` / ``batch --score`` end to end.

The weights are random (tests/syncnet_rig.py): SyncNet's numbers mean
nothing, but they are real outputs of the real pipeline, and the rigged S3FD
finds exactly one face on the generated clips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lipsync_tool.scoring.syncnetd import lse, mfcc

pytest.importorskip("torch")
pytest.importorskip("cv2")

from syncnet_rig import make_face_clip, write_weights

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


# -- the maths ---------------------------------------------------------------------------------


def test_a_planted_offset_is_found_with_the_hand_computed_scores():
    rng = np.random.default_rng(1)
    n, dim, shift = 60, 8, 3
    audio = rng.standard_normal((n, dim))
    video = np.zeros((n, dim))
    video[: n - shift] = audio[shift:]  # video window i matches audio window i + 3
    video[n - shift :] = rng.standard_normal((shift, dim))
    s = lse.sync_scores(video, audio, vshift=5)
    assert s.av_offset == -shift  # syncnet_python's sign: vshift - argmin
    # By hand: the mean over windows of |v_i - a_(i+k-5) + eps| for each k, zero rows past either end.
    padded = np.vstack([np.zeros((5, dim)), audio, np.zeros((5, dim))])
    means = [np.mean([np.linalg.norm(video[i] - padded[i + k] + 1e-6) for i in range(n)]) for k in range(11)]
    assert s.mean_dists == pytest.approx(means, rel=1e-12)
    assert s.lse_d == pytest.approx(min(means)) and np.argmin(means) == 5 + shift
    assert s.lse_c == pytest.approx(sorted(means)[5] - min(means))  # the median of 11


def test_the_median_is_torchs_lower_median_and_empty_input_is_refused():
    assert lse.lower_median(np.array([4.0, 1.0, 3.0, 2.0])) == 2.0
    assert lse.window_count(frames=100, audio_samples=640 * 90) == 85
    assert lse.window_count(frames=5, audio_samples=640 * 90) == 0
    with pytest.raises(ValueError):
        lse.sync_scores(np.empty((0, 4)), np.empty((0, 4)))


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    for n in (16000 * 2 + 123, 399, 401):
        x = (rng.standard_normal(n) * 3000).astype(np.int16)
        np.testing.assert_allclose(mfcc.mfcc(x), psf.mfcc(x, 16000), rtol=1e-10, atol=1e-10)


# -- the networks and the weight format ---------------------------------------------------------


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """Random weights in the published format and a [syncnet] registry override for them."""
    return write_weights(tmp_path_factory.mktemp("syncnet-weights"))


def test_the_published_format_loads_by_name_and_extra_entries_are_ignored(weights, tmp_path):
    import torch

    from lipsync_tool.scoring.syncnetd import main as child
    from lipsync_tool.scoring.syncnetd import nets

    state = torch.load(weights.parent / "syncnet_v2.model", weights_only=True)
    assert "netcnnlip.0.weight" in state and not any(k.endswith("num_batches_tracked") for k in state)
    with_counters = dict(state, **{"netcnnaud.1.num_batches_tracked": torch.tensor(7)})
    torch.save(with_counters, tmp_path / "old.model")
    model = child.load_weights(nets.SyncNet(), str(tmp_path / "old.model"), "SyncNet v2")
    assert torch.equal(model.state_dict()["netfclip.3.bias"], state["netfclip.3.bias"])
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "renamed.model")
    with pytest.raises(child.WeightsError, match=r"renamed.model: not SyncNet v2 weights \(missing \['netcnnaud"):
        child.load_weights(nets.SyncNet(), str(tmp_path / "renamed.model"), "SyncNet v2")
    (tmp_path / "junk.model").write_bytes(b"not a torch file")
    with pytest.raises(child.WeightsError, match=r"junk\.model: cannot be read as SyncNet v2 weights"):
        child.load_weights(nets.SyncNet(), str(tmp_path / "junk.model"), "SyncNet v2")


# -- score, end to end ---------------------------------------------------------------------------


def _score(*args, cache: Path, registry: Path | None = None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, LIPSYNC_TOOL_CACHE=str(cache), **(env_extra or {}))
    env.pop("LIPSYNC_TOOL_REGISTRY", None)
    argv = [sys.executable, "-m", "lipsync_tool", "score", *map(str, args)] + (["--registry", str(registry)] if registry else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "face": make_face_clip(d / "face.mp4", seconds=4.6, ffmpeg=FFMPEG),
        "short": make_face_clip(d / "short.mp4", seconds=2.0, ffmpeg=FFMPEG),
        "noface": make_face_clip(d / "noface.mp4", seconds=4.6, face=False, ffmpeg=FFMPEG),
    }


def test_score_runs_the_whole_pipeline_on_a_generated_clip(weights, clips, tmp_path):
    proc = _score(clips["face"], clips["short"], clips["noface"], "--json", "--keep-temp", cache=tmp_path / "cache", registry=weights)
    assert proc.returncode == 1, proc.stderr  # two of three could not be scored
    doc = json.loads(proc.stdout)
    assert doc["scorer"] == "syncnet" and doc["device"] == "cpu" and doc["device_reason"]
    face, short, noface = doc["results"]
    assert face["mode"] == "full" and face["score_note"] is None
    assert isinstance(face["lse_d"], float) and isinstance(face["lse_c"], float) and face["lse_c"] >= 0
    assert isinstance(face["av_offset"], int) and -15 <= face["av_offset"] <= 15
    [track] = face["tracks"]  # the rigged detector finds one face in every frame
    # The scene is what OpenCV decodes of the 25 fps AVI, as syncnet_python's scene detection reads it.
    assert track["frames"] == face["details"]["video_frames"] == face["details"]["frames_with_face"] == 115
    assert track["windows"] == 110
    assert (track["lse_d"], track["lse_c"], track["av_offset"]) == (face["lse_d"], face["lse_c"], face["av_offset"])
    assert abs(face["av_duration_diff_s"]) < 0.1
    assert isinstance(face["mouth_sharpness"], float) or "no face found" in face["sharpness_note"]  # whatever dlib makes of a blob
    for r, why in ((short, "too short to score: 5"), (noface, "no face track: S3FD found a face in 0 of 11")):
        assert r["lse_d"] == r["lse_c"] == r["av_offset"] == "not computed"
        assert r["score_note"].startswith(why), r["score_note"]
    # The weights went through the verified cache.
    cached = tmp_path / "cache" / "v1" / "checkpoints" / "syncnet"
    assert {p.name for p in cached.iterdir() if not p.name.endswith(".sha256")} >= {"syncnet_v2.model", "sfd_face.pth"}

    # The second stage alone, on the face track the first run cut: the same figures.
    kept = Path(doc["temp_dir"])
    crop = next(kept.glob("clip-*/crop00000.avi"))
    again = json.loads(_score(crop, "--face-crop", "--json", cache=tmp_path / "cache", registry=weights).stdout)["results"][0]
    assert again["mode"] == "face_crop" and [t["frames"] for t in again["tracks"]] == [115]
    assert again["lse_d"] == pytest.approx(face["lse_d"], abs=1e-6) and again["av_offset"] == face["av_offset"]
    shutil.rmtree(kept)
    # The table, for people.
    table = _score(clips["short"], cache=tmp_path / "cache", registry=weights)
    assert table.returncode == 1 and "LSE-D" in table.stdout and "short.mp4: scores not computed: too short to score" in table.stdout


def test_missing_weights_say_how_to_get_them(clips, tmp_path):
    proc = _score(clips["face"], cache=tmp_path / "empty-cache", env_extra={"LIPSYNC_TOOL_OFFLINE": "1"})
    assert proc.returncode == 2  # OfflineError: nothing to work with, as for an engine
    assert "syncnet_v2.model (54,573,114 bytes)" in proc.stderr and "sfd_face.pth" in proc.stderr
    assert "lipsync-tool setup --scorer syncnet" in proc.stderr and "Traceback" not in proc.stderr


def test_an_interpreter_without_torch_is_a_clear_error(clips, tmp_path, weights):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    proc = _score(clips["face"], "--python", bare / "bin" / "python", "--device", "cpu", cache=tmp_path / "cache", registry=weights)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "lipsync-tool[score]" in proc.stderr and "--python" in proc.stderr, proc.stderr


def test_bad_inputs_are_refused_before_any_work(tmp_path):
    proc = _score(tmp_path / "nope.mp4", cache=tmp_path / "cache")
    assert proc.returncode == 2 and "nope.mp4: no such file" in proc.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    proc = _score(text, cache=tmp_path / "cache", env_extra={"LIPSYNC_TOOL_OFFLINE": "1"})  # checked before the (missing) weights
    assert proc.returncode == 2 and "notes.txt" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_setup_fetches_the_scorers_weights_through_the_registry(weights, tmp_path):
    import os

    env = dict(os.environ, LIPSYNC_TOOL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "lipsync_tool", "setup", "--scorer", "syncnet", "--registry", str(weights)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "The weights of the SyncNet scorer are ready." in proc.stdout and proc.stdout.count("downloaded") == 2
    proc = subprocess.run([sys.executable, "-m", "lipsync_tool", "setup", "--scorer", "syncnet", "--registry", str(weights)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.stdout.count("cached") == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[syncnet.checkpoints."syncnet_v3.model"]\nsize = 1\n')
    proc = subprocess.run([sys.executable, "-m", "lipsync_tool", "setup", "--scorer", "syncnet", "--registry", str(bad)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and 'syncnet.checkpoints."syncnet_v3.model": unknown checkpoint (known: sfd_face.pth, syncnet_v2.model)' in proc.stderr


# -- the weightless figures ----------------------------------------------------------------------


def test_mouth_sharpness_drops_when_the_face_is_blurred(tmp_path):
    import cv2

    from lipsync_tool.media import find_ffmpeg, probe
    from lipsync_tool.scoring.quality import laplacian_variance, mouth_sharpness

    portrait = Path(__file__).parent / "data" / "portrait.jpg"
    ff = find_ffmpeg()
    clips = {}
    for name, vf in (("sharp", "scale=512:-2"), ("blurred", "scale=512:-2,gblur=sigma=3")):
        clips[name] = tmp_path / f"{name}.mp4"
        argv = [ff.path, "-v", "error", "-loop", "1", "-i", str(portrait), "-f", "lavfi", "-i", "sine=d=1", "-t", "1", "-vf", vf + ",format=yuv420p"]
        subprocess.run([*argv, "-c:v", "libx264", "-crf", "12", "-c:a", "aac", "-shortest", str(clips[name])], check=True, timeout=120)
    sharp = mouth_sharpness(ff, clips["sharp"], probe(clips["sharp"], ff=ff, measure=True))
    blurred = mouth_sharpness(ff, clips["blurred"], probe(clips["blurred"], ff=ff, measure=True))
    assert sharp.value is not None and blurred.value is not None and sharp.frames > 0
    assert blurred.value < sharp.value / 2
    img = np.random.default_rng(0).integers(0, 255, (40, 50)).astype(np.uint8)
    assert laplacian_variance(img) == pytest.approx(cv2.Laplacian(img, cv2.CV_64F)[1:-1, 1:-1].var())


# -- compare --score and batch --score -----------------------------------------------------------


@pytest.fixture
def blob_portrait(tmp_path) -> Path:
    """A still of the rigged detector's "face" (the fake engine renders its input image)."""
    clip = make_face_clip(tmp_path / "still.mp4", seconds=0.2, ffmpeg=FFMPEG)
    png = tmp_path / "blob.png"
    subprocess.run([FFMPEG, "-v", "error", "-i", str(clip), "-frames:v", "1", str(png)], check=True, timeout=60)
    return png


def test_compare_score_fills_the_columns(cli, fake_engine, media, blob_portrait, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_TOOL_REGISTRY", str(weights))
    out = tmp_path / "cmp"
    result = cli("compare", blob_portrait, media.audio(seconds=4.6), out, "--engines", "fake", "--skip-face-check", "--x264-preset", "ultrafast", "--target-height", "480", "--score")
    assert result.code == 0, result.output
    data = json.loads((out / "comparison.json").read_text())
    [e] = data["engines"]
    assert data["scorer"] == "syncnet" and e["scorer"] == "syncnet" and e["score_note"] is None
    assert isinstance(e["lse_d"], float) and isinstance(e["lse_c"], float) and isinstance(e["av_offset"], int)
    assert isinstance(e["mouth_sharpness"], float) and isinstance(e["av_duration_diff_s"], float)  # dlib takes the blob for a face
    md = (out / "comparison.md").read_text()
    assert f"| {e['lse_c']:.3f} | {e['lse_d']:.3f} | {e['av_offset']} | {e['mouth_sharpness']:.1f} | {e['av_duration_diff_s']:+.3f} |" in md
    assert "LSE-D" in result.stdout and f"{e['lse_d']:.3f}" in result.stdout


def test_batch_score_adds_the_columns_to_each_row(cli, fake_engine, media, blob_portrait, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_TOOL_REGISTRY", str(weights))
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"image,audio,output\n{blob_portrait},{media.audio('long.wav', seconds=4.6)},long.mp4\n{blob_portrait},{media.audio('short.wav', seconds=1.0)},short.mp4\n")
    out = tmp_path / "out"
    result = cli("batch", manifest, "-o", out, "--engine", "fake", "--skip-face-check", "--x264-preset", "ultrafast", "--target-height", "480", "--score")
    assert result.code == 0, result.output
    rows = [json.loads(line) for line in (out / "batch_report.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    long, short = rows
    assert isinstance(long["lse_d"], float) and isinstance(long["av_offset"], int) and long["score_note"] is None
    assert short["lse_d"] == "not computed" and short["score_note"].startswith("too short to score: 25 frames")
