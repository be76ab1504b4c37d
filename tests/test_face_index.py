"""``--face-index`` (issue 16, item 3): the advisor's chosen face goes to the engine as a face hint, whose detector
then returns only that face.  The hint's maths (workerd/face_hint.py), the engines' use of it, the preprocessing
cache's key, the refusals, and the fake engine end to end (its detector is "the hint's box" when there is one)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import advisor_rig as rig
import numpy as np
import pytest

from lipsync_tool.engines.workerd import face_hint as fh
from lipsync_tool.errors import UsageError

FAST = ("--x264-preset", "ultrafast", "--target-height", "240")
#: Two faces the advisor's rig detects: (x, y, size) on a 320x240 still; face 0 (left) is the larger.
FACES = [(80, 120, 100), (240, 120, 70)]


# -- the hint's maths ---------------------------------------------------------------------------


def test_iou_and_the_best_match():
    assert fh.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert fh.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert fh.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    boxes = [(0, 0, 50, 50), (100, 0, 150, 50)]
    assert fh.best_match(boxes, (98, 2, 152, 48)) == (1, pytest.approx(fh.iou(boxes[1], (98, 2, 152, 48))))
    assert fh.best_match(boxes, (200, 0, 250, 50))[0] is None
    # a tighter detection inside the hinted box (another detector's cut): each holds the other's centre
    assert fh.best_match([(110, 10, 130, 40)], (100, 0, 150, 50))[0] == 0
    assert fh.best_match([], (0, 0, 1, 1)) == (None, 0.0)


def test_the_hint_maps_into_the_frame_the_detector_sees():
    box = (100, 60, 300, 260)
    assert fh.into_frame(box) == (100, 60, 300, 260)
    assert fh.into_frame(box, resize_factor=2) == (50, 30, 150, 130)  # Wav2Lip's --resize_factor 2 halves a video's frames
    assert fh.into_frame(box, resize_factor=2, crop_top_left=(10, 20)) == (30, 20, 130, 120)  # then --crop moves the origin
    with pytest.raises(ValueError):
        fh.into_frame(box, resize_factor=0)
    assert fh.scaled(box, (400, 300), (256, 256)) == pytest.approx((64, 51.2, 192, 221.8667), abs=1e-3)


def test_the_padded_box_is_upstreams_box_order_with_pads_and_clipped():
    # x1 y1 x2 y2 → top bottom left right, pads top bottom left right (Wav2Lip's default 0 10 0 0)
    assert fh.padded_box((100.7, 60.2, 300.9, 260.5), (0, 10, 0, 0), (640, 480)) == (60, 270, 100, 300)
    assert fh.padded_box((-5, 2, 630, 475), (5, 10, 8, 20), (640, 480)) == (0, 480, 0, 640)


def test_a_hint_that_matches_nothing_says_which_face():
    hint = fh.FaceHint(1, (200, 50, 260, 110), (320, 240), "chosen with --face-index 1")
    assert hint.choose([(10, 10, 80, 80), (205, 55, 262, 112)]) == 1
    with pytest.raises(fh.HintNotMatched) as info:
        hint.choose([(10, 10, 80, 80)], what="the test's detections")
    message = str(info.value)
    assert fh.NOT_MATCHED in message and message.startswith("face 1 (chosen with --face-index 1)") and "the test's detections" in message
    assert not isinstance(info.value, RuntimeError)  # upstream Wav2Lip retries a RuntimeError of its detector
    assert fh.FaceHint.from_json(json.loads(json.dumps(hint.to_json()))) == hint
    with pytest.raises(ValueError, match="version"):
        fh.FaceHint.from_json({**hint.to_json(), "version": 99})


# -- the adapters' wrappers (upstream's objects faked: their interfaces only) ---------------------------------------


class _S3FD:
    """face_detection.FaceAlignment's ``face_detector``: ``detect_from_batch`` → per image, rows x1 y1 x2 y2 score."""

    def __init__(self, rows):
        self.rows, self.seen = rows, []

    def detect_from_batch(self, images):
        self.seen.append(images.shape)
        return [np.array(self.rows, dtype=float).reshape(-1, 5) for _ in images]


