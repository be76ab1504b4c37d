"""The Wav2Lip and SadTalker adapters: exact argv for every option and preset,
device handling, the working dir upstream sees, and error translation fed
with upstream's real error output (captured from real runs, in
``tests/upstream/errors/``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lipsync_tool.engines import get_engine, make_options
from lipsync_tool.engines.base import Device, Job, Workspace
from lipsync_tool.engines.sadtalker import DEFAULTS, PRESETS, SadTalker, SadTalkerOptions
from lipsync_tool.engines.wav2lip import Wav2Lip, Wav2LipOptions
from lipsync_tool.errors import EngineError, EngineOOMError, EngineOutputMissingError, FaceNotFoundError, InputError, UsageError

ERRORS = Path(__file__).parent / "upstream" / "errors"
CPU = Device("cpu", reason="test")
GPU1 = Device("cuda", 1, reason="test")
GPU = Device("cuda", reason="test")


def job(ws: Workspace, *, device: Device = CPU, fps: float = 25.0, video: bool = False) -> Job:
    face = ws.inputs / ("face.mp4" if video else "face.png")
    return Job(face=face, audio=ws.inputs / "audio.wav", face_is_video=video, fps=fps, device=device, python="/py/bin/python")


# -- Wav2Lip: argv ------------------------------------------------------------------------------------


def w2l_argv(ws, device=CPU, fps=25.0, video=False, **opts) -> list[str]:
    cmd = Wav2Lip().build_command(job(ws, device=device, fps=fps, video=video), Wav2LipOptions(**opts), ws)
    assert cmd.cwd == ws.work
    return cmd.argv


def w2l_base(ws, face="face.png", ckpt="checkpoints/wav2lip_gan.pth", fps="25", pads=("0", "10", "0", "0"), det="16", batch="128", resize="1") -> list[str]:
    return [
        "/py/bin/python", "inference.py",
        "--checkpoint_path", ckpt,
        "--face", str(ws.inputs / face),
        "--audio", str(ws.inputs / "audio.wav"),
        "--outfile", "results/result.mp4",
        "--fps", fps,
        "--pads", *pads,
        "--face_det_batch_size", det,
        "--wav2lip_batch_size", batch,
        "--resize_factor", resize,
    ]  # fmt: skip


def test_wav2lip_default_argv(ws):
    assert w2l_argv(ws) == w2l_base(ws)


@pytest.mark.parametrize(
    ("opts", "extra", "base_kw"),
    [
        ({"wav2lip_checkpoint": "wav2lip"}, [], {"ckpt": "checkpoints/wav2lip.pth"}),
        ({"wav2lip_checkpoint": "/models/mine.pth"}, [], {"ckpt": "checkpoints/user_model.pth"}),
        ({"wav2lip_pads": (1, 20, 3, 4)}, [], {"pads": ("1", "20", "3", "4")}),
        ({"wav2lip_static": True}, ["--static", "True"], {}),
        ({"wav2lip_static": False}, [], {}),  # upstream's type=bool: passing anything would mean True
        ({"wav2lip_nosmooth": True}, ["--nosmooth"], {}),
        ({"wav2lip_batch_size": 8}, [], {"batch": "8"}),
        ({"wav2lip_face_det_batch_size": 2}, [], {"det": "2"}),
        # X1 Y1 X2 Y2 on our side, top bottom left right upstream
        ({"wav2lip_box": (90, 40, 300, 330)}, ["--box", "40", "330", "90", "300"], {}),
    ],
)
def test_wav2lip_option_argv(ws, opts, extra, base_kw):
    assert w2l_argv(ws, **opts) == w2l_base(ws, **base_kw) + extra


@pytest.mark.parametrize(
    ("opts", "extra", "base_kw"),
    [
        ({"wav2lip_resize_factor": 2}, [], {"resize": "2"}),
        ({"wav2lip_crop": (10, 20, 300, -1)}, ["--crop", "20", "-1", "10", "300"], {}),
        ({"wav2lip_crop": (0, 0, -1, -1)}, ["--crop", "0", "-1", "0", "-1"], {}),
        ({"wav2lip_rotate": True}, ["--rotate"], {}),
    ],
)
def test_wav2lip_video_only_option_argv(ws, opts, extra, base_kw):
    assert w2l_argv(ws, video=True, **opts) == w2l_base(ws, face="face.mp4", **base_kw) + extra


def test_wav2lip_everything_at_once(ws):
    argv = w2l_argv(
        ws, video=True, fps=29.97, wav2lip_static=True, wav2lip_crop=(1, 2, 3, 4), wav2lip_box=(5, 6, 7, 8), wav2lip_rotate=True, wav2lip_nosmooth=True
    )
    assert argv == w2l_base(ws, face="face.mp4", fps="29.97") + [
        "--static", "True", "--crop", "2", "4", "1", "3", "--box", "6", "8", "5", "7", "--rotate", "--nosmooth",
    ]  # fmt: skip


def test_wav2lip_face_path_survives_upstreams_split(ws):
    """Upstream decides image vs video by ``face.split('.')[1]``: one dot, lower case."""
    face = w2l_argv(ws)[w2l_argv(ws).index("--face") + 1]
    assert face.split(".")[1] == "png"


def test_wav2lip_unsafe_workspace_path_is_passed_through_the_inputs_link(tmp_path):
    root = tmp_path / "has space.and.dots" / "lipsync-x"
    (root / "inputs").mkdir(parents=True)
    (root / "work").mkdir()
    wsu = Workspace(root)
    argv = w2l_argv(wsu)
    face = argv[argv.index("--face") + 1]
    assert face == "lipsync_inputs/face.png" and face.split(".")[1] == "png"
    assert argv[argv.index("--audio") + 1] == "lipsync_inputs/audio.wav"


@pytest.mark.parametrize(("device", "env"), [(CPU, {"CUDA_VISIBLE_DEVICES": ""}), (GPU1, {"CUDA_VISIBLE_DEVICES": "1"}), (GPU, {})])
def test_wav2lip_device_is_the_environment(ws, device, env):
    cmd = Wav2Lip().build_command(job(ws, device=device), Wav2LipOptions(), ws)
    assert cmd.env == env
    assert "--cpu" not in cmd.argv  # upstream has no such flag


def test_wav2lip_video_only_options_rejected_for_an_image():
    for opts in ({"wav2lip_resize_factor": 2}, {"wav2lip_crop": (0, 0, 10, 10)}, {"wav2lip_rotate": True}):
        with pytest.raises(UsageError, match="only applies to a face video"):
            Wav2Lip().validate(Wav2LipOptions(**opts), face_is_video=False)
        Wav2Lip().validate(Wav2LipOptions(**opts), face_is_video=True)


@pytest.mark.parametrize(
    "bad",
    [
        {"wav2lip_box": (10, 10, 5, 20)},
        {"wav2lip_box": (-1, 0, 5, 5)},
        {"wav2lip_crop": (10, 0, 5, -1)},
        {"wav2lip_pads": (0, -1, 0, 0)},
        {"wav2lip_batch_size": 0},
        {"wav2lip_checkpoint": " "},
        {"wav2lip_resize_factor": 0},
    ],
)
def test_wav2lip_bad_values(bad):
    with pytest.raises(ValidationError):
        Wav2LipOptions(**bad)


def test_wav2lip_required_checkpoints():
    e = Wav2Lip()
    names = lambda **o: [c.name for c in e.required_checkpoints(Wav2LipOptions(**o))]
    assert names() == ["wav2lip_gan.pth", "s3fd.pth"]
    assert names(wav2lip_checkpoint="wav2lip") == ["wav2lip.pth", "s3fd.pth"]
    assert names(wav2lip_box=(1, 2, 3, 4)) == ["wav2lip_gan.pth"]  # --box skips the detector
    assert names(wav2lip_checkpoint="/x/y.pth", wav2lip_box=(1, 2, 3, 4)) == []
    assert e.user_files(Wav2LipOptions(wav2lip_checkpoint="~/m.pth")) == {"checkpoints/user_model.pth": Path("~/m.pth").expanduser()}
    # s3fd goes where upstream's detector looks for it (next to its module)
    assert e.checkpoint("s3fd.pth").dest == "face_detection/detection/sfd/s3fd.pth"


def test_wav2lip_find_output(ws):
    e = Wav2Lip()
    with pytest.raises(EngineOutputMissingError, match="missing"):
        e.find_output(ws, "")
    (ws.results / "result.mp4").write_bytes(b"")
    with pytest.raises(EngineOutputMissingError, match="empty"):
        e.find_output(ws, "")
    (ws.results / "result.mp4").write_bytes(b"data")
    assert e.find_output(ws, "") == ws.results / "result.mp4"


# -- SadTalker: argv and presets ------------------------------------------------------------------------


def st_argv(ws, device=CPU, **opts) -> list[str]:
    cmd = SadTalker().build_command(job(ws, device=device), SadTalkerOptions(**opts), ws)
    assert cmd.cwd == ws.work
    return cmd.argv


def st_base(ws, size="256", preprocess="crop", scale="1", pose="0", batch="2") -> list[str]:
    return [
        "/py/bin/python", "inference.py",
        "--driven_audio", str(ws.inputs / "audio.wav"),
        "--source_image", str(ws.inputs / "face.png"),
        "--checkpoint_dir", "checkpoints",
        "--result_dir", "results",
        "--size", size,
        "--preprocess", preprocess,
        "--expression_scale", scale,
        "--pose_style", pose,
        "--batch_size", batch,
    ]  # fmt: skip


def test_sadtalker_default_argv(ws):
    # this tool keeps the head still by default; --cpu because the device is the CPU
    assert st_argv(ws) == st_base(ws) + ["--still", "--cpu"]


@pytest.mark.parametrize(
    ("opts", "base_kw", "extra"),
    [
        ({"preprocess": "full"}, {"preprocess": "full"}, ["--still"]),
        ({"preprocess": "extreme_crop"}, {"preprocess": "extcrop"}, ["--still"]),  # the alias
        ({"preprocess": "resize"}, {"preprocess": "resize"}, ["--still"]),
        ({"preprocess": "extfull"}, {"preprocess": "extfull"}, ["--still"]),
        ({"expression_scale": 1.3}, {"scale": "1.3"}, ["--still"]),
        ({"still": False}, {}, []),
        ({"enhancer": "gfpgan"}, {}, ["--still", "--enhancer", "gfpgan"]),
        ({"enhancer": "RestoreFormer"}, {}, ["--still", "--enhancer", "RestoreFormer"]),
        ({"background_enhancer": "realesrgan"}, {}, ["--still", "--background_enhancer", "realesrgan"]),
        ({"pose_style": 12}, {"pose": "12"}, ["--still"]),
        ({"sadtalker_batch_size": 16}, {"batch": "16"}, ["--still"]),
        ({"input_yaw": "0,20,-20"}, {}, ["--still", "--input_yaw", "0", "20", "-20"]),
        ({"input_pitch": [5, -5]}, {}, ["--still", "--input_pitch", "5", "-5"]),
        ({"input_roll": "10 0"}, {}, ["--still", "--input_roll", "10", "0"]),
    ],
)
def test_sadtalker_option_argv(ws, opts, base_kw, extra):
    assert st_argv(ws, device=GPU, **opts) == st_base(ws, **base_kw) + extra


def test_sadtalker_reference_videos_are_staged_inputs(ws, tmp_path):
    argv = st_argv(ws, device=GPU, ref_eyeblink=tmp_path / "blink video.MOV", ref_pose=tmp_path / "pose.mp4")
    assert argv == st_base(ws) + ["--still", "--ref_eyeblink", str(ws.inputs / "ref_eyeblink.mp4"), "--ref_pose", str(ws.inputs / "ref_pose.mp4")]
    assert SadTalker().staged_refs(SadTalkerOptions(ref_eyeblink=tmp_path / "b.mov")) == {"ref_eyeblink": tmp_path / "b.mov"}


def test_sadtalker_resolution_is_size(ws):
    assert st_argv(ws, device=GPU, resolution=512) == st_base(ws, size="512") + ["--still"]
    assert st_argv(ws, device=GPU, resolution=256, preset="fullbody") == st_base(ws, preprocess="full") + ["--still"]


#: What each preset must produce, with the tool's defaults for the rest.
PRESET_ARGV = {
    "default": ({}, ["--still"]),
    "natural": ({"pose": "45"}, ["--still"]),
    "expressive": ({"pose": "45", "scale": "1.3"}, ["--still"]),
    "professional": ({"scale": "0.8"}, ["--still"]),
    "fullbody": ({"preprocess": "full"}, ["--still"]),
}


def test_every_preset_is_covered():
    assert set(PRESET_ARGV) == set(PRESETS) == set(SadTalkerOptions.model_fields["preset"].annotation.__args__[0].__args__)


@pytest.mark.parametrize("preset", sorted(PRESET_ARGV))
def test_sadtalker_preset_argv(ws, preset):
    base_kw, extra = PRESET_ARGV[preset]
    assert st_argv(ws, device=GPU, preset=preset) == st_base(ws, **base_kw) + extra


@pytest.mark.parametrize("preset", sorted(PRESET_ARGV))
def test_explicit_options_override_the_preset(ws, preset):
    argv = st_argv(ws, device=GPU, preset=preset, pose_style=3, expression_scale=2.0, still=False, preprocess="resize")
    assert argv == st_base(ws, preprocess="resize", pose="3", scale="2")


def test_preset_resolution_is_reported_values():
    r = SadTalkerOptions(preset="expressive", pose_style=7).resolved()
    assert (r.pose_style, r.expression_scale, r.still, r.preprocess, r.sadtalker_batch_size) == (7, 1.3, True, "crop", 2)
    assert SadTalkerOptions().resolved().model_dump(exclude_none=True) == DEFAULTS
    # resolving twice changes nothing
    assert r.resolved() == r


@pytest.mark.parametrize(("device", "env", "cpu_flag"), [(CPU, {"CUDA_VISIBLE_DEVICES": ""}, True), (GPU1, {"CUDA_VISIBLE_DEVICES": "1"}, False), (GPU, {}, False)])
def test_sadtalker_device(ws, device, env, cpu_flag):
    cmd = SadTalker().build_command(job(ws, device=device), SadTalkerOptions(), ws)
    assert cmd.env == env
    assert ("--cpu" in cmd.argv) is cpu_flag


def test_sadtalker_required_checkpoints(tmp_path):
    e = SadTalker()
    names = lambda res=256, **o: [c.name for c in e.required_checkpoints(SadTalkerOptions(resolution=res, **o))]
    face = ["alignment_WFLW_4HG.pth", "detection_Resnet50_Final.pth"]
    assert names() == ["SadTalker_V0.0.2_256.safetensors", "mapping_00229-model.pth.tar", *face]
    assert names(512, preprocess="full") == ["SadTalker_V0.0.2_512.safetensors", "mapping_00109-model.pth.tar", *face]
    assert names(preset="fullbody")[1] == "mapping_00109-model.pth.tar"
    assert names(enhancer="gfpgan")[-2:] == ["GFPGANv1.4.pth", "parsing_parsenet.pth"]
    assert names(enhancer="RestoreFormer")[-2:] == ["RestoreFormer.pth", "parsing_parsenet.pth"]
    assert names(background_enhancer="realesrgan")[-1] == "RealESRGAN_x2plus.pth"
    # a user's checkpoint dir replaces what it holds
    mine = tmp_path / "ckpts"
    mine.mkdir()
    (mine / "mapping_00229-model.pth.tar").write_bytes(b"x")
    assert "mapping_00229-model.pth.tar" not in names(checkpoint_dir=mine)
    assert e.user_files(SadTalkerOptions(checkpoint_dir=mine)) == {"checkpoints/mapping_00229-model.pth.tar": mine / "mapping_00229-model.pth.tar"}


def test_sadtalker_checkpoints_go_where_upstream_reads_them():
    dests = {c.name: c.dest for c in SadTalker.checkpoints}
    assert dests["SadTalker_V0.0.2_256.safetensors"] == "checkpoints/SadTalker_V0.0.2_256.safetensors"
    assert dests["mapping_00229-model.pth.tar"] == "checkpoints/mapping_00229-model.pth.tar"
    # facexlib's detector and landmarks, and GFPGAN, are read from gfpgan/weights relative to the CWD
    for name in ("alignment_WFLW_4HG.pth", "detection_Resnet50_Final.pth", "GFPGANv1.4.pth", "parsing_parsenet.pth"):
        assert dests[name] == f"gfpgan/weights/{name}"
    realesrgan = SadTalker().checkpoint("RealESRGAN_x2plus.pth")
    assert realesrgan.serves_url == "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth"


def test_sadtalker_rejects_a_face_video_and_missing_dirs(tmp_path):
    with pytest.raises(UsageError, match="still image"):
        SadTalker().validate(SadTalkerOptions(), face_is_video=True)
    with pytest.raises(UsageError, match="is not a folder"):
        SadTalker().validate(SadTalkerOptions(checkpoint_dir=tmp_path / "nope"), face_is_video=False)


@pytest.mark.parametrize("bad", [{"pose_style": 46}, {"expression_scale": 0}, {"input_yaw": "0,100"}, {"input_yaw": "a,b"}, {"preprocess": "zoom"}, {"sadtalker_batch_size": 0}])
def test_sadtalker_bad_values(bad):
    with pytest.raises(ValidationError):
        SadTalkerOptions(**bad)


def test_sadtalker_find_output_reads_upstreams_last_line(ws):
    e = SadTalker()
    (ws.results / "2026_11_22_01.02.03.mp4").write_bytes(b"video")
    log = "The generated video is named ./results/2026_11_22_01.02.03/face##audio.mp4\nThe generated video is named: results/2026_11_22_01.02.03.mp4\n"
    assert e.find_output(ws, log) == ws.work / "results/2026_11_22_01.02.03.mp4"
    # without the line, the one video in results/
    assert e.find_output(ws, "") == ws.results / "2026_11_22_01.02.03.mp4"


def test_sadtalker_find_output_missing(ws):
    with pytest.raises(EngineOutputMissingError):
        SadTalker().find_output(ws, "Can't get the coeffs of the input\n")


# -- options models: unknown fields, and the CLI exposes exactly the same set ------------------------------


@pytest.mark.parametrize("cls", [Wav2LipOptions, SadTalkerOptions])
def test_options_reject_unknown_fields(cls):
    with pytest.raises(ValidationError, match="extra"):
        cls(not_an_option=1)


def test_make_options_names_the_owner_of_a_stray_option():
    with pytest.raises(UsageError, match="belongs to the sadtalker engine"):
        make_options(get_engine("wav2lip"), {"preset": "natural"})
    with pytest.raises(UsageError, match="belongs to the wav2lip engine"):
        make_options(get_engine("sadtalker"), {"wav2lip_box": (1, 2, 3, 4)})
    with pytest.raises(UsageError, match="unknown option"):
        make_options(get_engine("sadtalker"), {"bogus": 1})


def test_cli_and_api_expose_the_same_engine_options():
    from lipsync_tool.cli import engine_parameters

    cli = {p.name for p in engine_parameters()}
    api = set(Wav2LipOptions.model_fields) | set(SadTalkerOptions.model_fields)
    assert cli == api


def _capture_pipeline_kwargs(monkeypatch) -> dict:
    seen: dict = {}

    engine_fields = set(Wav2LipOptions.model_fields) | set(SadTalkerOptions.model_fields)

    def fake_pipeline(engine, *, observer=None, **kwargs):
        seen.update({k: v for k, v in kwargs.items() if k in engine_fields}, engine=engine)
        raise UsageError("stopped by the test")

    monkeypatch.setattr("lipsync_tool.pipeline.LipSyncPipeline", fake_pipeline)
    return seen


def test_cli_passes_engine_options_to_the_pipeline(monkeypatch, cli, tmp_path):
    seen = _capture_pipeline_kwargs(monkeypatch)
    r = cli(
        tmp_path / "a.png", tmp_path / "a.wav", tmp_path / "o.mp4", "--engine", "sadtalker",
        "--preset", "expressive", "--preprocess", "extreme_crop", "--expression-scale", "1.5", "--enhancer", "gfpgan",
        "--background-enhancer", "realesrgan", "--pose-style", "4", "--sadtalker-batch-size", "8", "--input-yaw", "0,20",
        "--input-pitch", "5", "--input-roll", "-5,5", "--still",
    )  # fmt: skip
    assert r.code == 2, r.output
    assert seen == {
        "engine": "sadtalker", "preset": "expressive", "preprocess": "extreme_crop", "expression_scale": 1.5, "enhancer": "gfpgan",
        "background_enhancer": "realesrgan", "pose_style": 4, "sadtalker_batch_size": 8, "input_yaw": "0,20", "input_pitch": "5",
        "input_roll": "-5,5", "still": True,
    }  # fmt: skip
    seen.clear()
    r = cli(
        tmp_path / "a.png", tmp_path / "a.wav", tmp_path / "o.mp4", "--engine", "wav2lip", "--wav2lip-checkpoint", "wav2lip",
        "--wav2lip-pads", "1", "2", "3", "4", "--wav2lip-static", "--wav2lip-nosmooth", "--wav2lip-batch-size", "4",
        "--wav2lip-face-det-batch-size", "2", "--wav2lip-resize-factor", "2", "--wav2lip-crop", "0", "0", "-1", "-1",
        "--wav2lip-box", "1", "2", "30", "40", "--wav2lip-rotate",
    )  # fmt: skip
    assert r.code == 2, r.output
    assert seen == {
        "engine": "wav2lip", "wav2lip_checkpoint": "wav2lip", "wav2lip_pads": (1, 2, 3, 4), "wav2lip_static": True, "wav2lip_nosmooth": True,
        "wav2lip_batch_size": 4, "wav2lip_face_det_batch_size": 2, "wav2lip_resize_factor": 2, "wav2lip_crop": (0, 0, -1, -1),
        "wav2lip_box": (1, 2, 30, 40), "wav2lip_rotate": True,
    }  # fmt: skip
    # and the values the CLI hands over make the same options as the API's
    make_options(get_engine("wav2lip"), {k: v for k, v in seen.items() if k != "engine"})


def test_cli_no_still_reaches_the_engine(monkeypatch, cli, tmp_path):
    seen = _capture_pipeline_kwargs(monkeypatch)
    cli(tmp_path / "a.png", tmp_path / "a.wav", tmp_path / "o.mp4", "--engine", "sadtalker", "--no-still")
    assert seen == {"engine": "sadtalker", "still": False}


def test_wav2lip_options_via_the_api_build_the_same_argv(ws):
    opts = make_options(get_engine("wav2lip"), {"wav2lip_box": [90, 40, 300, 330], "wav2lip_static": True})
    assert Wav2Lip().build_command(job(ws), opts, ws).argv == w2l_base(ws) + ["--static", "True", "--box", "40", "330", "90", "300"]


# -- the working dir upstream sees ----------------------------------------------------------------


def _fake_repo(root: Path, files: list[str]) -> Path:
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"# {rel}\n")
    return root


@pytest.mark.parametrize(
    ("engine", "repo_files", "options"),
    [
        (Wav2Lip(), ["inference.py", "audio.py", "face_detection/detection/sfd/sfd_detector.py", "models/wav2lip.py", "temp/README.md"], Wav2LipOptions()),
        (SadTalker(), ["inference.py", "src/config/facerender.yaml", "src/utils/croper.py", "gfpgan/weights/.keep"], SadTalkerOptions(enhancer="gfpgan")),
    ],
)
def test_working_dir_layout(tmp_path, engine, repo_files, options):
    from lipsync_tool.workspace import build_link_farm

    repo = _fake_repo(tmp_path / "repo", repo_files)
    store = tmp_path / "store"
    store.mkdir()
    links = {}
    for spec in engine.required_checkpoints(options):
        f = store / spec.name
        f.write_bytes(b"w")
        links[spec.dest] = f
    work = tmp_path / "ws" / "work"
    build_link_farm(repo, work, engine.entry_script, links)
    # the entry script is a real copy (so sys.path[0] is the working dir, not the cache)
    assert (work / "inference.py").is_file() and not (work / "inference.py").is_symlink()
    # every other upstream file is a link; every directory is real
    for rel in repo_files[1:]:
        assert (work / rel).is_symlink(), rel
        assert (work / rel).parent.is_dir() and not (work / rel).parent.is_symlink()
    # checkpoints are linked where upstream reads them
    for dest, src in links.items():
        assert (work / dest).is_symlink() and (work / dest).resolve() == src.resolve()
    # upstream's relative outputs land in the run's own dirs
    assert (work / "results").is_dir() and (work / "temp").is_dir()
    (work / "temp" / "result.avi").write_bytes(b"x")
    assert not (repo / "temp" / "result.avi").exists()


# -- error translation, fed with upstream's real output -----------------------------------------------------


def read_error(name: str) -> str:
    return (ERRORS / name).read_text(encoding="utf-8", errors="replace")


def test_captured_error_logs_are_present():
    expected = {
        "wav2lip_face_not_detected.log",
        "wav2lip_image_too_big.log",
        "wav2lip_exit0_no_ffmpeg.log",
        "sadtalker_no_face.log",
        "torch_weights_only_refused.log",
        "torch_cpu_oom.log",
    }
    assert expected <= {p.name for p in ERRORS.glob("*.log")}


def test_wav2lip_face_not_detected(ws):
    text = read_error("wav2lip_face_not_detected.log")
    assert "ValueError: Face not detected!" in text  # upstream's own words
    err = Wav2Lip().translate_error(text, 1, ws)
    assert isinstance(err, FaceNotFoundError) and isinstance(err, InputError)
    assert "--wav2lip-box" in err.hint and "--wav2lip-pads" in err.hint and "crop" in err.hint


def test_wav2lip_face_not_detected_names_the_faulty_frame(ws):
    (ws.work / "temp").mkdir()
    (ws.work / "temp" / "faulty_frame.jpg").write_bytes(b"jpg")
    err = Wav2Lip().translate_error(read_error("wav2lip_face_not_detected.log"), 1, ws)
    assert str(ws.work / "temp" / "faulty_frame.jpg") in err.message


def test_wav2lip_image_too_big(ws):
    text = read_error("wav2lip_image_too_big.log")
    assert "RuntimeError: Image too big to run face detection on GPU" in text
    err = Wav2Lip().translate_error(text, 1, ws)
    assert isinstance(err, EngineOOMError)
    assert "--wav2lip-resize-factor" in err.hint


def test_wav2lip_exit_zero_without_output(ws):
    """Upstream ignores its final ffmpeg's exit code: exit 0, no video."""
    text = read_error("wav2lip_exit0_no_ffmpeg.log")
    e = Wav2Lip()
    translated = e.translate_error(text, 0, ws)
    with pytest.raises(EngineOutputMissingError) as info:
        e.find_output(ws, text)
    assert isinstance(translated, EngineError) and "ffmpeg" in translated.message
    assert "ffmpeg: not found" in info.value.log_tail


