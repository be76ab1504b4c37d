"""The image advisor (``lipsync-tool check``): pose geometry, the rules, and face-alignment end to end
with rigged random weights (tests/advisor_rig.py) through a registry override of file:// URLs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import advisor_rig as rig
import pytest

from lipsync_tool.advisor import Face, Pose, advise, estimate_pose, rules
from lipsync_tool.errors import FaceNotFoundError, OfflineError, UsageError

# -- the pose from landmarks (no model) ------------------------------------------------------


def test_the_bundled_portrait_is_frontal_and_level():
    pose = estimate_pose(rig.portrait_landmarks())
    assert abs(pose.yaw) < 5 and abs(pose.pitch) < 5 and abs(pose.roll) < 5


def test_mirroring_flips_the_yaw_and_roll_only():
    pts = rig.turn(rig.portrait_landmarks(), yaw=20)
    a, b = estimate_pose(pts), estimate_pose(rig.mirror(pts, 512))
    assert a.yaw > 10 and b.yaw == pytest.approx(-a.yaw, abs=0.2)
    assert b.pitch == pytest.approx(a.pitch, abs=0.2) and b.roll == pytest.approx(-a.roll, abs=0.2)


@pytest.mark.parametrize("yaw", [-70, -45, -20, 0, 20, 45, 70])
def test_turned_layouts_give_their_yaw_back(yaw):
    pose = estimate_pose(rig.turn(rig.portrait_landmarks(), yaw=yaw))
    assert pose.yaw == pytest.approx(yaw, abs=6)
    assert abs(pose.pitch) < 6


@pytest.mark.parametrize("pitch", [-30, -15, 15, 30])
def test_tilted_layouts_give_their_pitch_back(pitch):
    pose = estimate_pose(rig.turn(rig.portrait_landmarks(), pitch=pitch))
    assert pose.pitch == pytest.approx(pitch, abs=6)
    assert abs(pose.yaw) < 6


def test_rolling_the_image_changes_only_the_roll():
    base = estimate_pose(rig.turn(rig.portrait_landmarks(), yaw=30))
    rolled = estimate_pose(rig.rotate(rig.turn(rig.portrait_landmarks(), yaw=30), 25))
    assert rolled.roll == pytest.approx(base.roll + 25, abs=0.5)
    assert rolled.yaw == pytest.approx(base.yaw, abs=0.5) and rolled.pitch == pytest.approx(base.pitch, abs=0.5)


def test_wrong_landmark_counts_are_refused():
    with pytest.raises(ValueError, match="68"):
        estimate_pose([(0, 0)] * 5)


# -- the rules ---------------------------------------------------------------------------------


def _face(index, box, yaw=0.0):
    return Face(index=index, box=box, score=0.99, pose=Pose(yaw, 0.0, 0.0))


def _reply(boxes, width=640, height=480, turned=0.0):
    """A child reply: each box gets the portrait's landmarks scaled into it (turned by *turned*)."""
    pts = rig.to_unit(rig.turn(rig.portrait_landmarks(), yaw=turned))
    faces = [{"box": list(b), "score": 0.9, "landmarks": [[b[0] + u * (b[2] - b[0]), b[1] + v * (b[3] - b[1])] for u, v in pts]} for b in boxes]
    return {"ok": True, "width": width, "height": height, "faces": faces}


def test_faces_are_numbered_left_to_right_and_the_largest_is_used(tmp_path):
    advice = advise(tmp_path / "x.png", _reply([(400, 100, 600, 300), (10, 10, 60, 60), (200, 50, 300, 150)]))
    assert [f.box[0] for f in advice.faces] == [10, 200, 400]
    assert advice.chosen.index == 2 and advice.chosen_reason == "the largest"
    assert any("3 faces found; using face 2" in w for w in advice.warnings)
    picked = advise(tmp_path / "x.png", _reply([(400, 100, 600, 300), (10, 10, 60, 60)]), face_index=0)
    assert picked.chosen.box[0] == 10 and "face-index 0" in picked.chosen_reason
    assert any("small" in w for w in picked.warnings)


def test_a_face_index_out_of_range_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="out of range: the image has 2 faces"):
        advise(tmp_path / "x.png", _reply([(0, 0, 200, 200), (300, 0, 500, 200)]), face_index=2)