def test_wav2lips_detector_answers_the_hinted_face_not_the_first():
    faces = [[10.4, 20.2, 90.8, 110.1, 0.99], [200.0, 30.0, 260.0, 100.0, 0.98]]
    detector = type("FA", (), {"face_detector": _S3FD(faces)})()
    hint = fh.FaceHint(1, (198, 28, 262, 102), (320, 240))
    wrapped = fh.HintedBatchDetector(detector, hint, fh.into_frame(hint.box))
    images = np.zeros((2, 240, 320, 3), dtype=np.uint8)
    assert wrapped.get_detections_for_batch(images) == [(200, 30, 260, 100)] * 2
    assert wrapped.face_detector is detector.face_detector  # everything else is the detector's own
    nothing = fh.HintedBatchDetector(type("FA", (), {"face_detector": _S3FD([])})(), hint, hint.box)
    assert nothing.get_detections_for_batch(images) == [None, None]  # no face at all: upstream's own error follows
    other = fh.HintedBatchDetector(type("FA", (), {"face_detector": _S3FD(faces[:1])})(), hint, hint.box)
    with pytest.raises(fh.HintNotMatched, match="face 1"):
        other.get_detections_for_batch(images)


def _write_hint(folder: Path, hint: fh.FaceHint) -> None:
    (folder / fh.FILE).write_text(json.dumps(hint.to_json()))


def test_the_wav2lip_job_runs_the_detector_instead_of_the_hints_box(tmp_path):
    hint = fh.FaceHint(0, (40, 50, 140, 160), (320, 240))
    args = argparse.Namespace(box=list(fh.padded_box(hint.box, (0, 10, 0, 0), hint.frame)), pads=[0, 10, 0, 0], resize_factor=1, crop=[0, -1, 0, -1])
    assert fh.for_wav2lip(str(tmp_path), args, True) is None  # no hint written: nothing changes
    _write_hint(tmp_path, hint)
    wrap = fh.for_wav2lip(str(tmp_path), args, True)
    assert args.box == [-1, -1, -1, -1] and isinstance(wrap(object()), fh.HintedBatchDetector)
    args.box = [1, 2, 3, 4]  # a box that is not the hint's: refused, never silently replaced
    with pytest.raises(ValueError, match="not its face hint"):
        fh.for_wav2lip(str(tmp_path), args, True)
    with pytest.raises(ValueError, match="video"):
        fh.for_wav2lip(str(tmp_path), args, False)


class _RetinaFace:
    def __init__(self, dets):
        self.dets = dets

    def detect_faces(self, image, threshold):
        return np.array(self.dets, dtype=float).reshape(-1, 15)


class _Cropper:
    """SadTalker's Preprocesser: ``get_landmark`` takes the first of ``predictor.det_net.detect_faces``."""

    def __init__(self, dets):
        self.predictor = argparse.Namespace(det_net=_RetinaFace(dets))

    def get_landmark(self, img_np):
        dets = self.predictor.det_net.detect_faces(img_np, 0.97)
        return None if len(dets) == 0 else tuple(dets[0][:4])


def test_sadtalkers_cropper_sees_only_the_hinted_face_while_it_crops(tmp_path):
    faces = [[10, 20, 90, 110, 0.99] + [0] * 10, [200, 30, 260, 100, 0.98] + [0] * 10]
    extract = argparse.Namespace(propress=_Cropper(faces))
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    with fh.for_sadtalker(str(tmp_path), extract, "full") as hint:
        assert hint is None and extract.propress.get_landmark(image) == (10, 20, 90, 110)
    _write_hint(tmp_path, fh.FaceHint(1, (195, 25, 265, 110), (320, 240)))
    with fh.for_sadtalker(str(tmp_path), extract, "full") as hint:
        assert hint.index == 1 and extract.propress.get_landmark(image) == (200, 30, 260, 100)
        assert isinstance(extract.propress.predictor.det_net, _RetinaFace)  # steered only inside get_landmark
    assert extract.propress.get_landmark(image) == (10, 20, 90, 110)  # restored after the crop
    with pytest.raises(ValueError, match="resize animates the whole image"), fh.for_sadtalker(str(tmp_path), extract, "resize"):
        pass
    only_other = argparse.Namespace(propress=_Cropper(faces[:1]))
    with pytest.raises(fh.HintNotMatched, match="face 1"), fh.for_sadtalker(str(tmp_path), only_other, "crop"):
        only_other.propress.get_landmark(image)


# -- engines, runners, the cache key ------------------------------------------------------------


def _job(hint, face_is_video=False):
    from lipsync_tool.engines.base import Device, Job

    return Job(Path("/r/inputs/face.png"), Path("/r/inputs/audio.wav"), face_is_video, 25.0, Device("cpu"), "py", face_hint=hint)


