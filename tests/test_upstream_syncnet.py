"""Opt-in: ``lipsync-tool score`` against the reference SyncNet scorer, same random weights, on the CPU.

The reference is joonson/syncnet_python run with Wav2Lip's
``evaluation/scores_LSE`` scripts, as ``calculate_scores_real_videos.sh``
runs them (``tests/upstream/syncnet_reference.py`` copies both checkouts into
a temp folder at run time and runs them there).  Skipped unless both
checkouts are named::

    LIPSYNC_TOOL_UPSTREAM_SYNCNET=/work/upstream/syncnet_python \\
    LIPSYNC_TOOL_UPSTREAM_WAV2LIP=/work/upstream/Wav2Lip \\
    LIPSYNC_TOOL_UPSTREAM_SYNCNET_PYTHON=/work/venv-syncnet/bin/python \\
    python -m pytest -m upstream tests/test_upstream_syncnet.py

``LIPSYNC_TOOL_UPSTREAM_SYNCNET_PYTHON`` (default ``/work/venv-syncnet/bin/python``)
runs the reference: torch, numpy, scipy, OpenCV, python_speech_features and
scenedetect 0.5.x.  The weights are random, made once per session from
syncnet_python's own classes by ``tests/upstream/make_weights.py syncnet``
(or reused from ``LIPSYNC_TOOL_UPSTREAM_WEIGHTS/syncnet``), with S3FD rigged
to find the one "face" of ``make_face_clip()`` (``tests/syncnet_rig.py``);
lipsync-tool gets them through a registry override of ``file://`` URLs.

* On a 224x224, 25 fps face track (the reference's own crop of the clip) the
  figures must equal the reference's within 1e-3, with the same AV offset.
* End to end on the 5 s, 640x480 clip: within 2 %, the same AV offset.

Each runs with the reference's interpreter and with this one as ``--python``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from syncnet_rig import make_face_clip
from upstream.syncnet_reference import DEFAULT_PYTHON, run_reference

HERE = Path(__file__).parent
MAKE_WEIGHTS = HERE / "upstream" / "make_weights.py"
SYNCNET = os.environ.get("LIPSYNC_TOOL_UPSTREAM_SYNCNET")
WAV2LIP = os.environ.get("LIPSYNC_TOOL_UPSTREAM_WAV2LIP")
REF_PY = os.environ.get("LIPSYNC_TOOL_UPSTREAM_SYNCNET_PYTHON") or DEFAULT_PYTHON
WEIGHTS = os.environ.get("LIPSYNC_TOOL_UPSTREAM_WEIGHTS")

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        not (SYNCNET and WAV2LIP),
        reason="set LIPSYNC_TOOL_UPSTREAM_SYNCNET to a syncnet_python checkout and LIPSYNC_TOOL_UPSTREAM_WAV2LIP to a Wav2Lip checkout",
    ),
    pytest.mark.skipif(
        bool(SYNCNET and WAV2LIP) and not os.access(REF_PY, os.X_OK),
        reason=f"no reference interpreter at {REF_PY}: set LIPSYNC_TOOL_UPSTREAM_SYNCNET_PYTHON",
    ),
]

#: --python for lipsync-tool's scorer: the reference's interpreter, and this one.
PYTHONS = pytest.mark.parametrize("py", [REF_PY, sys.executable], ids=["reference-python", "this-python"])


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """The folder with syncnet_v2.model, sfd_face.pth and registry.toml (made once)."""
    out = Path(WEIGHTS) / "syncnet" if WEIGHTS else tmp_path_factory.mktemp("syncnet-weights")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "registry.toml").exists():
        argv = [REF_PY, str(MAKE_WEIGHTS), "syncnet", "--repo", SYNCNET, "--out", str(out)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=out, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="session")
def face_clip(ff, tmp_path_factory) -> Path:
    return make_face_clip(tmp_path_factory.mktemp("syncnet-clip") / "face.mp4", ffmpeg=ff.path)


@pytest.fixture(scope="session")
def reference_e2e(face_clip, weights, ff, tmp_path_factory) -> tuple[dict, Path]:
    """The reference's figures on the whole clip, and its 224x224 face track (kept)."""
    work = tmp_path_factory.mktemp("syncnet-ref-e2e")
    ref = run_reference(face_clip, weights, work, ffmpeg=ff.path, syncnet_repo=Path(SYNCNET), wav2lip_repo=Path(WAV2LIP))
    assert ref["tracks"] == 1, ref
    crop = work / "crop.avi"
    shutil.copyfile(ref["per_track"][0]["crop"], crop)
    print("reference end to end:", json.dumps(ref))
    return ref, crop


@pytest.fixture(scope="session")
def reference_crop(reference_e2e, weights, ff, tmp_path_factory) -> tuple[dict, Path]:
    """The reference's second stage alone on that face track."""
    _, crop = reference_e2e
    work = tmp_path_factory.mktemp("syncnet-ref-crop")
    ref = run_reference(crop, weights, work, face_crop=True, ffmpeg=ff.path, syncnet_repo=Path(SYNCNET), wav2lip_repo=Path(WAV2LIP))
    print("reference face crop:", json.dumps(ref))
    return ref, crop


def score(video: Path, weights: Path, tmp_path: Path, py: str, *extra: str) -> dict:
    """``lipsync-tool score … --json``: its one result."""
    argv = [sys.executable, "-m", "lipsync_tool", "score", *extra, str(video), "--json", "--device", "cpu"]
    argv += ["--registry", str(weights / "registry.toml"), "--cache-dir", str(tmp_path / "cache"), "--python", py]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["scorer"] == "syncnet"
    (result,) = doc["results"]
    print("lipsync-tool:", json.dumps({k: result.get(k) for k in ("mode", "lse_d", "lse_c", "av_offset", "score_note", "tracks")}))
    return result


def _figures(result: dict) -> tuple[float, float, int]:
    assert result["score_note"] is None, result["score_note"]
    lse_d, lse_c, offset = result["lse_d"], result["lse_c"], result["av_offset"]
    assert isinstance(lse_d, float) and isinstance(lse_c, float) and isinstance(offset, int), result
    return lse_d, lse_c, offset


@PYTHONS
def test_face_crop_equals_the_reference(reference_crop, weights, tmp_path, py):
    ref, crop = reference_crop
    result = score(crop, weights, tmp_path, py, "--face-crop")
    assert result["mode"] == "face_crop"
    lse_d, lse_c, offset = _figures(result)
    assert abs(lse_d - ref["lse_d"]) <= 1e-3, (lse_d, ref)
    assert abs(lse_c - ref["lse_c"]) <= 1e-3, (lse_c, ref)
    assert offset == ref["av_offset"], (offset, ref)


@PYTHONS
def test_end_to_end_agrees_with_the_reference(reference_e2e, face_clip, weights, tmp_path, py):
    ref, _ = reference_e2e
    result = score(face_clip, weights, tmp_path, py)
    assert result["mode"] == "full"
    assert len(result["tracks"]) == ref["tracks"] == 1, result["tracks"]
    lse_d, lse_c, offset = _figures(result)
    assert abs(lse_d - ref["lse_d"]) <= 0.02 * abs(ref["lse_d"]), (lse_d, ref)
    assert abs(lse_c - ref["lse_c"]) <= 0.02 * abs(ref["lse_c"]), (lse_c, ref)
    assert offset == ref["av_offset"], (offset, ref)