def test_no_face_is_the_one_error(tmp_path):
    with pytest.raises(FaceNotFoundError) as info:
        advise(tmp_path / "x.png", _reply([]))
    assert info.value.exit_code == 2 and info.value.hint


@pytest.mark.parametrize(
    ("box", "framing", "options"),
    [
        ((100, 60, 540, 420), "close-up", {"preprocess": "crop"}),
        ((250, 100, 400, 250), "portrait", {"preprocess": "crop"}),
        ((300, 50, 340, 90), "body", {"preprocess": "full", "still": True}),
    ],
)
def test_the_framing_decides_the_preprocess_mode(box, framing, options):
    rec = rules.recommend(_face(0, box), 480)
    assert (rec.framing, rec.options) == (framing, options)
    assert rec.engine is not None and rec.flags[:2] == ("--engine", rec.engine)
    assert "--preprocess" in rec.flags and rec.flags[rec.flags.index("--preprocess") + 1] == options["preprocess"]
    assert ("--still" in rec.flags) == bool(options.get("still"))


def test_no_engine_takes_the_options_then_none_is_recommended():
    class Options:
        @staticmethod
        def model_validate(values):
            raise ValueError("no such option")

    rec = rules.recommend(_face(0, (0, 0, 100, 100)), 480, engines={"other": type("E", (), {"Options": Options})})
    assert rec.engine is None and rec.flags == ()


def test_profile_and_small_face_warnings():
    small = rules.warnings_for([f := _face(0, (0, 0, 90, 90), yaw=-50)], f, "the only face")
    assert any("small (90x90 px" in w for w in small)
    assert any("profile view" in w and "left" in w for w in small)
    assert rules.warnings_for([g := _face(0, (0, 0, 300, 300), yaw=20)], g, "the only face") == []


# -- face-alignment end to end, with rigged weights ------------------------------------------------