def test_sadtalker_no_face(ws):
    text = read_error("sadtalker_no_face.log")
    assert "TypeError: exceptions must derive from BaseException" in text
    err = SadTalker().translate_error(text, 1, ws)
    assert isinstance(err, FaceNotFoundError)
    assert "--preprocess" in err.hint and "crop" in err.hint


def test_sadtalker_paste_at_the_image_edge(ws):
    # Composed in the format of the failure seen in tests/test_upstream_face_index_sadtalker.py (a face whose crop
    # reaches the image's right edge, --preprocess full); tqdm's "seamlessClone::" bar alone is no error.
    text = (
        "seamlessClone::   0%|          | 0/10 [00:00<?, ?it/s]\n"
        "Traceback (most recent call last):\n"
        '  File "work/src/utils/paste_pic.py", line 64, in paste_pic\n'
        "    gen_img = cv2.seamlessClone(p, full_img, mask, location, cv2.NORMAL_CLONE)\n"
        "cv2.error: OpenCV(5.0.0) matrix.cpp:808: error: (-215:Assertion failed) 0 <= roi.x && 0 <= roi.width && "
        "roi.x + roi.width <= m.cols && 0 <= roi.y && 0 <= roi.height && roi.y + roi.height <= m.rows in function 'Mat'\n"
    )
    err = SadTalker().translate_error(text, 1, ws)
    assert isinstance(err, EngineError) and "reaches the image's edge" in err.message and "--preprocess crop" in err.hint
    assert SadTalker().translate_error("seamlessClone:: 100%|##########| 10/10\n", 1, ws) is None