def test_wav2lips_command_carries_the_hint_as_upstreams_box():
    from lipsync_tool.engines.base import Workspace
    from lipsync_tool.engines.wav2lip import Wav2Lip, Wav2LipOptions

    engine, ws = Wav2Lip(), Workspace(Path("/r"))
    plain = engine.build_command(_job(None), Wav2LipOptions(), ws).argv
    assert "--box" not in plain
    hint = fh.FaceHint(1, (200.4, 50.6, 260.2, 110.9), (320, 240))
    argv = engine.build_command(_job(hint), Wav2LipOptions(wav2lip_pads=(2, 10, 3, 4)), ws).argv
    assert argv[argv.index("--box") + 1 : argv.index("--box") + 5] == ["48", "120", "197", "264"]  # top bottom left right, padded
    assert "subprocess" in engine.face_hint_runners and "worker" in engine.face_hint_runners


class _Info:
    def __init__(self):
        self.warnings, self.advice = [], {"face_hint": {"used": True}}


def test_a_runner_that_cannot_steer_the_engine_refuses_the_flag_and_drops_the_advisors_choice():
    from lipsync_tool.advisor.prejob import settle_face_hint
    from lipsync_tool.engines.base import Engine
    from lipsync_tool.engines.sadtalker import SadTalker

    hint = fh.FaceHint(1, (0, 0, 10, 10), (20, 20))
    assert settle_face_hint(SadTalker(), "worker", hint, explicit=True, info=_Info()) is hint
    with pytest.raises(UsageError, match="cannot be told which face to animate with --runner subprocess") as err:
        settle_face_hint(SadTalker(), "subprocess", hint, explicit=True, info=_Info())
    assert "Drop --runner subprocess" in err.value.hint
    info = _Info()
    assert settle_face_hint(SadTalker(), "subprocess", hint, explicit=False, info=info) is None
    assert info.advice["face_hint"]["used"] is False and "may not be face 1" in info.warnings[0]
    assert Engine.face_hint_runners == ()  # a plug-in that never reads the hint is refused under every runner
    with pytest.raises(UsageError, match=r"face_index|--face-index"):
        settle_face_hint(SadTalker(), "worker", None, explicit=True, info=_Info())  # never silently without a face


def test_the_cache_key_names_the_chosen_face():
    from lipsync_tool.resources.preprocess import face_key

    sha = "ab" * 32
    zero, one = fh.FaceHint(0, (10, 10, 60, 60), (320, 240)), fh.FaceHint(1, (200, 10, 260, 70), (320, 240))
    assert face_key(sha) == sha == face_key(sha, None)
    keys = {face_key(sha, zero), face_key(sha, one), face_key("cd" * 32, zero), sha}
    assert len(keys) == 4 and face_key(sha, zero) == face_key(sha, fh.FaceHint(0, (10, 10, 60, 60), (320, 240), "another reason"))


# -- the fake engine end to end ------------------------------------------------------------------


def _two_faces(path: Path) -> list[tuple[float, float, float, float]]:
    """The rig's two faces on a textured dark ground (below the rig detector's threshold); their boxes, left to right."""
    from PIL import Image

    boxes = sorted(rig.draw_faces(path, (320, 240), FACES))
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    yy, xx = np.mgrid[0:240, 0:320]
    ground = pixels == rig.BACKGROUND
    pixels[ground] = (40 + (xx * 7 + yy * 3) % 41)[..., None].repeat(3, axis=2)[ground]
    Image.fromarray(pixels).save(path)
    return boxes


@pytest.fixture
def stub_advisor(monkeypatch, tmp_path):
    """The advisor's answer without face-alignment: the two faces of :func:`_two_faces` (as the rig finds them)."""
    from lipsync_tool import run as run_module
    from lipsync_tool.advisor import prejob

    monkeypatch.setattr(run_module, "check_face", lambda *a, **k: None)  # dlib's pre-check sees no face in the rig's squares
    calls = []
    boxes = sorted(rig.draw_faces(tmp_path / "rig.png", (320, 240), FACES))

    def advise(image, still, *, python, settings, info, face_index=None, timeout=600.0):
        calls.append(face_index)
        if face_index is not None and face_index >= len(boxes):
            raise UsageError(f"{face_index} is out of range: the image has 2 faces (0..1)", subject="--face-index")
        index = 0 if face_index is None else face_index
        hint = fh.FaceHint(index, boxes[index], (320, 240), f"chosen with --face-index {index}" if face_index is not None else "the largest")
        info.advice = {"given": True, "face_count": 2, "face_index": index, "face_hint": {**hint.to_json(), "used": True}}
        return hint

    monkeypatch.setattr(prejob, "advise_before_run", advise)
    return calls


