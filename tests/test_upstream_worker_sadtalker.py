"""Opt-in: SadTalker's warm-worker adapter against upstream's own ``inference.py``.

Skipped unless a SadTalker checkout is named::

    LIPSYNC_TOOL_UPSTREAM_SADTALKER=/work/upstream/SadTalker \\
    LIPSYNC_TOOL_UPSTREAM_PYTHON=/work/venv-upstream/bin/python \\
    LIPSYNC_TOOL_UPSTREAM_WEIGHTS=/work/upstream-weights \\
    python -m pytest -m upstream tests/test_upstream_worker_sadtalker.py

The checkpoints are random weights from ``tests/upstream/make_weights.py`` (in
a temp dir, or reused from ``LIPSYNC_TOOL_UPSTREAM_WEIGHTS/sadtalker``).  The
reference is upstream's ``inference.py`` run as a subprocess in a link farm
with the compat shims and the test-only capture shim
(``tests/upstream/capture_sadtalker``), which saves the frames upstream hands
its video writer and re-seeds just before ``Audio2Coeff.generate`` as the
worker does.  The worker is ``workerd/main.py`` with the SadTalker adapter,
driven by ``tests/worker_harness.py``, with the same argv and seed.

SadTalker renders about 10 s a frame on 2 CPU cores at size 256: the audio is
0.4 s (10 frames), and the three renders (the reference and two worker jobs)
share one worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from worker_harness import Worker

from conftest import PORTRAIT, run_ffmpeg
from lipsync_tool.engines.compat import compat_env
from lipsync_tool.workspace import build_link_farm

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

SADTALKER = os.environ.get("LIPSYNC_TOOL_UPSTREAM_SADTALKER")
ENGINE_PY = os.environ.get("LIPSYNC_TOOL_UPSTREAM_PYTHON") or sys.executable
WEIGHTS = os.environ.get("LIPSYNC_TOOL_UPSTREAM_WEIGHTS")

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(not SADTALKER, reason="set LIPSYNC_TOOL_UPSTREAM_SADTALKER to a SadTalker checkout"),
]

HERE = Path(__file__).parent
MAKE_WEIGHTS = HERE / "upstream" / "make_weights.py"
CAPTURE_SITE = HERE / "upstream" / "capture_sadtalker"
ADAPTER = HERE.parent / "lipsync_tool" / "engines" / "workerd" / "sadtalker_adapter.py"
SEED = 7
AUDIO_SECONDS = 0.4
FRAMES = 10  # 0.4 s at 25 fps
#: A render (model load, preprocessing, 10 frames) should take 2-3 minutes here.
RENDER_TIMEOUT = 1200
#: Upstream's argv for a job, as lipsync-tool builds it (no --still: the pose noise is drawn, so seeding counts).
ARGV = [
    "--driven_audio", "lipsync_inputs/audio.wav", "--source_image", "lipsync_inputs/face.png", "--checkpoint_dir", "checkpoints",
    "--result_dir", "results", "--size", "256", "--preprocess", "crop", "--expression_scale", "1", "--pose_style", "0", "--batch_size", "2", "--cpu",
]  # fmt: skip


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random-weight checkpoints, by their ``dest`` in the link farm."""
    from lipsync_tool.engines.sadtalker import SadTalker

    out = Path(WEIGHTS) / "sadtalker" if WEIGHTS else tmp_path_factory.mktemp("upstream-weights") / "sadtalker"
    out.mkdir(parents=True, exist_ok=True)
    registry = out / "registry.toml"
    if not registry.exists():
        proc = subprocess.run(
            [ENGINE_PY, str(MAKE_WEIGHTS), "sadtalker", "--repo", SADTALKER, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=out.parent,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    checkpoints = tomllib.loads(registry.read_text())["sadtalker"]["checkpoints"]
    engine = SadTalker()
    return {engine.checkpoint(name).dest: Path(unquote(urlparse(spec["urls"][0]).path)) for name, spec in checkpoints.items()}


@pytest.fixture(scope="module")
def inputs(ff, tmp_path_factory) -> dict[str, Path]:
    """A small portrait, 0.4 s of speech-like audio, and an image too small to hold a face."""
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    face = root / "face.png"
    Image.open(PORTRAIT).convert("RGB").resize((192, 192), Image.BICUBIC).save(face)
    tiny = root / "tiny.png"
    Image.open(PORTRAIT).convert("RGB").resize((16, 16), Image.BICUBIC).save(tiny)
    audio = root / "audio.wav"
    src = "sine=frequency=220:sample_rate=44100,volume='0.6+0.4*sin(2*PI*3*t)':eval=frame"
    run_ffmpeg(ff, "-f", "lavfi", "-i", src, "-t", f"{AUDIO_SECONDS}", str(audio))
    return {"face": face, "tiny": tiny, "audio": audio}


def make_farm(root: Path, weights: dict[str, Path], face: Path, audio: Path | None) -> Path:
    """A run's folder as lipsync-tool makes it: work/ (the link farm) and inputs/ (lipsync_inputs/ in work/)."""
    (root / "inputs").mkdir(parents=True)
    shutil.copyfile(face, root / "inputs" / "face.png")
    if audio is not None:
        shutil.copyfile(audio, root / "inputs" / "audio.wav")
    build_link_farm(Path(SADTALKER), root / "work", "inference.py", weights)
    return root / "work"


def engine_env(weights: dict[str, Path]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(compat_env(env.get("PYTHONPATH", ""), seed=SEED, trusted=[str(p) for p in weights.values()], url_map={}, debug=True))
    env.update({"CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="module")
def reference(weights, inputs, tmp_path_factory) -> np.ndarray:
    """The frames upstream's inference.py hands imageio.mimsave, captured by the test shim."""
    root = tmp_path_factory.mktemp("reference")
    work = make_farm(root, weights, inputs["face"], inputs["audio"])
    capture = root / "frames.npy"
    env = engine_env(weights)
    env["PYTHONPATH"] += os.pathsep + str(CAPTURE_SITE)
    env["LIPSYNC_TOOL_CAPTURE_FRAMES"] = str(capture)
    log = root / "inference.log"
    with open(log, "wb") as f:
        proc = subprocess.run([ENGINE_PY, "inference.py", *ARGV], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=RENDER_TIMEOUT, check=False)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "The generated video is named:" in text
    return np.load(capture)


@pytest.fixture(scope="module")
def worker(weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    workdir = make_farm(root, weights, PORTRAIT, None)
    extra = {"CUDA_VISIBLE_DEVICES": "", "LIPSYNC_TOOL_SHIM_DEBUG": "1"}
    w = Worker(ADAPTER, workdir, python=ENGINE_PY, log=root / "worker.log", seed=SEED, trusted=[str(p) for p in weights.values()], extra_env=extra)
    w.root = root
    w.jobs = 0
    assert w.ready["type"] == "ready"
    yield w
    assert w.close() == 0
    print((root / "worker.log").read_text(errors="replace")[-3000:])


def run_job(
    worker: Worker, weights, face: Path, audio: Path | None, *, argv=ARGV, preprocess: dict | None = None, files: dict[str, str] | None = None, **extra
):
    """One job in *worker*, in a new link farm; *files* (name → text) are written into its working dir first, as ``Command.files`` are."""
    worker.jobs += 1
    work = make_farm(worker.root / f"job{worker.jobs}", weights, face, audio)
    for name, text in (files or {}).items():
        (work / name).write_text(text)
    job = {
        "argv": list(argv), "cwd": str(work), "face": str(work / "lipsync_inputs" / "face.png"), "audio": str(work / "lipsync_inputs" / "audio.wav"),
        "face_is_video": False, "fps": 25.0, "device": "cpu", "seed": SEED, "options": {}, "batch_size": None, "fp16": False, "preprocess": preprocess,
    }  # fmt: skip
    job.update(extra)
    return worker.job(job, timeout=RENDER_TIMEOUT)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("preprocess-cache") / "entry"


@pytest.fixture(scope="module")
def first_job(worker, weights, inputs, cache_dir):
    """The worker's first job: models loaded, preprocessing computed and written to the cache."""
    result = run_job(worker, weights, inputs["face"], inputs["audio"], preprocess={"dir": str(cache_dir), "hit": False})
    assert result.error is None, (result.error, (worker.root / "worker.log").read_text(errors="replace")[-4000:])
    return result


# -- tests ------------------------------------------------------------------------------------------


def test_crop_frames_identical_to_upstream(reference, first_job):
    frames = first_job.array()
    print(json.dumps({"reference": list(reference.shape), "worker": list(frames.shape), "done": first_job.done}))
    assert first_job.video["pix_fmt"] == "rgb24" and first_job.video["fps"] == 25.0
    assert reference.shape[0] == FRAMES
    assert frames.shape == reference.shape
    for i, (ours, theirs) in enumerate(zip(frames, reference)):
        assert np.array_equal(ours, theirs), f"frame {i} differs (max abs diff {np.abs(ours.astype(int) - theirs).max()})"
    assert first_job.notes["models"]["loaded"] is True
    assert first_job.notes["preprocess"] == {"hit": False}
    assert first_job.done["frames"] == FRAMES
    progress = [m for m in first_job.messages if m["type"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == FRAMES // 2


def test_failed_jobs_then_a_cached_job_in_the_same_worker(worker, weights, inputs, first_job, cache_dir):
    """Failing jobs leave the worker serving; the next job hits the preprocessing cache and reuses the models."""
    assert sorted(p.name for p in cache_dir.iterdir()) == ["crop_info.json", "source.mat", "source.png"]
    # the random detector finds no face in a 16 px image: upstream raises a string (a TypeError)
    no_face = run_job(worker, weights, inputs["tiny"], inputs["audio"], preprocess=None)
    assert no_face.error is not None and no_face.error["error"] == "TypeError", no_face.error
    missing_audio = run_job(worker, weights, inputs["face"], None, preprocess={"dir": str(cache_dir), "hit": True})
    assert missing_audio.error is not None and missing_audio.error["error"] != "JobFailed", missing_audio.error
    fp16 = run_job(worker, weights, inputs["face"], inputs["audio"], fp16=True)
    assert fp16.error is not None and (fp16.error["error"], fp16.error["kind"], fp16.error["message"]) == ("JobFailed", "usage", "--fp16 needs a CUDA GPU")
    bad_argv = run_job(worker, weights, inputs["face"], inputs["audio"], argv=[*ARGV, "--preprocess", "sideways"])
    assert bad_argv.error is not None and bad_argv.error["kind"] == "usage"
    log = (worker.root / "worker.log").read_text(errors="replace")
    assert "exceptions must derive from BaseException" in log

    again = run_job(worker, weights, inputs["face"], inputs["audio"], preprocess={"dir": str(cache_dir), "hit": True})
    assert again.error is None, (again.error, (worker.root / "worker.log").read_text(errors="replace")[-4000:])
    assert again.notes["models"]["loaded"] is False
    assert again.notes["preprocess"] == {"hit": True}
    first, second = first_job.array(), again.array()
    assert second.shape == first.shape
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert worker.proc.poll() is None
