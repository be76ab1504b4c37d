"""Opt-in: the real upstream engines, run through lipsync-tool on the CPU.

Skipped unless an upstream checkout is named::

    LIPSYNC_TOOL_UPSTREAM_WAV2LIP=/work/upstream/Wav2Lip \\
    LIPSYNC_TOOL_UPSTREAM_SADTALKER=/work/upstream/SadTalker \\
    LIPSYNC_TOOL_UPSTREAM_PYTHON=/work/venv-upstream/bin/python \\
    python -m pytest -m upstream tests/test_upstream.py

``LIPSYNC_TOOL_UPSTREAM_PYTHON`` is the engine's interpreter (``--python``;
default: this one); it needs torch and the engine's packages (``lipsync-tool
setup --install-deps --python …`` installs them).  The checkpoints are random
weights made from upstream's own model classes by ``tests/upstream/make_weights.py``
(in a temp dir, or reused from ``LIPSYNC_TOOL_UPSTREAM_WEIGHTS/<engine>``), and
reach lipsync-tool through a registry override of ``file://`` URLs with their
sha256, so the real clone and verified-download path runs too.

SadTalker renders about 10 s a frame on 2 CPU cores: its clips are 0.6 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PORTRAIT, cli_subprocess, run_ffmpeg
from lipsync_tool.media import probe

pytestmark = [pytest.mark.upstream, pytest.mark.slow, pytest.mark.timeout(1800)]

HERE = Path(__file__).parent
MAKE_WEIGHTS = HERE / "upstream" / "make_weights.py"
WAV2LIP = os.environ.get("LIPSYNC_TOOL_UPSTREAM_WAV2LIP")
SADTALKER = os.environ.get("LIPSYNC_TOOL_UPSTREAM_SADTALKER")
ENGINE_PY = os.environ.get("LIPSYNC_TOOL_UPSTREAM_PYTHON") or sys.executable
WEIGHTS = os.environ.get("LIPSYNC_TOOL_UPSTREAM_WEIGHTS")

needs_wav2lip = pytest.mark.skipif(not WAV2LIP, reason="set LIPSYNC_TOOL_UPSTREAM_WAV2LIP to a Wav2Lip checkout")
needs_sadtalker = pytest.mark.skipif(not SADTALKER, reason="set LIPSYNC_TOOL_UPSTREAM_SADTALKER to a SadTalker checkout")

#: The face box of tests/data/portrait.jpg, X1 Y1 X2 Y2 (random s3fd weights find no face).
BOX = ("100", "100", "400", "420")


def make_weights(engine: str, repo: str, out: Path, *extra: str) -> Path:
    """registry.toml for random weights of *engine* (made once per dir)."""
    registry = out / "registry.toml"
    if not registry.exists():
        proc = subprocess.run(
            [ENGINE_PY, str(MAKE_WEIGHTS), engine, "--repo", repo, "--out", str(out), *extra], capture_output=True, text=True, timeout=900, cwd=out.parent, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return registry


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    return Path(WEIGHTS) if WEIGHTS else tmp_path_factory.mktemp("upstream-weights")


def run_tool(*args, env_extra: dict[str, str] | None = None, timeout: float = 1500):
    env = dict(os.environ)
    env["LIPSYNC_TOOL_SHIM_DEBUG"] = "1"  # the shims' log goes to the engine log
    env.update(env_extra or {})
    started = time.monotonic()
    result = cli_subprocess(*args, "--python", ENGINE_PY, "--device", "cpu", "--seed", "1", env=env, timeout=timeout)
    return result, time.monotonic() - started


def check_video(path: Path, seconds: float, fps: float = 25.0) -> dict:
    info = probe(path, measure=True)
    assert info.video is not None and info.video.codec == "h264" and info.video.height == 1080
    assert info.audio is not None and info.audio.codec == "aac"
    assert abs(info.video.duration - seconds) <= 1 / fps + 1e-6
    return info.to_dict()


def engine_log(report: Path) -> str:
    """The engine log of a --keep-temp run (the kept temp dir is removed)."""
    import shutil

    temp = Path(json.loads(report.read_text())["temp_dir"])
    text = (temp / "engine.log").read_text(errors="replace")
    shutil.rmtree(temp, ignore_errors=True)
    return text


# -- Wav2Lip -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w2l_registry(weights_root) -> Path:
    out = weights_root / "wav2lip"
    out.mkdir(exist_ok=True)
    return make_weights("wav2lip", WAV2LIP, out)


@needs_wav2lip
@pytest.mark.parametrize("runner", ["worker", "subprocess"])
def test_wav2lip_real_run(w2l_registry, media, tmp_path, runner):
    audio = media.audio("speech.wav", seconds=3.0)
    out, report = tmp_path / "w2l.mp4", tmp_path / "report.json"
    r, wall = run_tool(
        PORTRAIT, audio, out, "--engine", "wav2lip", "--registry", w2l_registry, "--wav2lip-box", *BOX, "--report", report, "--keep-temp", "--runner", runner
    )
    assert r.code == 0, r.output
    media_info = check_video(out, 3.0)
    data = json.loads(report.read_text())
    assert data["engine"]["runner"] == runner
    if runner == "worker":
        (job,) = data["engine"]["worker_jobs"]
        assert job["frames"] == 72 and job["models"]["loaded"] and job["video"]["width"] == 512
        assert "preprocess" not in data["engine"]  # --wav2lip-box: upstream skips the detector, nothing to cache
    assert data["engine"]["commit"] == "5c90fa9b4a2c2a37d0b4ebf7633ac41534eb9941"
    assert data["commands"]["engine"][1] == "inference.py" and "--box" in data["commands"]["engine"]
    log = engine_log(report)
    assert "Model loaded" in log
    # the shims that this run needed did their work in upstream's own process
    assert "librosa.filters.mel accepts sr, n_fft by position" in log
    assert "torch.load(" in log and "weights_only=False): a trusted file" in log
    print(json.dumps({"engine": "wav2lip", "wall_s": round(wall, 1), "timings": data["timings"], "output": media_info}))


@needs_wav2lip
def test_wav2lip_long_audio_renders_every_chunk_in_one_worker(w2l_registry, media, tmp_path):
    audio = media.audio("speech.wav", seconds=7.0)
    out, report = tmp_path / "long.mp4", tmp_path / "report.json"
    r, _ = run_tool(PORTRAIT, audio, out, "--engine", "wav2lip", "--registry", w2l_registry, "--wav2lip-box", *BOX, "--chunk-seconds", "3", "--report", report)
    assert r.code == 0, r.output
    check_video(out, 7.0)
    data = json.loads(report.read_text())
    jobs = data["engine"]["worker_jobs"]
    assert len(jobs) == len(data["chunks"]) >= 2
    assert len({j["pid"] for j in jobs}) == 1 and [j["models"]["loaded"] for j in jobs] == [True] + [False] * (len(jobs) - 1)


@needs_wav2lip
def test_wav2lip_face_video_rotate(w2l_registry, media, ff, tmp_path):
    """A face video with --wav2lip-rotate: upstream's cv2.cv2 call needs the OpenCV shim."""
    clip = tmp_path / "face.mp4"
    run_ffmpeg(ff, "-loop", "1", "-i", str(PORTRAIT), "-t", "1", "-r", "25", "-vf", "scale=320:320,transpose=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip))
    audio = media.audio("speech.wav", seconds=1.0)
    out, report = tmp_path / "rot.mp4", tmp_path / "report.json"
    r, _ = run_tool(clip, audio, out, "--engine", "wav2lip", "--registry", w2l_registry, "--wav2lip-rotate", "--wav2lip-box", "60", "60", "260", "280", "--report", report, "--keep-temp")
    assert r.code == 0, r.output
    check_video(out, 1.0)
    assert "cv2.cv2 = cv2" in engine_log(report)


@needs_wav2lip
def test_wav2lip_random_detector_finds_no_face(w2l_registry, media, tmp_path):
    audio = media.audio("speech.wav", seconds=0.6)
    r, _ = run_tool(PORTRAIT, audio, tmp_path / "x.mp4", "--engine", "wav2lip", "--registry", w2l_registry)
    assert r.code == 2, r.output
    assert "found no face" in r.stderr and "--wav2lip-box" in r.stderr
    assert not (tmp_path / "x.mp4").exists()


# -- SadTalker ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def st_registry(weights_root) -> Path:
    out = weights_root / "sadtalker"
    out.mkdir(exist_ok=True)
    return make_weights("sadtalker", SADTALKER, out)


@needs_sadtalker
def test_sadtalker_real_run(st_registry, media, tmp_path):
    audio = media.audio("speech.wav", seconds=0.6)
    out, report = tmp_path / "st.mp4", tmp_path / "report.json"
    r, wall = run_tool(PORTRAIT, audio, out, "--engine", "sadtalker", "--registry", st_registry, "--report", report, "--keep-temp")
    assert r.code == 0, r.output
    media_info = check_video(out, 0.6)
    data = json.loads(report.read_text())
    assert data["engine"]["commit"] == "cd4c0465ae0b54a6f85af57f5c65fec9fe23e7f8"  # the pinned commit, sparse-cloned
    argv = data["commands"]["engine"]
    assert argv[-1] == "--cpu" and "--still" in argv
    # The default runner: a warm worker, its frames streamed into the upscale (15 frames for 0.6 s at 25 fps).
    assert data["engine"]["runner"] == "worker"
    (job,) = data["engine"]["worker_jobs"]
    assert job["frames"] == 15 and job["models"]["loaded"] and job["video"]["pix_fmt"] == "rgb24"
    (pre,) = data["engine"]["preprocess"]
    assert pre["hit"] is False and pre["stored"] and pre["worker"]["hit"] is False
    log = engine_log(report)
    assert "job 1 done: 15 frames" in log
    for shim in ("np.VisibleDeprecationWarning = np.exceptions.VisibleDeprecationWarning", "functional_tensor is an alias", "POS returns a flat t", "restored np.int, np.float"):
        assert shim in log, shim
    print(json.dumps({"engine": "sadtalker", "wall_s": round(wall, 1), "timings": data["timings"], "output": media_info}))


@needs_sadtalker
def test_sadtalker_no_face(weights_root, media, tmp_path):
    out = weights_root / "sadtalker-noface"
    out.mkdir(exist_ok=True)
    registry = make_weights("sadtalker", SADTALKER, out, "--no-face")
    audio = media.audio("speech.wav", seconds=0.6)
    r, _ = run_tool(PORTRAIT, audio, tmp_path / "x.mp4", "--engine", "sadtalker", "--registry", registry)
    assert r.code == 2, r.output
    assert "SadTalker found no face" in r.stderr and "--preprocess" in r.stderr


FACE3D = """
import json, sys
import numpy as np
from PIL import Image
from src.face3d.util.preprocess import align_img
from src.face3d.util.load_mats import load_lm3d
lm3d = load_lm3d("src/config")
lm = np.stack([np.linspace(60, 190, 68), np.linspace(70, 200, 68)], 1).astype(np.float32)
trans_params, im1, lm1, _ = align_img(Image.new("RGB", (256, 256)), lm, lm3d)
values = np.array([float(item) for item in np.hsplit(trans_params, 5)]).astype(np.float32)
print(json.dumps({"values": values.tolist(), "size": im1.size}))
"""


@needs_sadtalker
def test_sadtalker_face3d_preprocess_on_the_real_module():
    """The real src/face3d/util/preprocess.py: breaks on numpy >= 1.24 without the shim, works with it."""
    from lipsync_tool.engines.compat import SITE_DIR

    def run(shims: bool):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = os.pathsep.join(([str(SITE_DIR)] if shims else []) + [SADTALKER])
        return subprocess.run([ENGINE_PY, "-c", FACE3D], capture_output=True, text=True, env=env, cwd=SADTALKER, timeout=300, check=False)

    broken = run(False)
    fixed = run(True)
    assert broken.returncode != 0, broken.stdout
    assert fixed.returncode == 0, fixed.stderr
    out = json.loads(fixed.stdout.strip().splitlines()[-1])
    assert out["size"] == [224, 224] and len(out["values"]) == 5 and out["values"][:2] == [256.0, 256.0]


REAL_DOWNLOADERS = """
import json, sys
from basicsr.utils.download_util import load_file_from_url as basicsr_get
from facexlib.utils import load_file_from_url as facexlib_get
from facexlib.detection import init_detection_model  # imports facexlib's own binding
import facexlib.detection as det
url = sys.argv[1]
print(json.dumps([basicsr_get(url=url, model_dir="weights"), facexlib_get(url=url, model_dir="x", save_dir="gfpgan/weights"),
                  det.load_file_from_url(url=url, model_dir="x", save_dir="y")]))
"""


@needs_sadtalker
def test_url_map_with_the_real_basicsr_and_facexlib(tmp_path):
    """What the background enhancer does on a GPU: basicsr/facexlib asked for a
    release URL get the verified local file, with no network."""
    from lipsync_tool.engines.compat import ENV_URL_MAP, SITE_DIR
    from lipsync_tool.engines.sadtalker import SadTalker

    url = SadTalker().checkpoint("RealESRGAN_x2plus.pth").serves_url
    local = tmp_path / "RealESRGAN_x2plus.pth"
    local.write_bytes(b"verified")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYTHONPATH": str(SITE_DIR), ENV_URL_MAP: json.dumps({url: str(local)}), "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run([ENGINE_PY, "-c", REAL_DOWNLOADERS, url], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [str(local)] * 3
    assert not (tmp_path / "weights").exists() and not (tmp_path / "gfpgan").exists()