def _frames(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "input.npy"), np.load(folder / "output.npy")


def _region(box, size=256, frame=(320, 240)):
    """The fake engine's frame pixels of a hinted *box* (x1 y1 x2 y2 in the still), as slices y, x."""
    x1, y1, x2, y2 = fh.scaled(box, frame, (size, size))
    return slice(max(0, round(y1)), min(size, round(y2))), slice(max(0, round(x1)), min(size, round(x2)))


def _run_index(cli, image, audio, out, index, frames_dir, monkeypatch, *extra):
    monkeypatch.setenv("FAKE_ENGINE_FRAMES", str(frames_dir))
    args = ["run", image, audio, out, "--engine", "fake", "--fake-quality", "fast", "--report", out.with_suffix(".json"), *FAST, *extra]
    if index is not None:
        args += ["--face-index", str(index)]
    return cli(*args)


def _changed_only_in(frames_dir: Path, boxes, index: int) -> None:
    source, output = _frames(frames_dir)
    chosen, other = _region(boxes[index]), _region(boxes[1 - index])
    for out in output:
        changed = np.any(out != source[0], axis=2)
        assert changed[chosen].any(), f"face {index} was not animated"
        assert np.array_equal(out[other], source[0][other]), f"face {1 - index}'s pixels changed"
        changed[chosen] = False
        assert not changed.any(), "pixels outside the chosen face changed"


@pytest.mark.parametrize("index", [1, 0])
def test_the_face_index_chooses_the_face_the_fake_engine_animates(cli, fake_engine, media, tmp_path, monkeypatch, stub_advisor, index):
    image = tmp_path / "two.png"
    boxes = _two_faces(image)
    out = tmp_path / f"out{index}.mp4"
    r = _run_index(cli, image, media.audio(seconds=0.4), out, index, tmp_path / "frames", monkeypatch)
    assert r.code == 0, r.output
    assert stub_advisor == [index]
    _changed_only_in(tmp_path / "frames", boxes, index)
    hint = json.loads(out.with_suffix(".json").read_text())["inputs"]["face"]["advice"]["face_hint"]
    assert hint["index"] == index and hint["used"] is True and hint["box"] == pytest.approx(list(boxes[index]), abs=0.01)


def test_several_faces_without_the_flag_animate_the_advisors_choice(cli, fake_engine, media, tmp_path, monkeypatch, stub_advisor):
    import fake_lipsync_engine

    monkeypatch.setattr(fake_lipsync_engine.FakeEngine, "portrait_advice", True)
    image = tmp_path / "two.png"
    boxes = _two_faces(image)
    r = _run_index(cli, image, media.audio(seconds=0.4), tmp_path / "out.mp4", None, tmp_path / "frames", monkeypatch)
    assert r.code == 0, r.output
    assert stub_advisor == [None]
    _changed_only_in(tmp_path / "frames", boxes, 0)  # the largest


def test_an_index_out_of_range_exits_2_naming_the_flag(cli, fake_engine, media, tmp_path, monkeypatch, stub_advisor):
    image = tmp_path / "two.png"
    _two_faces(image)
    out = tmp_path / "out.mp4"
    r = _run_index(cli, image, media.audio(seconds=0.4), out, 2, tmp_path / "frames", monkeypatch)
    assert r.code == 2 and "--face-index" in r.output and "out of range" in r.output
    assert not out.exists()


def test_a_face_the_engines_detector_does_not_find_fails_the_job(cli, fake_engine, media, tmp_path, monkeypatch, stub_advisor):
    monkeypatch.setenv("FAKE_HINT_MISS", "1")  # the fake detector then finds only its fixed box
    image = tmp_path / "two.png"
    _two_faces(image)
    out = tmp_path / "out.mp4"
    r = _run_index(cli, image, media.audio(seconds=0.4), out, 1, tmp_path / "frames", monkeypatch)
    assert r.code == 2, r.output
    assert "face 1 (chosen with --face-index 1) is not among the faces" in r.output and "--skip-face-check" in r.output
    assert not out.exists() and not (tmp_path / "frames" / "output.npy").exists()


