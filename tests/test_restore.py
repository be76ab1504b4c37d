"""``--wav2lip-quality enhanced`` (``engines/workerd/restore.py``): the face restorer on the face crop only.

The real restorer is GFPGAN (opt-in: ``tests/test_upstream_worker_wav2lip.py``);
here the helper's own logic, the fake engine with a stub restorer through the
real worker, and Wav2Lip's weights, requirements and pre-flight checks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsync_tool.engines.workerd import blend, restore


def _frame(h=240, w=320, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_crop_is_the_box_with_a_margin_clipped_to_the_frame():
    assert restore.crop_region((240, 320), (40, 200, 90, 230), 0.25) == (0, 240, 55, 265)
    assert restore.crop_region((1000, 1000), (400, 600, 400, 500), 0.3) == (340, 660, 370, 530)
    assert restore.crop_region((1000, 1000), (400, 600, 400, 500), 0.0) == (400, 600, 400, 500)


def test_the_restorer_sees_only_the_crop_and_its_result_is_cut_to_the_box():
    frame, box = _frame(), (60, 180, 100, 220)
    seen = []

    def enhance(crop):
        seen.append(crop.copy())
        return 255 - crop  # something the test can recognise

    r = restore.Restorer(enhance, margin=0.25)
    face = r.restore(frame, box)
    ry1, ry2, rx1, rx2 = restore.crop_region(frame.shape, box, 0.25)
    assert len(seen) == 1 and np.array_equal(seen[0], frame[ry1:ry2, rx1:rx2])
    assert seen[0].shape[:2] != frame.shape[:2]  # never the whole frame
    y1, y2, x1, x2 = box
    assert np.array_equal(face, 255 - frame[y1:y2, x1:x2])
    assert r.summary() == {"restored": 1, "no_face_found": 0}
    assert np.array_equal(frame, _frame())  # the frame itself is not changed


def test_a_crop_without_a_face_comes_back_unrestored_and_is_counted():
    frame, box = _frame(), (60, 180, 100, 220)
    r = restore.Restorer(lambda crop: None)
    y1, y2, x1, x2 = box
    assert np.array_equal(r.restore(frame, box), frame[y1:y2, x1:x2])
    assert r.summary() == {"restored": 0, "no_face_found": 1}
    with pytest.raises(ValueError, match="returned"):
        restore.Restorer(lambda crop: crop[:10]).restore(frame, box)


def test_the_mouth_paster_restores_then_changes_only_the_masked_pixels():
    frame, box = _frame(), (40, 200, 90, 230)
    y1, y2, x1, x2 = box
    pred = np.full((96, 96, 3), 200, dtype=np.uint8)  # Wav2Lip's 96 x 96 prediction

    def paste_box(p, f, c):
        import cv2

        f[y1:y2, x1:x2] = cv2.resize(p, (x2 - x1, y2 - y1))
        return f

    given = []

    def enhance(crop):
        given.append(crop.copy())
        return np.clip(crop.astype(int) + 20, 0, 255).astype(np.uint8)

    improved = restore.mouth_paster(blend, None, 0.75, 0.08, paste_box)(pred, frame.copy(), box)
    enhanced = restore.mouth_paster(blend, restore.Restorer(enhance), 0.75, 0.08, paste_box)(pred, frame.copy(), box)
    mask = blend.frame_mask(frame.shape, box)
    for out in (improved, enhanced):
        assert np.array_equal(out[mask == 0], frame[mask == 0])
    assert (improved[mask == 1] == 200).all() and (enhanced[mask == 1] == 220).all()
    # the restorer got the generated face pasted into the frame (upstream's paste), around the box only
    ry1, ry2, rx1, rx2 = restore.crop_region(frame.shape, box)
    (crop,) = given
    assert crop.shape == (ry2 - ry1, rx2 - rx1, 3) and (crop[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1] == 200).all()


# -- the fake engine, through the real worker -------------------------------------------------------

FAST = ("--x264-preset", "ultrafast")


def test_enhanced_on_the_fake_engine_restores_the_face_crop_only(fake_engine, media, cli, tmp_path, monkeypatch):
    from fake_worker_adapter import FAKE_BOX

    image, audio = media.portrait(), media.audio(seconds=0.4)
    outs = {}
    for quality in ("improved", "enhanced"):
        monkeypatch.setenv("FAKE_ENGINE_FRAMES", str(tmp_path / quality))
        report = tmp_path / f"{quality}.json"
        r = cli(image, audio, tmp_path / f"{quality}.mp4", "--engine", "fake", "--fake-quality", quality, "--report", report, *FAST)
        assert r.code == 0, r.output
        outs[quality] = (np.load(tmp_path / quality / "input.npy"), np.load(tmp_path / quality / "output.npy"), json.loads(report.read_text()))
    source, improved, _ = outs["improved"]
    _, enhanced, data = outs["enhanced"]
    frame = source[0]
    box = tuple(round(f * 256) for f in FAKE_BOX)
    mask = blend.frame_mask(frame.shape, box)
    assert len(enhanced) == len(improved) == 10
    for a, b in zip(enhanced, improved, strict=True):
        assert np.array_equal(a[mask == 0], frame[mask == 0]), "a pixel outside the mask changed"
        assert not np.array_equal(a[mask == 1], b[mask == 1])  # the restorer changed the mouth
    crops = json.loads((tmp_path / "enhanced" / "restorer_crops.json").read_text())
    ry1, ry2, rx1, rx2 = restore.crop_region(frame.shape, box)
    assert crops == [[ry2 - ry1, rx2 - rx1, 3]] * 10 and [ry2 - ry1, rx2 - rx1] != [256, 256]
    (job,) = data["engine"]["worker_jobs"]
    assert job["restorer"] == {"name": "stub", "restored": 10, "no_face_found": 0}
    assert data["options"]["engine_options_resolved"]["fake_quality"] == "enhanced"


# -- Wav2Lip: weights, requirements, pre-flight -----------------------------------------------------


def test_wav2lip_enhanced_needs_gfpgan_weights_and_packages():
    from lipsync_tool.engines.face_restore import GFPGAN_V14, PARSENET, RETINAFACE
    from lipsync_tool.engines.sadtalker import SadTalker
    from lipsync_tool.engines.wav2lip import Wav2Lip, Wav2LipOptions

    engine = Wav2Lip()
    enhanced = Wav2LipOptions(wav2lip_quality="enhanced")
    names = [c.name for c in engine.required_checkpoints(enhanced)]
    assert names == ["wav2lip_gan.pth", "s3fd.pth", "GFPGANv1.4.pth", "detection_Resnet50_Final.pth", "parsing_parsenet.pth"]
    assert [c.name for c in engine.required_checkpoints(Wav2LipOptions(wav2lip_quality="improved"))] == ["wav2lip_gan.pth", "s3fd.pth"]
    # the same verified entries as SadTalker's --enhancer gfpgan, linked where GFPGAN's face helper reads them
    for spec in (GFPGAN_V14, RETINAFACE, PARSENET):
        assert engine.checkpoint(spec.name) == SadTalker().checkpoint(spec.name) == spec
        assert spec.dest.startswith("gfpgan/weights/") and len(spec.sha256) == 64 and spec.size > 1_000_000
    assert restore.GFPGAN_WEIGHTS == GFPGAN_V14.dest
    steps = engine.requirements_for(enhanced)
    assert steps[: len(engine.requirements)] == engine.requirements
    assert ("--no-build-isolation", "--no-deps") == steps[-1][0] and {"basicsr>=1.4.2", "facexlib>=0.3.0", "gfpgan>=1.3.8"} == set(steps[-1][1])
    assert engine.requirements_for(Wav2LipOptions()) == engine.requirements
    assert set(engine.option_packages(enhanced)) == {"gfpgan", "basicsr", "facexlib"} and engine.option_packages(Wav2LipOptions()) == {}


def test_install_deps_installs_the_restorer_only_for_enhanced(tmp_path, monkeypatch):
    from lipsync_tool import runtime
    from lipsync_tool.engines.wav2lip import Wav2Lip, Wav2LipOptions

    engine = Wav2Lip()
    everything = {r: "1.0" for _, reqs in engine.requirements for r in reqs}
    monkeypatch.setattr(runtime, "requirement_state", lambda python, reqs: {r: everything.get(r) for r in reqs})
    assert runtime.install_plan(engine, "py") == []
    plan = runtime.install_plan(engine, "py", Wav2LipOptions(wav2lip_quality="enhanced"))
    assert plan[-1] == (("--no-build-isolation", "--no-deps"), ["basicsr>=1.4.2", "facexlib>=0.3.0", "gfpgan>=1.3.8"])


def test_enhanced_without_gfpgan_fails_before_any_download(cli, media, tmp_path):
    import sys

    out = tmp_path / "out.mp4"
    cache = tmp_path / "cache"
    r = cli(
        "run", media.portrait(), media.audio(), out, "--engine", "wav2lip", "--wav2lip-quality", "enhanced", "--python", sys.executable,
        "--skip-face-check", "--cache-dir", cache, "--device", "cpu",
    )  # fmt: skip
    assert r.code == 1, r.output
    assert "--wav2lip-quality enhanced needs gfpgan, basicsr, facexlib in the engine's Python" in r.output, r.output
    assert "--install-deps" in r.output and "Traceback" not in r.output
    assert not out.exists() and not (cache / "v1" / "checkpoints").exists()
