"""Opt-in: the warm worker's Wav2Lip adapter against upstream's own inference.py, on the CPU.

Skipped unless a Wav2Lip checkout is named::

    LIPSYNC_TOOL_UPSTREAM_WAV2LIP=/work/upstream/Wav2Lip \\
    LIPSYNC_TOOL_UPSTREAM_PYTHON=/work/venv-upstream/bin/python \\
    LIPSYNC_TOOL_UPSTREAM_WEIGHTS=/work/upstream-weights \\
    python -m pytest -m upstream tests/test_upstream_worker_wav2lip.py

The checkpoints are random weights from ``tests/upstream/make_weights.py`` (in
a temp dir, or reused from ``LIPSYNC_TOOL_UPSTREAM_WEIGHTS/wav2lip``).  The
reference is upstream's ``inference.py`` run as a subprocess in a link farm,
with the compat shims and a test-only shim (``tests/upstream/capture_wav2lip``)
that keeps every frame upstream hands to its ``cv2.VideoWriter``; the worker
(``workerd/main.py`` with ``wav2lip_adapter.py``, driven by
``tests/worker_harness.py``) must stream exactly those frames.

Random s3fd weights find no face (make_weights.py sets every confidence head
to "background"), so the identity runs pass ``--box``; the preprocessing cache
is tested on the detector path with a test-only adapter subclass whose
detector is a stub, and a hit is rendered by the real adapter, which would
fail if it ran the (random) detector.

``--wav2lip-quality improved`` runs on upstream's generator with ``--box``, and
``enhanced`` on it with the ``gfpgan`` package's GFPGANer (random GFPGAN, a rigged
RetinaFace and ParseNet from ``make_weights.py restorer``);
frames without a face run with a stub detector that finds none in the blank
frames of ``blank.mp4``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from worker_harness import Worker

from lipsync_tool.engines.compat import compat_env
from lipsync_tool.workspace import build_link_farm

WAV2LIP = os.environ.get("LIPSYNC_TOOL_UPSTREAM_WAV2LIP")
ENGINE_PY = os.environ.get("LIPSYNC_TOOL_UPSTREAM_PYTHON") or sys.executable
WEIGHTS = os.environ.get("LIPSYNC_TOOL_UPSTREAM_WEIGHTS")

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not WAV2LIP, reason="set LIPSYNC_TOOL_UPSTREAM_WAV2LIP to a Wav2Lip checkout"),
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ADAPTER = ROOT / "lipsync_tool" / "engines" / "workerd" / "wav2lip_adapter.py"
CAPTURE_SITE = HERE / "upstream" / "capture_wav2lip"
MAKE_WEIGHTS = HERE / "upstream" / "make_weights.py"
PORTRAIT = HERE / "data" / "portrait.jpg"

CHECKPOINT = "checkpoints/wav2lip_gan.pth"
S3FD = "face_detection/detection/sfd/s3fd.pth"
#: --box (top bottom left right) of the face in portrait.jpg (512 x 512), and in the 256 x 256 face video.
IMAGE_BOX = ["--box", "100", "420", "100", "400"]
VIDEO_BOX = ["--box", "50", "210", "50", "200"]
AUDIO_SECONDS = 1.2  # 27 frames: more than the face video has (25), so upstream cycles through it
VIDEO_FRAMES = 25
TIMEOUT = 600

STUB_ADAPTER = '''"""TEST-ONLY: the real Wav2Lip adapter with a stub face detector."""
import importlib.util

_spec = importlib.util.spec_from_file_location("real_wav2lip_adapter", {adapter!r})
real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real)


class StubDetector:
    """Answers get_detections_for_batch as upstream's FaceAlignment does: (x1, y1, x2, y2) per image.
    The boxes move with the position in the batch, so upstream's smoothing has work to do."""

    def get_detections_for_batch(self, images):
        return [(60 + k % 3, 50 + k % 2, 190, 200 - k % 4) for k in range(len(images))]