def test_the_preprocessing_cache_does_not_mix_faces(cli, fake_engine, media, tmp_path, monkeypatch, stub_advisor):
    image = tmp_path / "two.png"
    boxes = _two_faces(image)
    audio = media.audio(seconds=0.4)
    hits = []
    for n, index in enumerate((0, 1, 1, 0)):
        out = tmp_path / f"out{n}.mp4"
        r = _run_index(cli, image, audio, out, index, tmp_path / f"frames{n}", monkeypatch)
        assert r.code == 0, r.output
        _changed_only_in(tmp_path / f"frames{n}", boxes, index)
        (entry,) = json.loads(out.with_suffix(".json").read_text())["engine"]["preprocess"]
        hits.append(entry["hit"])
    assert hits == [False, False, True, True]  # face 1's first run computes its own entry; each face's rerun reuses its own


def test_without_the_advisor_the_flag_fails_clearly(cli, fake_engine, media, tmp_path, monkeypatch):
    from lipsync_tool import run as run_module
    from lipsync_tool import runtime

    monkeypatch.setattr(run_module, "check_face", lambda *a, **k: None)
    real = runtime.package_versions
    monkeypatch.setattr(runtime, "package_versions", lambda py, names: {**real(py, names), "face-alignment": None})
    out = tmp_path / "out.mp4"
    r = cli("run", media.portrait(), media.audio(seconds=0.4), out, "--engine", "fake", "--face-index", "0", *FAST)
    assert r.code == 1, r.output
    assert "--face-index: needs the portrait advisor to find face 0" in r.output and "face-alignment is not installed" in r.output
    assert "lipsync-tool[advisor]" in r.output
    assert not out.exists()


def test_refusals_before_any_work(cli, fake_engine, media, tmp_path, monkeypatch, stub_advisor):
    audio, out = media.audio(seconds=0.4), tmp_path / "out.mp4"
    r = cli("run", media.video(seconds=0.4), audio, out, "--engine", "fake", "--face-index", "1", *FAST)
    assert r.code == 2 and "--face-index: chooses a face of a still portrait; the face input is a video" in r.output
    r = cli("run", media.portrait(), audio, out, "--engine", "fake", "--face-index", "1", "--skip-face-check", *FAST)
    assert r.code == 2 and "needs the portrait advisor, which --skip-face-check skips" in r.output
    image = tmp_path / "two.png"
    _two_faces(image)
    r = cli("run", image, audio, out, "--engine", "fake", "--face-index", "1", "--runner", "subprocess", *FAST)
    assert r.code == 2 and "--face-index: Fake cannot be told which face to animate with --runner subprocess" in r.output
    assert not out.exists() and stub_advisor == [1]


# -- with the real advisor (face-alignment with rigged weights, as tests/test_advisor.py) --------------------------

needs_fa = pytest.mark.skipif(
    importlib.util.find_spec("face_alignment") is None and not os.environ.get("LIPSYNC_TOOL_REQUIRE_ADVISOR"), reason="needs face-alignment (the advisor extra)"
)


@needs_fa
@pytest.mark.slow
def test_the_real_advisor_chooses_face_1_for_the_fake_engine(cli, fake_engine, media, tmp_path, monkeypatch):
    from lipsync_tool import run as run_module

    monkeypatch.setattr(run_module, "check_face", lambda *a, **k: None)
    monkeypatch.setenv("LIPSYNC_TOOL_REGISTRY", str(rig.write_weights(tmp_path / "fa-weights")))
    image = tmp_path / "two.png"
    boxes = _two_faces(image)
    out = tmp_path / "out.mp4"
    r = _run_index(cli, image, media.audio(seconds=0.4), out, 1, tmp_path / "frames", monkeypatch)
    assert r.code == 0, r.output
    _changed_only_in(tmp_path / "frames", boxes, 1)
    advice = json.loads(out.with_suffix(".json").read_text())["inputs"]["face"]["advice"]
    assert advice["face_count"] == 2 and advice["face_index"] == 1
    assert advice["face_hint"]["index"] == 1 and advice["face_hint"]["box"] == pytest.approx(list(boxes[1]), abs=2)
    r = _run_index(cli, image, media.audio(seconds=0.4), tmp_path / "bad.mp4", 5, tmp_path / "frames5", monkeypatch)
    assert r.code == 2 and "--face-index" in r.output and "out of range: the image has 2 faces" in r.output