def test_torch_weights_only_refusal(ws):
    text = read_error("torch_weights_only_refused.log")
    assert "Weights only load failed" in text
    for engine in (Wav2Lip(), SadTalker()):
        err = engine.translate_error(text, 1, ws)
        assert isinstance(err, EngineError) and "weights_only" in err.hint


def test_cpu_out_of_memory(ws):
    text = read_error("torch_cpu_oom.log")
    assert "DefaultCPUAllocator: can't allocate memory" in text
    for engine, hint in ((Wav2Lip(), "--wav2lip-batch-size"), (SadTalker(), "--sadtalker-batch-size")):
        err = engine.translate_error(text, 1, ws)
        assert isinstance(err, EngineOOMError) and hint in err.hint


#: torch's CUDA allocator message: the text before "Tried to allocate" is the
#: literal in libc10_cuda.so (torch 2.14.1); no GPU was at hand to capture a run.
CUDA_OOM = (
    "Traceback (most recent call last):\n"
    '  File "inference.py", line 245, in main\n'
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.56 GiB of which 1.17 GiB is free. "
    "Including non-PyTorch memory, this process has 13.38 GiB memory in use. Of the allocated memory 12.90 GiB is allocated by PyTorch, "
    "and 360.15 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.\n"
)


def test_cuda_out_of_memory(ws):
    w = Wav2Lip().translate_error(CUDA_OOM, 1, ws)
    s = SadTalker().translate_error(CUDA_OOM, 1, ws)
    assert isinstance(w, EngineOOMError) and isinstance(s, EngineOOMError)
    for part in ("--wav2lip-batch-size", "--wav2lip-face-det-batch-size", "--wav2lip-resize-factor", "PYTORCH_CUDA_ALLOC_CONF"):
        assert part in w.hint
    for part in ("--sadtalker-batch-size", "--resolution 256", "PYTORCH_CUDA_ALLOC_CONF"):
        assert part in s.hint