class BlankStub(StubDetector):
    """No face in a blank image (upstream's detector answers None for such a frame)."""

    def get_detections_for_batch(self, images):
        boxes = super().get_detections_for_batch(images)
        return [None if image.std() < 1.0 else box for image, box in zip(images, boxes)]


class Adapter(real.Adapter):
    def new_face_alignment(self, *args, **kwargs):
        return {detector}()
'''
#: --wav2lip-quality enhanced's weights (GFPGAN's, rigged: tests/upstream/make_weights.py restorer).
RESTORER = ("GFPGANv1.4.pth", "detection_Resnet50_Final.pth", "parsing_parsenet.pth")
SHORT_SECONDS = 0.4
#: The frames of blank.mp4 (the face video) that are black.
BLANK = (5, 6, 7)


# -- inputs, weights, link farms ---------------------------------------------------------------


def write_speech_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    """A speech-like signal: a gliding voiced tone with harmonics, four syllables a second, a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    signal = 0.3 * voiced * envelope + np.random.default_rng(0).normal(0, 0.01, t.size)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from lipsync_tool.media import find_ffmpeg

    d = tmp_path_factory.mktemp("w2l-inputs")
    shutil.copyfile(PORTRAIT, d / "face.jpg")
    write_speech_wav(d / "audio.wav", AUDIO_SECONDS)
    ff = find_ffmpeg()
    cmd = [ff.path, "-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-i", str(PORTRAIT), "-t", "1", "-r", "25"]
    cmd += ["-vf", "scale=256:256", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(d / "face.mp4")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    black = "+".join(f"eq(n,{n})" for n in BLANK)
    cmd = [ff.path, "-hide_banner", "-loglevel", "error", "-y", "-i", str(d / "face.mp4"), "-vf", f"drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='{black}'"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", str(d / "blank.mp4")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    out = (Path(WEIGHTS) if WEIGHTS else tmp_path_factory.mktemp("upstream-weights")) / "wav2lip"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "registry.toml").exists():
        cmd = [ENGINE_PY, str(MAKE_WEIGHTS), "wav2lip", "--repo", WAV2LIP, "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=out.parent, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def trusted(weights: Path) -> list[str]:
    return [str(weights / "wav2lip_gan.pth"), str(weights / "s3fd.pth")]


def job_root(root: Path, inputs: Path, weights: Path, restorer: Path | None = None) -> Path:
    """A run's tree as the pipeline lays it out: root/inputs (staged) and root/work (the link farm);
    with *restorer*, GFPGAN's weights where --wav2lip-quality enhanced reads them."""
    (root / "inputs").mkdir(parents=True)
    for f in inputs.iterdir():
        shutil.copyfile(f, root / "inputs" / f.name)
    links = {CHECKPOINT: weights / "wav2lip_gan.pth", S3FD: weights / "s3fd.pth"}
    if restorer is not None:
        links.update({f"gfpgan/weights/{name}": restorer / name for name in RESTORER})
    build_link_farm(Path(WAV2LIP), root / "work", "inference.py", links)
    return root


def argv(face: str, *extra: str) -> list[str]:
    """Upstream's argv as the subprocess runner builds it (batches of 8, so a job streams several)."""
    return [
        "--checkpoint_path", CHECKPOINT,
        "--face", f"lipsync_inputs/{face}",
        "--audio", "lipsync_inputs/audio.wav",
        "--outfile", "results/result.mp4",
        "--fps", "25",
        "--pads", "0", "10", "0", "0",
        "--face_det_batch_size", "16",
        "--wav2lip_batch_size", "8",
        "--resize_factor", "1",
        *extra,
    ]  # fmt: skip


def job(
    root: Path, args: list[str], *, video: bool = False, preprocess: dict | None = None, batch_size: int | None = None, fp16: bool = False, options: dict | None = None
) -> dict:
    face = root / "inputs" / (Path(args[args.index("--face") + 1]).name if "--face" in args else "face.jpg")
    return {
        "argv": args,
        "cwd": str(root / "work"),
        "face": str(face),
        "audio": str(root / "inputs" / "audio.wav"),
        "face_is_video": video,
        "fps": 25.0,
        "device": "cpu",
        "seed": 0,
        "options": options or {},
        "batch_size": batch_size,
        "fp16": fp16,
        "preprocess": preprocess,
    }


@contextlib.contextmanager
def worker(tmp: Path, inputs: Path, weights: Path, adapter: Path = ADAPTER, restorer: Path | None = None):
    """A worker over its own link farm; yields (worker, a function making a fresh job root)."""
    workdir = job_root(tmp / "worker", inputs, weights, restorer) / "work"
    roots = iter(range(1000))

    def new_root() -> Path:
        return job_root(tmp / f"job{next(roots)}", inputs, weights, restorer)

    w = Worker(adapter, workdir, python=ENGINE_PY, log=tmp / "worker.log", seed=0, trusted=trusted(weights), extra_env={"CUDA_VISIBLE_DEVICES": ""})
    try:
        assert w.ready["type"] == "ready"
        yield w, new_root
    finally:
        assert w.close() == 0, (tmp / "worker.log").read_text(errors="replace")[-4000:]


def run_upstream(root: Path, weights: Path, args: list[str]) -> np.ndarray:
    """Upstream's inference.py as a subprocess run gets it, plus the capture shim: the frames it wrote."""
    capture = root / "captured.npy"
    env = dict(os.environ)
    env.update(compat_env(str(CAPTURE_SITE), seed=0, trusted=trusted(weights), url_map={}))
    env.update({"LIPSYNC_TOOL_CAPTURE_FRAMES": str(capture), "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
    proc = subprocess.run([ENGINE_PY, "inference.py", *args], cwd=root / "work", env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (root / "work" / "results" / "result.mp4").stat().st_size > 0  # upstream's own mux ran
    return np.load(capture)


def mel_chunk_count(seconds: float, fps: float = 25.0) -> int:
    """How many frames upstream renders for *seconds* of 16 kHz audio (hop 200, windows of 16 mel frames)."""
    mel_frames = 1 + int(seconds * 16000) // 200
    return next(i + 1 for i in range(10_000) if int(i * 80.0 / fps) + 16 > mel_frames)


def rendered(result) -> np.ndarray:
    assert result.error is None, result.error
    assert result.done is not None and result.video is not None
    frames = result.array()
    assert result.done["frames"] == len(frames)
    return frames


# -- (a) the worker's frames are upstream's ------------------------------------------------------


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_frames_identical_to_upstream_subprocess(inputs, weights, tmp_path, video):
    args = argv("face.mp4", *VIDEO_BOX) if video else argv("face.jpg", *IMAGE_BOX)
    reference = run_upstream(job_root(tmp_path / "subprocess", inputs, weights), weights, args)
    with worker(tmp_path, inputs, weights) as (w, new_root):
        result = w.job(job(new_root(), args, video=video))
    frames = rendered(result)
    assert len(frames) == len(reference) == mel_chunk_count(AUDIO_SECONDS)
    assert frames.shape == reference.shape
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference, strict=True))
    assert result.video["fps"] == 25.0 and (result.video["width"], result.video["height"]) == ((256, 256) if video else (512, 512))
    assert result.notes["models"]["loaded"] is True
    assert sum(m["type"] == "frames" for m in result.messages) == math.ceil(len(frames) / 8)  # one message per batch


# -- (b) the model stays loaded ------------------------------------------------------------------


def test_two_jobs_in_one_worker_reuse_the_model(inputs, weights, tmp_path):
    args = argv("face.jpg", *IMAGE_BOX)
    with worker(tmp_path, inputs, weights) as (w, new_root):
        first = w.job(job(new_root(), args))
        second = w.job(job(new_root(), args))
        third = w.job(job(new_root(), args, batch_size=5))
    assert first.notes["models"]["loaded"] is True and second.notes["models"]["loaded"] is False
    assert np.array_equal(rendered(first), rendered(second))
    # ctx.job["batch_size"] overrides --wav2lip_batch_size
    n = len(rendered(third))
    assert n == len(rendered(first)) and third.done["info"]["batch_size"] == 5
    assert sum(m["type"] == "frames" for m in third.messages) == math.ceil(n / 5)
    assert "detector" not in first.notes  # --box: upstream never builds s3fd


# -- (c) the preprocessing cache ---------------------------------------------------------------


def test_preprocess_cache_hit_gives_the_frames_of_the_miss(inputs, weights, tmp_path):
    stub = tmp_path / "stub_adapter.py"
    stub.write_text(STUB_ADAPTER.format(adapter=str(ADAPTER), detector="StubDetector"))
    args = argv("face.mp4")  # no --box: upstream's face_detect runs (with the stub detector)
    cache = tmp_path / "preprocess"
    with worker(tmp_path / "stub", inputs, weights, adapter=stub) as (w, new_root):
        miss = w.job(job(new_root(), args, video=True, preprocess={"dir": str(cache), "hit": False}))
        again = w.job(job(new_root(), args, video=True, preprocess={"dir": str(tmp_path / "other"), "hit": False}))
    assert miss.notes["preprocess"] == {"hit": False, "frames": VIDEO_FRAMES}
    assert miss.notes["detector"]["loaded"] is True and again.notes["detector"]["loaded"] is False  # built once per worker
    boxes = json.loads((cache / "boxes.json").read_text())["boxes"]
    assert len(boxes) == VIDEO_FRAMES and len({tuple(b) for b in boxes}) > 1  # per frame, smoothed by upstream
    assert all(0 <= y1 < y2 <= 256 and 0 <= x1 < x2 <= 256 for y1, y2, x1, x2 in boxes)
    # The real adapter (its s3fd has random weights and finds no face) renders the hit without a detector.
    with worker(tmp_path / "real", inputs, weights) as (w, new_root):
        hit = w.job(job(new_root(), args, video=True, preprocess={"dir": str(cache), "hit": True}))
    assert hit.notes["preprocess"] == {"hit": True, "frames": VIDEO_FRAMES}
    assert "detector" not in hit.notes
    assert np.array_equal(rendered(hit), rendered(miss))
    assert np.array_equal(rendered(again), rendered(miss))


def test_preprocess_cache_skipped_with_box(inputs, weights, tmp_path):
    with worker(tmp_path, inputs, weights) as (w, new_root):
        result = w.job(job(new_root(), argv("face.jpg", *IMAGE_BOX), preprocess={"dir": str(tmp_path / "pre"), "hit": False}))
    rendered(result)
    assert result.notes["preprocess"] == {"hit": False, "skipped": "box"}
    assert not (tmp_path / "pre" / "boxes.json").exists()


# -- (d) a failing job does not poison the worker ------------------------------------------------


def test_face_not_detected_then_the_next_job_works(inputs, weights, tmp_path):
    from lipsync_tool.engines.base import Workspace
    from lipsync_tool.engines.wav2lip import Wav2Lip
    from lipsync_tool.errors import FaceNotFoundError

    pre = tmp_path / "pre"
    with worker(tmp_path, inputs, weights) as (w, new_root):
        failed_root = new_root()
        failed = w.job(job(failed_root, argv("face.jpg"), preprocess={"dir": str(pre), "hit": False}))
        failed_again = w.job(job(new_root(), argv("face.jpg")))
        fp16 = w.job(job(new_root(), argv("face.jpg", *IMAGE_BOX), fp16=True))
        refused = w.job(job(new_root(), ["--no-such-option"]))  # argparse exits; the worker must not
        ok = w.job(job(new_root(), argv("face.jpg", *IMAGE_BOX)))
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert failed.error is not None and failed.error["error"] == "ValueError"
    assert "Face not detected!" in failed.error["message"] and "Face not detected!" in log
    assert (failed_root / "work" / "temp" / "faulty_frame.jpg").is_file()  # upstream wrote it in the job's dir
    assert not (pre / "boxes.json").exists()
    assert failed.notes["detector"]["loaded"] is True  # the real s3fd, built through the adapter's cache ...
    assert failed_again.error is not None and "Face not detected!" in failed_again.error["message"]
    assert failed_again.notes["detector"]["loaded"] is False  # ... once per worker
    # the parent reads the worker's log as it reads a subprocess's output
    assert isinstance(Wav2Lip().translate_error(log, 1, Workspace(failed_root)), FaceNotFoundError)
    assert fp16.error is not None and fp16.error["kind"] == "usage" and "--fp16 needs a CUDA GPU" in fp16.error["message"]
    assert refused.error is not None and refused.error["kind"] == "usage"
    assert len(rendered(ok)) == mel_chunk_count(AUDIO_SECONDS)
    assert ok.notes["models"]["loaded"] is True  # the failed jobs never got as far as the model


# -- (e) --wav2lip-quality improved, and frames without a face ----------------------------------------


def read_video(path: Path) -> np.ndarray:
    import cv2

    stream = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < 1000:
        ok, frame = stream.read()
        if not ok:
            break
        frames.append(frame)
    stream.release()
    return np.stack(frames)


def test_improved_keeps_every_pixel_outside_the_mouth_mask(inputs, weights, tmp_path):
    import cv2

    from lipsync_tool.engines.workerd import blend

    args = argv("face.jpg", *IMAGE_BOX)
    improved = {"wav2lip_quality": "improved", "wav2lip_mask_size": 0.8, "wav2lip_mask_feather": 0.1}
    with worker(tmp_path, inputs, weights) as (w, new_root):
        fast = rendered(w.job(job(new_root(), args)))
        better = rendered(w.job(job(new_root(), args, options=improved)))
    source = cv2.imread(str(inputs / "face.jpg"))
    y1, y2, x1, x2 = (int(v) for v in IMAGE_BOX[1:])
    mask = blend.frame_mask(source.shape, (y1, y2, x1, x2), 0.8, 0.1)
    assert (mask > 0).sum() > 1000 and len(better) == len(fast) == mel_chunk_count(AUDIO_SECONDS)
    for b, f in zip(better, fast, strict=True):
        assert np.array_equal(b[mask == 0], source[mask == 0]), "a pixel outside the mask changed"
        assert np.array_equal(b[mask == 1], f[mask == 1])  # the mouth is upstream's paste
    assert not np.array_equal(fast[0][mask == 0], source[mask == 0])  # fast pastes the whole box


def test_frames_without_a_face_pass_through_unchanged(inputs, weights, tmp_path):
    stub = tmp_path / "blank_adapter.py"
    stub.write_text(STUB_ADAPTER.format(adapter=str(ADAPTER), detector="BlankStub"))
    args = argv("blank.mp4")
    cache = tmp_path / "preprocess"
    with worker(tmp_path / "stub", inputs, weights, adapter=stub) as (w, new_root):
        ok = w.job(job(new_root(), args, video=True, preprocess={"dir": str(cache), "hit": False}))
        better = w.job(job(new_root(), args, video=True, options={"wav2lip_quality": "improved"}))
        strict_root = new_root()
        strict = w.job(job(strict_root, args, video=True, options={"require_face_every_frame": True}))
    source = read_video(inputs / "blank.mp4")
    for result in (ok, better):
        frames = rendered(result)
        assert len(frames) == mel_chunk_count(AUDIO_SECONDS) > len(source)  # upstream cycles through the video
        assert result.notes["frames_without_face"] == {"count": 3, "first": list(BLANK)}
        for i, frame in enumerate(frames):
            assert np.array_equal(frame, source[i % len(source)]) == (i in BLANK), i
    assert json.loads((cache / "boxes.json").read_text())["faceless"] == list(BLANK)
    assert strict.error is not None and "Face not detected!" in strict.error["message"]
    assert (strict_root / "work" / "temp" / "faulty_frame.jpg").is_file()
    # The real adapter (random s3fd) renders a cache hit as the miss, blank frames included; a hit with faces required fails.
    with worker(tmp_path / "real", inputs, weights) as (w, new_root):
        hit = w.job(job(new_root(), args, video=True, preprocess={"dir": str(cache), "hit": True}))
        strict_hit = w.job(job(new_root(), args, video=True, preprocess={"dir": str(cache), "hit": True}, options={"require_face_every_frame": True}))
    assert np.array_equal(rendered(hit), rendered(ok)) and hit.notes["frames_without_face"]["count"] == 3
    assert strict_hit.error is not None and "Face not detected!" in strict_hit.error["message"]


# -- (f) --wav2lip-quality enhanced: GFPGAN on the face crop ------------------------------------------


@pytest.fixture(scope="module")
def restorer_weights(tmp_path_factory) -> Path:
    out = (Path(WEIGHTS) if WEIGHTS else tmp_path_factory.mktemp("upstream-weights")) / "restorer"
    out.mkdir(parents=True, exist_ok=True)
    if not all((out / name).is_file() for name in RESTORER):
        cmd = [ENGINE_PY, str(MAKE_WEIGHTS), "restorer", "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=out.parent, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_enhanced_restores_the_face_crop_with_gfpgan_and_keeps_every_pixel_outside_the_mask(inputs, weights, restorer_weights, tmp_path):
    import cv2

    from lipsync_tool.engines.workerd import blend

    short = tmp_path / "inputs"  # GFPGAN takes seconds a frame on the CPU: 0.4 s of speech
    shutil.copytree(inputs, short)
    write_speech_wav(short / "audio.wav", SHORT_SECONDS)
    args = argv("face.jpg", *IMAGE_BOX)
    tuning = {"wav2lip_mask_size": 0.8, "wav2lip_mask_feather": 0.1}
    with worker(tmp_path, short, weights, restorer=restorer_weights) as (w, new_root):
        improved = rendered(w.job(job(new_root(), args, options={"wav2lip_quality": "improved", **tuning})))
        first = w.job(job(new_root(), args, options={"wav2lip_quality": "enhanced", **tuning}))
        again = w.job(job(new_root(), args, options={"wav2lip_quality": "enhanced", **tuning}))
    enhanced = rendered(first)
    source = cv2.imread(str(inputs / "face.jpg"))
    y1, y2, x1, x2 = (int(v) for v in IMAGE_BOX[1:])
    mask = blend.frame_mask(source.shape, (y1, y2, x1, x2), 0.8, 0.1)
    assert len(enhanced) == len(improved) == mel_chunk_count(SHORT_SECONDS)
    for e in enhanced:
        assert np.array_equal(e[mask == 0], source[mask == 0]), "a pixel outside the mask changed"
    changed = [not np.array_equal(e[mask > 0], i[mask > 0]) for e, i in zip(enhanced, improved, strict=True)]
    assert all(changed), "GFPGAN left the mouth as improved pasted it"
    assert first.notes["restorer"] == {"name": "GFPGANv1.4", "restored": len(enhanced), "no_face_found": 0}
    assert first.notes["restorer_load"]["loaded"] is True and again.notes["restorer_load"]["loaded"] is False  # once per worker
    assert np.array_equal(rendered(again), enhanced)  # the job's seed makes GFPGAN's noise repeatable