# -- opt-in: the real Wav2Lip adapter on upstream's own face_detect and datagen ---------------------------------------
# LIPSYNC_TOOL_UPSTREAM_WAV2LIP=/work/upstream/Wav2Lip LIPSYNC_TOOL_UPSTREAM_PYTHON=/work/venv-upstream/bin/python \
# LIPSYNC_TOOL_UPSTREAM_WEIGHTS=/work/upstream-weights python -m pytest -m upstream tests/test_face_index.py
# Random s3fd weights find no face, so the kept detector is a stub with upstream's interface that finds two faces
# (the rigs of tests/test_upstream_worker_wav2lip.py); the generator is upstream's, with random weights.

TWO_FACES_ADAPTER = '''"""TEST-ONLY: the real Wav2Lip adapter whose s3fd finds the faces {faces} in every image."""
import importlib.util
import numpy as np
_spec = importlib.util.spec_from_file_location("real_wav2lip_adapter", {adapter!r})
real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real)
class S3FD:
    def detect_from_batch(self, images):
        return [np.array({faces}, dtype=float) for _ in images]
class TwoFaces:
    face_detector = S3FD()
    def get_detections_for_batch(self, images):  # upstream's answer: the first detection
        return [tuple(int(v) for v in {faces}[0][:4]) for _ in images]
class Adapter(real.Adapter):
    def new_face_alignment(self, *args, **kwargs):
        return TwoFaces()
'''
#: Two faces of the 512 x 512 portrait (x1 y1 x2 y2 score): the real face, and a second one the stub makes up.
W2L_FACES = [[100.0, 110.0, 400.0, 410.0, 0.99], [420.0, 20.0, 500.0, 100.0, 0.98]]


@pytest.mark.upstream
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not os.environ.get("LIPSYNC_TOOL_UPSTREAM_WAV2LIP"), reason="set LIPSYNC_TOOL_UPSTREAM_WAV2LIP to a Wav2Lip checkout")
@pytest.mark.parametrize("index", [0, 1])
def test_upstream_wav2lip_worker_animates_only_the_hinted_face(tmp_path, index):
    import subprocess

    import cv2
    import test_upstream_worker_wav2lip as w2l  # its rigs: inputs, random weights, link farms, the worker harness

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "face.jpg").write_bytes(w2l.PORTRAIT.read_bytes())
    w2l.write_speech_wav(inputs / "audio.wav", 0.4)
    weights = (Path(w2l.WEIGHTS) if w2l.WEIGHTS else tmp_path / "weights") / "wav2lip"
    if not (weights / "registry.toml").exists():
        weights.mkdir(parents=True, exist_ok=True)
        cmd = [w2l.ENGINE_PY, str(w2l.MAKE_WEIGHTS), "wav2lip", "--repo", w2l.WAV2LIP, "--out", str(weights)]
        subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=weights.parent, check=True)
    source = cv2.imread(str(inputs / "face.jpg"))
    hint = fh.FaceHint(index, tuple(W2L_FACES[index][:4]), (512, 512), f"chosen with --face-index {index}")
    box = fh.padded_box(hint.box, (0, 10, 0, 0), hint.frame)  # what build_command passes (top bottom left right)
    args = w2l.argv("face.jpg", "--box", *map(str, box))
    adapters = {}
    for name, faces in (("two", W2L_FACES), ("other", [W2L_FACES[1 - index]])):
        adapters[name] = tmp_path / f"{name}_adapter.py"
        adapters[name].write_text(TWO_FACES_ADAPTER.format(adapter=str(w2l.ADAPTER), faces=faces))
    results = {}
    for name, adapter in adapters.items():
        with w2l.worker(tmp_path / name, inputs, weights, adapter=adapter) as (w, new_root):
            root = new_root()
            _write_hint(root / "work", hint)
            results[name] = w.job(w2l.job(root, args, preprocess={"dir": str(tmp_path / f"pre-{name}"), "hit": False}))
    frames = w2l.rendered(results["two"])
    top, bottom, left, right = box
    for frame in frames:
        changed = np.any(frame != source, axis=2)
        assert changed[top:bottom, left:right].any(), f"face {index} was not animated"
        changed[top:bottom, left:right] = False
        assert not changed.any(), "a pixel outside the hinted face's box changed"
    assert results["two"].notes["preprocess"]["hit"] is False  # the detector ran (the --box was the hint's)
    cached = json.loads((tmp_path / "pre-two" / "boxes.json").read_text())["boxes"]
    assert cached == [list(box)] * len(cached)  # upstream's face_detect padded the hinted detection as --box says
    missed = results["other"]
    assert missed.error is not None and fh.NOT_MATCHED in missed.error["message"] and f"face {index}" in missed.error["message"]