def test_unknown_failures_are_left_to_the_pipeline(ws):
    text = "Traceback (most recent call last):\nKeyError: 'state_dict'\n"
    assert Wav2Lip().translate_error(text, 1, ws) is None
    assert SadTalker().translate_error(text, 1, ws) is None


# -- runtime: device resolution and --install-deps, with a stand-in interpreter ---------------------------


def fake_python(tmp_path: Path, probe: dict, installed: dict | None = None) -> tuple[str, Path]:
    """An executable that answers like the engine's interpreter: ``-c`` code
    gets *probe* (the CUDA probe) or, asked about requirements, their state
    from *installed*; ``-m pip …`` is recorded in calls.txt and succeeds."""
    import json
    import stat
    import sys

    calls = tmp_path / "calls.txt"
    script = tmp_path / "python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"PROBE, STATE, CALLS = {json.dumps(probe)!r}, {json.dumps(installed or {})!r}, {str(calls)!r}\n"
        "if sys.argv[1] == '-m':\n"
        "    open(CALLS, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "elif 'specifier' in sys.argv[2]:\n"
        "    state = json.loads(STATE)\n"
        "    print(json.dumps({r: state.get(r) for r in json.loads(sys.argv[3])}))\n"
        "else:\n"
        "    print(PROBE)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), calls


