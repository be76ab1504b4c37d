"""Opt-in: ``--face-index`` on SadTalker's real cropper, through the warm worker.

Skipped unless a SadTalker checkout is named (the rigs of ``tests/test_upstream_worker_sadtalker.py``)::

    LIPSYNC_TOOL_UPSTREAM_SADTALKER=/work/upstream/SadTalker \\
    LIPSYNC_TOOL_UPSTREAM_PYTHON=/work/venv-upstream/bin/python \\
    LIPSYNC_TOOL_UPSTREAM_WEIGHTS=/work/upstream-weights \\
    python -m pytest -m upstream tests/test_upstream_face_index_sadtalker.py

The hint is the parent's ``face_hint.json`` (``face_hint.FaceHint``, as ``advisor.prejob.with_face_hint`` puts it
among ``Command.files``) in the job's working dir.  The random RetinaFace of ``tests/upstream/make_weights.py``
finds a 32 px "face" at every anchor two or more 8 px cells from the border (hundreds, thinned by upstream's
NMS), and upstream's cropper takes the first of them; steered by the hint, it must crop around the hinted box
instead, and ``paste_pic`` (``--preprocess full``) must change only that region of the portrait.  A hint in a
corner, where no anchor scores, must fail the job with ``face_hint.NOT_MATCHED`` rather than animate another face.

SadTalker renders 10-20 s a frame on 2 CPU cores at size 256: two renders of 0.4 s (10 frames) in one worker, and two
jobs that fail before rendering; about 8 minutes in all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_upstream_worker_sadtalker import ARGV, SADTALKER, inputs, run_job, weights, worker  # noqa: F401  (fixtures)

from conftest import PORTRAIT
from lipsync_tool.engines.workerd import face_hint as fh

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(not SADTALKER, reason="set LIPSYNC_TOOL_UPSTREAM_SADTALKER to a SadTalker checkout"),
]

#: The portrait, stretched wide so that the crops of both faces (about 150 px around a 32 px face) fit inside it:
#: upstream's full paste fails (a cv2.error in seamlessClone) when a crop reaches the right or bottom edge.
FRAME = (384, 256)
#: Hints centred on 32 px anchors (centres at 8 j + 4), so that a kept detection (upstream's NMS keeps one of each
#: cluster of overlapping anchors) holds the hint's centre: two faces, left and right.
LEFT = (80.0, 104.0, 120.0, 144.0)
RIGHT = (264.0, 104.0, 304.0, 144.0)
#: No anchor within two cells of the border scores, so no detection's centre lies in this box.
CORNER = (0.0, 0.0, 16.0, 16.0)


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("portrait") / "face.png"
    Image.open(PORTRAIT).convert("RGB").resize(FRAME, Image.BICUBIC).save(path)
    return path


def _argv(preprocess: str) -> list[str]:
    argv = list(ARGV)
    argv[argv.index("--preprocess") + 1] = preprocess
    return argv


def _hint_files(index: int, box) -> dict[str, str]:
    hint = fh.FaceHint(index, tuple(box), FRAME, f"chosen with --face-index {index}")
    return {fh.FILE: json.dumps(hint.to_json())}


def _pasted_region(crop_info) -> tuple[int, int, int, int]:
    """``x1 y1 x2 y2`` of the portrait that upstream's ``paste_pic`` replaces (its ``ox1 ox2 oy1 oy2``, not extended)."""
    _, (clx, cly, _, _), (lx, ly, rx, ry) = crop_info
    return clx + int(lx), cly + int(ly), clx + int(rx), cly + int(ry)


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


@pytest.mark.parametrize("preprocess", ["crop", "full"])
def test_a_hint_no_detection_matches_fails_the_job(worker, weights, inputs, portrait, preprocess):  # noqa: F811
    result = run_job(worker, weights, portrait, inputs["audio"], argv=_argv(preprocess), files=_hint_files(2, CORNER))
    assert result.error is not None, "a hint that matches no detection rendered anyway"
    assert result.error["kind"] == fh.HintNotMatched.kind and result.error["error"] == "HintNotMatched", result.error
    assert fh.NOT_MATCHED in result.error["message"] and "face 2" in result.error["message"], result.error
    assert "SadTalker's RetinaFace" in result.error["message"]
    assert worker.proc.poll() is None  # the worker keeps serving
    assert os.path.exists(worker.root / "worker.log")


def test_the_hinted_face_is_the_one_sadtalker_crops_and_pastes(worker, weights, inputs, portrait, tmp_path):  # noqa: F811
    from PIL import Image

    source = np.asarray(Image.open(portrait).convert("RGB"))
    assert source.shape[:2] == FRAME[::-1]
    regions = {}
    for index, box in enumerate((LEFT, RIGHT)):
        cache = tmp_path / f"pre{index}"
        result = run_job(
            worker, weights, portrait, inputs["audio"], argv=_argv("full"), preprocess={"dir": str(cache), "hit": False}, files=_hint_files(index, box)
        )
        assert result.error is None, (result.error, (worker.root / "worker.log").read_text(errors="replace")[-4000:])
        meta = json.loads((cache / "crop_info.json").read_text())
        region = regions[index] = _pasted_region(meta["crop_info"])
        print(json.dumps({"hint": box, "crop_info": meta["crop_info"], "region": region}))
        x1, y1, x2, y2 = region
        cx, cy = _centre(box)
        assert x1 < cx < x2 and y1 < cy < y2, f"the crop {region} does not hold face {index}'s centre {(cx, cy)}"
        rx, ry = _centre(region)
        assert abs(rx - cx) <= 24 and abs(ry - cy) <= 24, f"the crop {region} is not centred on face {index} {box}"
        frames = result.array()
        assert frames.shape[1:3] == source.shape[:2]  # full: the whole portrait comes back
        for i, frame in enumerate(frames):
            changed = np.any(frame != source, axis=2)
            assert changed[y1:y2, x1:x2].any(), f"frame {i}: face {index} was not animated"
            changed[max(0, y1 - 1) : y2 + 1, max(0, x1 - 1) : x2 + 1] = False  # seamlessClone's centre rounds by a pixel
            assert not changed.any(), f"frame {i}: a pixel outside the crop of face {index} changed"
    assert regions[0] != regions[1]
    assert regions[0][2] < _centre(RIGHT)[0] and regions[1][0] > _centre(LEFT)[0], f"the two crops {regions} are not of the two faces"
