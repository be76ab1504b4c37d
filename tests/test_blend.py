"""The mouth mask of ``--wav2lip-quality improved`` (``engines/workerd/blend.py``): its maths alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_tool.engines.workerd import blend


def _outer(shape, box, size):
    """The full ellipse of *box* on a frame of *shape*, computed here independently."""
    y1, y2, x1, x2 = box
    h, w = y2 - y1, x2 - x1
    cx, cy, ax, ay = x1 + (w - 1) / 2, y1 + (h - 1) * 0.75, size * w / 2, size * h / 4
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1


@pytest.mark.parametrize("size,feather", [(0.75, 0.08), (0.5, 0.15), (1.0, 6), (0.9, 0)])
def test_the_mask_is_zero_outside_one_at_the_centre_and_falls_off_monotonically(size, feather):
    shape, box = (240, 320), (40, 200, 90, 230)  # y1 y2 x1 x2
    mask = blend.frame_mask(shape, box, size, feather)
    assert mask.dtype == np.float32 and mask.shape == shape
    assert mask.min() == 0.0 and mask.max() == 1.0
    outer = _outer(shape, box, size)
    assert not mask[~outer].any(), "non-zero outside the ellipse"
    assert not mask[: box[0] + (box[1] - box[0]) // 2].any(), "the upper half of the face box is never masked"
    cy, cx = round(box[0] + (box[1] - box[0] - 1) * 0.75), round(box[2] + (box[3] - box[2] - 1) / 2)
    assert mask[cy, cx] == 1.0
    # Along rays from the centre the mask never rises.
    for dy, dx in [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, 2), (2, -1)]:
        values = [mask[cy + k * dy, cx + k * dx] for k in range(200) if 0 <= cy + k * dy < shape[0] and 0 <= cx + k * dx < shape[1]]
        assert all(b <= a + 1e-6 for a, b in zip(values, values[1:])), (dy, dx, values)
    if feather:  # a feathered edge: values strictly between 0 and 1 exist
        assert ((mask > 0) & (mask < 1)).sum() > 0
    else:
        assert set(np.unique(mask)) == {0.0, 1.0}


def test_the_feather_widens_the_soft_edge():
    shape, box = (240, 320), (40, 200, 90, 230)
    soft = [int(((m > 0) & (m < 1)).sum()) for m in (blend.frame_mask(shape, box, 0.8, f) for f in (2, 5, 10))]
    assert soft[0] < soft[1] < soft[2]
    assert blend.feather_pixels(0.1, 160, 140) == 14 and blend.feather_pixels(7, 160, 140) == 7
    with pytest.raises(ValueError):
        blend.feather_pixels(-1, 10, 10)
    with pytest.raises(ValueError):
        blend.mouth_mask(100, 100, size=1.5)


def test_the_mask_follows_the_box():
    shape = (240, 320)
    a = blend.frame_mask(shape, (40, 200, 90, 230))
    b = blend.frame_mask(shape, (60, 220, 130, 270))  # the same box, 20 down and 40 right
    assert np.array_equal(np.roll(a, (20, 40), axis=(0, 1)), b)
    big = blend.frame_mask(shape, (20, 220, 60, 260))
    assert (big > 0).sum() > (a > 0).sum()


def test_paste_mouth_changes_only_the_masked_pixels():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    box = (40, 200, 90, 230)
    face = np.full((160, 140, 3), 7, dtype=np.uint8)
    out = blend.paste_mouth(frame.copy(), face, box)
    mask = blend.frame_mask(frame.shape, box)
    assert np.array_equal(out[mask == 0], frame[mask == 0])
    assert (out[mask == 1] == 7).all()
    soft = (mask > 0) & (mask < 1)
    lo, hi = np.minimum(frame, 7), np.maximum(frame, 7)
    assert ((out[soft] >= lo[soft]) & (out[soft] <= hi[soft])).all()  # a mix of the two
    with pytest.raises(ValueError, match="its box"):
        blend.paste_mouth(frame.copy(), face[:10], box)


def test_the_wav2lip_defaults_are_the_blend_defaults():
    from lipsync_tool.engines import wav2lip

    assert (wav2lip.MASK_SIZE, wav2lip.MASK_FEATHER) == (blend.DEFAULT_SIZE, blend.DEFAULT_FEATHER)


# -- the modes and frames without a face on the fake engine, through the real worker ---------------

FAST = ("--x264-preset", "ultrafast")


def _pipeline(**kw):
    from lipsync_tool import LipSyncPipeline

    return LipSyncPipeline(engine="fake", x264_preset="ultrafast", **kw)


def _frames(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """What the fake adapter read, and what it streamed to the parent (``$FAKE_ENGINE_FRAMES``)."""
    return np.load(folder / "input.npy"), np.load(folder / "output.npy")


def _fake_box(size: int = 256) -> tuple[int, ...]:
    from fake_worker_adapter import FAKE_BOX

    return tuple(round(f * size) for f in FAKE_BOX)


def test_improved_changes_only_the_masked_pixels_and_is_not_blurrier_than_fast(fake_engine, media, tmp_path, monkeypatch):
    from lipsync_tool.media import find_faces_in_array
    from lipsync_tool.scoring.quality import laplacian_variance, mouth_region

    image, audio = media.portrait(), media.audio(seconds=0.4)
    runs = {}
    for quality in ("fast", "improved"):
        monkeypatch.setenv("FAKE_ENGINE_FRAMES", str(tmp_path / quality))
        with _pipeline(fake_quality=quality) as p:
            runs[quality] = p.run(image, audio, tmp_path / f"{quality}.mp4")
    resolved = runs["improved"].report["options"]["engine_options_resolved"]
    assert resolved["fake_quality"] == "improved"
    source, fast = _frames(tmp_path / "fast")
    same_source, improved = _frames(tmp_path / "improved")
    assert np.array_equal(source, same_source) and len(fast) == len(improved) == 10
    frame = source[0]
    mask = blend.frame_mask(frame.shape, _fake_box())
    outside, inside = mask == 0, mask == 1
    for out in improved:
        assert np.array_equal(out[outside], frame[outside]), "a pixel outside the mask changed"
    for a, b in zip(improved, fast, strict=True):
        assert np.array_equal(a[inside], b[inside])  # the mouth is the model's, as in fast
        assert not np.array_equal(a[inside], frame[inside])
    y1, y2, x1, x2 = _fake_box()
    assert not np.array_equal(fast[0][y1:y2, x1:x2][outside[y1:y2, x1:x2]], frame[y1:y2, x1:x2][outside[y1:y2, x1:x2]])  # fast pastes the whole box

    # The mouth region (dlib's face box, as `score` measures it) is no blurrier than fast's.
    gray = [np.asarray(f[..., ::-1].mean(axis=2), dtype=np.uint8) for f in (frame, fast[0], improved[0])]
    (face,) = find_faces_in_array(gray[0])
    sharp = {name: laplacian_variance(mouth_region(g, face)) for name, g in zip(("input", "fast", "improved"), gray, strict=True)}
    assert sharp["improved"] >= sharp["fast"], sharp
    assert sharp["fast"] < sharp["input"], sharp  # the fake generator does blur (the check can fail)


def _video_with_blank_frames(media, blank=(5, 6, 7)) -> Path:
    from conftest import PORTRAIT, run_ffmpeg

    path = media.root / "blank3.mp4"
    cond = "+".join(f"eq(n,{n})" for n in blank)
    vf = f"scale=256:256,drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='{cond}'"
    run_ffmpeg(media.ff, "-loop", "1", "-i", str(PORTRAIT), "-t", "1", "-r", "25", "-vf", vf, "-c:v", "libx264", "-pix_fmt", "yuv420p", path.as_posix())
    return path


def test_frames_without_a_face_pass_through_and_are_counted(fake_engine, media, cli, tmp_path, monkeypatch):
    import json

    video, audio = _video_with_blank_frames(media), media.audio(seconds=0.8)  # 20 frames of a 25-frame video
    monkeypatch.setenv("FAKE_ENGINE_FRAMES", str(tmp_path / "frames"))
    report = tmp_path / "r.json"
    r = cli(video, audio, tmp_path / "out.mp4", "--engine", "fake", "--fake-quality", "improved", "--report", report, *FAST)
    assert r.code == 0, r.output
    assert "3 frames of the face video had no face that Fake could find and passed through unchanged (frames 5, 6, 7)" in r.output
    data = json.loads(report.read_text())
    assert data["engine"]["frames_without_face"] == {"count": 3, "first": [5, 6, 7]}
    assert data["engine"]["worker_jobs"][0]["frames_without_face"] == {"count": 3, "first": [5, 6, 7]}
    source, out = _frames(tmp_path / "frames")
    assert len(out) == 20
    for i in range(20):
        assert np.array_equal(out[i], source[i]) == (i in (5, 6, 7)), i
    assert source[5].std() == 0  # blank, as made

    r = cli(video, audio, tmp_path / "strict.mp4", "--engine", "fake", "--fake-quality", "fast", "--fake-require-face-every-frame", *FAST)
    assert r.code != 0 and "the fake engine found no face" in r.output
    assert not (tmp_path / "strict.mp4").exists()


def test_a_still_image_without_a_face_still_fails(fake_engine, media, tmp_path):
    from PIL import Image

    from lipsync_tool.errors import FaceNotFoundError

    blank = media.root / "blank.png"
    Image.new("RGB", (256, 256), (90, 90, 90)).save(blank)
    with _pipeline(fake_quality="improved", skip_face_check=True) as p, pytest.raises(FaceNotFoundError):
        p.run(blank, media.audio(seconds=0.4), tmp_path / "x.mp4")


# -- the Wav2Lip options ---------------------------------------------------------------------------


def test_wav2lip_quality_options_are_checked():
    from pydantic import ValidationError

    from lipsync_tool.engines.wav2lip import Wav2Lip, Wav2LipOptions
    from lipsync_tool.errors import UsageError

    engine = Wav2Lip()
    improved = Wav2LipOptions(wav2lip_quality="improved", wav2lip_mask_size=0.6, wav2lip_mask_feather=12)
    dumped = improved.resolved().model_dump(mode="json")  # what the report's engine_options_resolved holds
    assert (dumped["wav2lip_quality"], dumped["wav2lip_mask_size"], dumped["wav2lip_mask_feather"], dumped["require_face_every_frame"]) == ("improved", 0.6, 12, False)
    engine.check_runner(improved, "worker")
    engine.check_runner(Wav2LipOptions(), "subprocess")
    with pytest.raises(UsageError, match="needs the warm worker runner"):
        engine.check_runner(improved, "subprocess")
    with pytest.raises(UsageError, match="tunes --wav2lip-quality improved and enhanced only"):
        engine.validate(Wav2LipOptions(wav2lip_mask_feather=4), face_is_video=True)
    engine.validate(improved, face_is_video=True)
    for bad in ({"wav2lip_mask_feather": 2.5}, {"wav2lip_mask_size": 0}, {"wav2lip_mask_size": 1.2}, {"wav2lip_quality": "best"}):
        with pytest.raises(ValidationError):
            Wav2LipOptions(**bad)
    # the default is upstream's output: the argv does not change
    from lipsync_tool.engines.base import Device, Job, Workspace

    job = Job(face=Path("/r/inputs/face.png"), audio=Path("/r/inputs/audio.wav"), face_is_video=False, fps=25.0, device=Device("cpu"), python="py")
    ws = Workspace(Path("/r"))
    assert engine.build_command(job, improved, ws).argv == engine.build_command(job, Wav2LipOptions(), ws).argv


def test_improved_with_the_subprocess_runner_is_refused_before_any_work(cli, media, tmp_path):
    out = tmp_path / "out.mp4"
    r = cli(
        "run", media.portrait(), media.audio(), out, "--engine", "wav2lip", "--runner", "subprocess", "--wav2lip-quality", "improved",
        "--skip-face-check", "--offline", "--cache-dir", tmp_path / "empty-cache",
    )  # fmt: skip
    assert r.code == 2, r.output
    assert "--wav2lip-quality: improved needs the warm worker runner" in r.output and "Drop --runner subprocess" in r.output
    assert not out.exists() and not (tmp_path / "empty-cache" / "v1" / "repos").exists()