def test_device_cpu_needs_no_probe():
    from lipsync_tool.runtime import resolve_device

    d = resolve_device("cpu", "/nonexistent/python", driver_present=True).device
    assert d == Device("cpu", reason="--device cpu") and d.env() == {"CUDA_VISIBLE_DEVICES": ""}
    d = resolve_device("auto", "/nonexistent/python", driver_present=False).device
    assert d.kind == "cpu" and "no GPU driver" in d.reason


def test_device_auto_and_explicit_cuda(tmp_path):
    from lipsync_tool.errors import DependencyError, DeviceError
    from lipsync_tool.runtime import resolve_device

    gpu, _ = fake_python(tmp_path, {"torch": "2.14.1", "cuda": True, "count": 1, "names": ["Fake GPU"]})
    assert resolve_device("auto", gpu, driver_present=True).device.kind == "cuda"
    assert resolve_device("cuda:0", gpu, driver_present=True).device.env() == {"CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(DeviceError, match="only 1 GPU"):
        resolve_device("cuda:1", gpu, driver_present=True)
    (tmp_path / "cpu").mkdir()
    cpu_only, _ = fake_python(tmp_path / "cpu", {"torch": "2.13.0+cpu", "cuda": False, "count": 0, "names": []})
    d = resolve_device("auto", cpu_only, driver_present=True).device
    assert d.kind == "cpu" and "CPU-only" in d.reason  # said out loud, not a silent fallback
    with pytest.raises(DeviceError, match="sees no usable GPU"):
        resolve_device("cuda", cpu_only, driver_present=True)
    (tmp_path / "none").mkdir()
    no_torch, _ = fake_python(tmp_path / "none", {"torch": None})
    with pytest.raises(DependencyError, match="torch is not installed"):
        resolve_device("auto", no_torch, driver_present=True)


def test_install_deps_order_and_skips(tmp_path):
    """torch first; basicsr & co. last, without build isolation or their declared deps; satisfied ones skipped."""
    from lipsync_tool.runtime import install_deps, install_plan

    engine = SadTalker()
    satisfied = {"torch>=2.0": "2.14.1", "torchvision>=0.17": "0.29.1", "numpy>=1.24": "2.4.6"}
    all_reqs = [r for _, reqs in engine.requirements for r in reqs]
    state = {r: satisfied.get(r) for r in all_reqs}
    py, calls = fake_python(tmp_path, {}, state)
    plan = install_plan(engine, py)
    assert [args for args, _ in plan] == [(), ("--no-build-isolation", "--no-deps")]
    assert "numpy>=1.24" not in plan[0][1] and "opencv-python-headless>=4.6" in plan[0][1] and "setuptools" in plan[0][1]
    assert plan[1][1] == ["basicsr>=1.4.2", "facexlib>=0.3.0", "gfpgan>=1.3.8", "realesrgan>=0.3.0"]
    installed = install_deps(engine, py, log_path=tmp_path / "install.log")
    assert installed == plan[0][1] + plan[1][1]
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("-m pip install --disable-pip-version-check ") and "torch" not in lines[0].split()
    assert lines[1] == "-m pip install --disable-pip-version-check --no-build-isolation --no-deps basicsr>=1.4.2 facexlib>=0.3.0 gfpgan>=1.3.8 realesrgan>=0.3.0"


def test_install_requirements_never_name_opencv_python():
    """The GUI build of OpenCV would overwrite the headless cv2 (and needs libGL)."""
    for engine in (Wav2Lip, SadTalker):
        reqs = [r for _, rs in engine.requirements for r in rs]
        assert not any(r.split(">")[0].split("=")[0] == "opencv-python" for r in reqs)
        assert reqs[0].startswith("torch")