# CI installs face-alignment and sets LIPSYNC_TOOL_REQUIRE_ADVISOR=1: there these tests run, or fail.
needs_fa = pytest.mark.skipif(
    importlib.util.find_spec("face_alignment") is None and not os.environ.get("LIPSYNC_TOOL_REQUIRE_ADVISOR"), reason="needs face-alignment (the advisor extra)"
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return rig.write_weights(tmp_path_factory.mktemp("fa-weights"))


@pytest.fixture(scope="module")
def profile_weights(tmp_path_factory, weights):
    out = tmp_path_factory.mktemp("fa-profile")
    (out / "s3fd-619a316812.pth").symlink_to(weights.parent / "s3fd-619a316812.pth")
    return rig.write_weights(out, template=rig.to_unit(rig.turn(rig.portrait_landmarks(), yaw=60)))


@needs_fa
@pytest.mark.slow
def test_two_faces_the_rig_places_are_found_and_the_index_chooses(cli, tmp_path, weights):
    image = tmp_path / "two.png"
    expected = rig.draw_faces(image, (320, 240), [(240, 100, 90), (80, 120, 200)])
    r = cli("check", image, "--json", "--registry", weights, "--face-index", "1")
    assert r.code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["face_count"] == 2 and (doc["width"], doc["height"]) == (320, 240)
    boxes = [f["box"] for f in doc["faces"]]  # left to right: the big face at x=80 is 0
    for got, want in zip(boxes, sorted(expected)):
        assert got == pytest.approx(list(want), abs=2)
    assert doc["face_index"] == 1 and doc["faces"][1]["size_px"] == pytest.approx(90, abs=3)
    assert any("small" in w for w in doc["warnings"]) and any("2 faces found; using face 1" in w for w in doc["warnings"])
    for face in doc["faces"]:  # the rigged network's landmarks: the portrait's layout, frontal
        assert len(face["landmarks"]) == 68 and abs(face["yaw"]) < 10 and abs(face["pitch"]) < 10


@needs_fa
@pytest.mark.slow
def test_one_face_in_profile_gets_the_warning_in_the_table(cli, tmp_path, profile_weights):
    image = tmp_path / "one.png"
    rig.draw_faces(image, (480, 480), [(240, 240, 150)])
    r = cli("check", image, "--registry", profile_weights)
    assert r.code == 0, r.output
    assert "1 face(s); using face 0 (the only face)" in r.stdout
    assert "Warning: profile view" in r.stdout and "small" not in r.stdout
    assert "Recommended: --engine" in r.stdout and "--preprocess crop" in r.stdout


@needs_fa
@pytest.mark.slow
def test_no_face_exits_2_with_the_message(cli, tmp_path, weights):
    image = tmp_path / "empty.png"
    rig.draw_faces(image, (160, 120), [])
    r = cli("check", image, "--registry", weights)
    assert r.code == 2
    assert "no face found in the image" in r.output and "frontal face" in r.output


def test_offline_without_the_weights_names_setup(cli, tmp_path, media):
    r = cli("check", media.portrait(), "--offline")
    assert r.code == 2
    assert "2DFAN4-cd938726ad.zip" in r.output and "s3fd-619a316812.pth" in r.output
    assert "lipsync-tool setup" in r.output


def test_offline_error_is_typed(tmp_path, media):
    from lipsync_tool.advisor import check_image

    with pytest.raises(OfflineError):
        check_image(media.portrait(), cache_dir=tmp_path / "cache", offline=True)


def test_help_stays_light():
    code = "import sys; from lipsync_tool.cli import build_app; import lipsync_tool.cli.check; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["False", "False"]



# -- before every job ------------------------------------------------------------------------------


@needs_fa
@pytest.mark.slow
def test_the_advice_runs_before_a_job_and_only_no_face_stops_it(cli, fake_engine, media, tmp_path, weights, monkeypatch):
    import fake_lipsync_engine

    from lipsync_tool import run as run_module

    monkeypatch.setattr(fake_lipsync_engine.FakeEngine, "portrait_advice", True)
    monkeypatch.setattr(run_module, "check_face", lambda *a, **k: None)  # dlib's pre-check sees no face in the rig's squares
    monkeypatch.setenv("LIPSYNC_TOOL_REGISTRY", str(weights))
    image = tmp_path / "two.png"
    rig.draw_faces(image, (320, 240), [(240, 100, 90), (80, 120, 200)])
    out = tmp_path / "out.mp4"
    r = cli("run", image, media.audio(), out, "--engine", "fake", "--x264-preset", "ultrafast", "--target-height", "240", "--report", tmp_path / "r.json")
    assert r.code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    advice = report["inputs"]["face"]["advice"]
    assert advice["given"] is True and advice["face_count"] == 2
    assert any("2 faces found" in w for w in report["inputs"]["face"]["warnings"])
    empty = tmp_path / "empty.png"
    rig.draw_faces(empty, (160, 120), [])
    r = cli("run", empty, media.audio(), tmp_path / "none.mp4", "--engine", "fake", "--x264-preset", "ultrafast")
    assert r.code == 2 and "no face found in the image" in r.output and not (tmp_path / "none.mp4").exists()


def test_without_face_alignment_the_job_goes_on_and_says_so(cli, fake_engine, media, tmp_path, monkeypatch):
    import fake_lipsync_engine

    from lipsync_tool import runtime

    monkeypatch.setattr(fake_lipsync_engine.FakeEngine, "portrait_advice", True)
    real = runtime.package_versions
    monkeypatch.setattr(runtime, "package_versions", lambda py, names: {**real(py, names), "face-alignment": None})
    from lipsync_tool.advisor import advisor as advisor_module

    def no_download(*a, **k):
        raise AssertionError("the advisor's weights were asked for although face-alignment is missing")

    monkeypatch.setattr(advisor_module, "check_image", no_download)
    out = tmp_path / "out.mp4"
    r = cli("run", media.portrait(), media.audio(), out, "--engine", "fake", "--x264-preset", "ultrafast", "--target-height", "240", "--report", tmp_path / "r.json")
    assert r.code == 0, r.output
    face = json.loads((tmp_path / "r.json").read_text())["inputs"]["face"]
    assert face["advice"]["given"] is False and "face-alignment is not installed" in face["advice"]["reason"]
    assert any(w.startswith("portrait advice not given: face-alignment: face-alignment is not installed") for w in face["warnings"])
