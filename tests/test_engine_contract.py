"""The engine contract: hooks and their defaults, per-job files, face input,
``entry_module``, option metadata, and a third engine defined here in one
class (what a new engine module would hold) that the registry, the options
and the resources pick up with no change elsewhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import pytest
from pydantic import Field

from lipsync_tool import engines
from lipsync_tool.annotations import mentions_path, shape
from lipsync_tool.engines import engines_accepting, flag_of, get_engine, make_options, meta_of, option_owner
from lipsync_tool.engines.base import (
    CheckpointSpec,
    Command,
    Device,
    Engine,
    EngineOptions,
    Job,
    OptionMeta,
    RepoSpec,
    Workspace,
    field_cli,
    option_meta,
    tail_lines,
)
from lipsync_tool.engines.sadtalker import SadTalker, SadTalkerOptions
from lipsync_tool.engines.wav2lip import Wav2Lip, Wav2LipOptions
from lipsync_tool.errors import EngineError, FaceNotFoundError, LipsyncError, UsageError, error_dict

CPU = Device("cpu", reason="test")
GPU = Device("cuda", 0, reason="test")


# -- a third engine: everything it needs is in this one class ---------------------------------------


class EchoOptions(EngineOptions):
    echo_voice: Literal["low", "high"] = Field("low", json_schema_extra=field_cli("--echo-voice", help="Pitch of the echo.", elsewhere="warn"))
    echo_gain: float = Field(1.0, gt=0, json_schema_extra=field_cli("--echo-gain", help="Loudness of the echo.", metavar="X"))
    echo_notes: str = "not a CLI option"


class Echo(Engine):
    name = "echo"
    display_name = "Echo"
    Options = EchoOptions
    repo = RepoSpec(url="https://example.org/echo.git", commit="a" * 40)
    checkpoints = (CheckpointSpec(name="echo.pt", urls=("https://example.org/echo.pt",), size=3, sha256="b" * 64, dest="weights/echo.pt"),)
    entry_script = None
    entry_module = "echo_upstream.main"
    face_input = "video"

    def required_checkpoints(self, options):
        return list(self.checkpoints)

    def build_command(self, job: Job, options: EngineOptions, ws: Workspace) -> Command:
        assert isinstance(options, EchoOptions)
        config = f"voice: {options.echo_voice}\ngain: {options.echo_gain}\n"
        argv = [*self.entry_argv(job.python), "--config", "job.yaml", "--face", ws.engine_path(job.face), "--out", "results/out.mp4"]
        return Command(argv, ws.work, job.device.env(), files={"job.yaml": config})

    def find_output(self, ws: Workspace, log_text: str) -> Path:
        out = ws.results / "out.mp4"
        if not out.is_file():
            raise self.missing_output(ws, f"{out} is missing", tail_lines(log_text))
        return out


@pytest.fixture
def echo():
    engines.register(Echo)
    yield Echo()
    engines.unregister("echo")


def job(ws: Workspace, *, device: Device = CPU, video: bool = False) -> Job:
    face = ws.inputs / ("face.mp4" if video else "face.png")
    return Job(face=face, audio=ws.inputs / "audio.wav", face_is_video=video, fps=25.0, device=device, python="/py/bin/python")


def test_a_third_engine_registers_and_builds_its_argv(echo, ws):
    assert "echo" in engines.available_engines()
    engine = get_engine("echo")
    options = make_options(engine, {"echo_voice": "high", "echo_gain": 2})
    cmd = engine.build_command(job(ws, video=True), options, ws)
    assert cmd.argv == ["/py/bin/python", "-m", "echo_upstream.main", "--config", "job.yaml", "--face", str(ws.inputs / "face.mp4"), "--out", "results/out.mp4"]
    assert cmd.files == {"job.yaml": "voice: high\ngain: 2.0\n"}
    assert cmd.cwd == ws.work and cmd.env == {"CUDA_VISIBLE_DEVICES": ""}
    assert option_owner("echo_gain") == ["echo"] and flag_of("echo_gain") == "--echo-gain"


def test_a_third_engine_reaches_the_cli_the_api_and_the_resources(echo, tmp_path):
    from lipsync_tool.cli import engine_parameters
    from lipsync_tool.pipeline import LipSyncPipeline
    from lipsync_tool.resources import managers

    params = {p.name: p for p in engine_parameters()}
    assert {"echo_voice", "echo_gain"} <= set(params) and "echo_notes" not in params
    assert {o.name for o in LipSyncPipeline.options("echo") if o.engine == "echo"} == {"echo_voice", "echo_gain"}
    res = managers.resources_for("echo", tmp_path / "cache")
    assert type(res).__name__ == "EchoResources" and type(res) is managers.EchoResources and res.engine.name == "echo"
    assert res.status(make_options(res.engine, {})).files == {"echo.pt": "missing"}


def test_the_entry_module_is_run_with_dash_m(echo):
    assert echo.entry_argv("py") == ["py", "-m", "echo_upstream.main"]
    assert echo.entry_file == "echo_upstream/main.py" and echo.entry_copy is None
    for builtin in (SadTalker(), Wav2Lip()):
        assert builtin.entry_argv("py") == ["py", "inference.py"]
        assert builtin.entry_file == builtin.entry_copy == "inference.py"


def test_an_engine_without_an_entry_is_refused():
    class NoEntry(Echo):
        name = "noentry"
        entry_module = None

    with pytest.raises(ValueError, match="neither entry_script nor entry_module"):
        engines.register(NoEntry)
    with pytest.raises(TypeError, match="neither"):
        NoEntry().entry_argv("py")


# -- face input ----------------------------------------------------------------------------------


def test_face_input_says_what_the_face_may_be(echo):
    assert (SadTalker.face_input, Wav2Lip.face_input, Echo.face_input) == ("image", "either", "video")
    assert (SadTalker().supports_video_face, Wav2Lip().supports_video_face, echo.supports_video_face) == (False, True, True)
    assert (SadTalker().supports_image_face, Wav2Lip().supports_image_face, echo.supports_image_face) == (True, True, False)
    assert engines_accepting(video=True) == ["echo", "wav2lip"]
    assert engines_accepting(video=False) == ["sadtalker", "wav2lip"]


def test_a_plugin_that_still_says_supports_video_face_keeps_working():
    class OldPlugin(Echo):
        name = "old"
        supports_video_face = True

    class OldImageOnly(Echo):
        name = "old2"
        supports_video_face = False

    assert OldPlugin.face_input == "either" and OldPlugin().supports_video_face
    assert OldImageOnly.face_input == "image" and not OldImageOnly().supports_video_face


def test_a_bad_face_input_is_refused_at_registration():
    class Odd(Echo):
        name = "odd"
        face_input = "audio"  # type: ignore[assignment]

    with pytest.raises(ValueError, match="face_input"):
        engines.register(Odd)
    assert "odd" not in engines.available_engines()


# -- hooks ------------------------------------------------------------------------------------------


def test_hook_defaults_keep_todays_behaviour(echo):
    options = make_options(echo, {})
    assert echo.face_check_wanted(options) is True
    assert echo.face_hints(options) == []
    assert echo.run_warnings(options, CPU) == [] and echo.run_warnings(options, GPU) == []


def test_wav2lip_skips_the_face_check_with_a_fixed_box_and_hints_at_it():
    w = Wav2Lip()
    assert w.face_check_wanted(Wav2LipOptions()) is True
    assert w.face_check_wanted(Wav2LipOptions(wav2lip_box=(1, 2, 30, 40))) is False
    assert w.face_hints(Wav2LipOptions()) == ["pass --wav2lip-box"]
    assert SadTalker().face_hints(SadTalkerOptions()) == [] and SadTalker().face_check_wanted(SadTalkerOptions(preset="fullbody"))


def test_sadtalker_warns_that_the_background_enhancer_needs_a_gpu():
    s = SadTalker()
    on = SadTalkerOptions(enhancer="gfpgan", background_enhancer="realesrgan")
    assert s.run_warnings(on, CPU) == ["--background-enhancer runs on a GPU only; upstream skips it on the CPU"]
    assert s.run_warnings(on, GPU) == []
    assert s.run_warnings(SadTalkerOptions(), CPU) == []


def test_an_option_of_another_engine_can_be_ignored_with_a_warning(echo):
    # --echo-voice is declared elsewhere="warn": other engines accept it and say they ignore it
    w = get_engine("wav2lip")
    options = make_options(w, {"echo_voice": "high", "wav2lip_static": True})
    assert options.ignored == ("echo_voice",) and options.wav2lip_static is True
    assert w.run_warnings(options, GPU) == ["--echo-voice applies to Echo only; Wav2Lip ignores it"]
    assert make_options(w, {}).ignored == ()
    # ... but its value must still be one the owner accepts
    with pytest.raises(UsageError, match="'low' or 'high'"):
        make_options(w, {"echo_voice": "loud"})
    # an ordinary option of another engine is still refused
    with pytest.raises(UsageError, match="belongs to the echo engine"):
        make_options(w, {"echo_gain": 2.0})


# -- per-job files --------------------------------------------------------------------------------


def test_command_files_are_written_into_the_working_dir(ws, tmp_path):
    cache_file = tmp_path / "cache" / "config.yaml"
    cache_file.parent.mkdir()
    cache_file.write_text("upstream's\n")
    os.symlink(cache_file, ws.work / "config.yaml")  # the link farm's link into the cache
    cmd = Command(["py"], ws.work, files={"config.yaml": "mine\n", "conf/deep/x.bin": b"\x00\x01"})
    assert cmd.write_files() == [ws.work / "config.yaml", ws.work / "conf" / "deep" / "x.bin"]
    assert (ws.work / "config.yaml").read_text() == "mine\n" and not (ws.work / "config.yaml").is_symlink()
    assert cache_file.read_text() == "upstream's\n"  # the cache is never written
    assert (ws.work / "conf" / "deep" / "x.bin").read_bytes() == b"\x00\x01"
    assert Command(["py"], ws.work).files == {} and Command(["py"], ws.work).write_files() == []


def test_command_files_never_write_through_a_linked_directory(ws, tmp_path):
    shared = tmp_path / "cache" / "configs"
    shared.mkdir(parents=True)
    os.symlink(shared, ws.work / "configs")
    with pytest.raises(EngineError, match="link into the cache"):
        Command(["py"], ws.work, files={"configs/a.yaml": "x"}).write_files()
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.txt", "a/../../b", ""])
def test_command_files_stay_inside_the_working_dir(ws, bad):
    with pytest.raises(ValueError, match="relative and inside"):
        Command(["py"], ws.work, files={bad: "x"})


# -- option metadata: one reader ------------------------------------------------------------------------


def test_option_meta_reads_field_cli():
    meta = option_meta(SadTalkerOptions.model_fields["still"])
    assert meta == OptionMeta(flag="--still/--no-still", help=meta.help, metavar=None, aliases=(), elsewhere="reject")
    assert meta.name == "--still"
    assert option_meta(SadTalkerOptions.model_fields["preprocess"]).aliases == ("extreme_crop",)
    assert option_meta(Wav2LipOptions.model_fields["wav2lip_box"]).metavar == "X1 Y1 X2 Y2"
    assert option_meta(EchoOptions.model_fields["echo_notes"]) is None
    assert list(EchoOptions.cli_options()) == ["echo_voice", "echo_gain"]
    assert meta_of("wav2lip_static").name == "--wav2lip-static" and meta_of("not_an_option") is None


def test_every_builtin_option_has_metadata_and_a_unique_flag():
    flags = []
    for cls in (SadTalkerOptions, Wav2LipOptions):
        metas = cls.cli_options()
        assert set(metas) == set(cls.model_fields)
        flags += [m.name for m in metas.values()]
    assert len(flags) == len(set(flags))


# -- annotations: one walker ------------------------------------------------------------------------


def test_annotation_shapes():
    s = shape(Optional[Literal["a", "b"]])
    assert s.optional and s.choices == ("a", "b") and s.choice_type is str
    assert shape(Literal[256, 512]).choice_type is int and not shape(Literal[256, 512]).optional
    assert shape(Literal[1, "x"]).choice_type is None
    q = shape(tuple[int, int, int, int] | None)
    assert q.optional and q.items == (int, int, int, int) and q.is_tuple and not q.variadic
    v = shape(Optional[tuple[int, ...]])
    assert v.variadic and v.item is int and v.is_tuple and v.items is None
    assert shape(float) == shape(float) and shape(float).annotation is float and not shape(float).is_tuple
    u = shape(int | str | None)
    assert u.union and u.optional
    assert shape(Optional[Path]).annotation is Path


def test_annotations_that_mention_a_path():
    assert mentions_path(Path) and mentions_path(Optional[Path]) and mentions_path(tuple[Path, ...])
    assert not mentions_path(Optional[str]) and not mentions_path(Literal["a"])
    for cls, name in ((SadTalkerOptions, "ref_pose"), (SadTalkerOptions, "checkpoint_dir")):
        assert mentions_path(cls.model_fields[name].annotation)
    assert not mentions_path(Wav2LipOptions.model_fields["wav2lip_checkpoint"].annotation)


# -- error dicts: one builder --------------------------------------------------------------------------


def test_error_dicts():
    exc = FaceNotFoundError("no face", subject=Path("/x/face.png"), hint="Crop it.")
    assert exc.to_dict() == {"type": "FaceNotFoundError", "message": "no face", "subject": "/x/face.png", "hint": "Crop it."}
    assert error_dict(exc) == exc.to_dict()
    assert error_dict(LipsyncError("plain")) == {"type": "LipsyncError", "message": "plain", "subject": None, "hint": None}
    assert error_dict(ValueError("bad")) == {"type": "ValueError", "message": "bad"}


# -- resolution: an option of SadTalker's, which the other engines accept and ignore ----------------------


def test_resolution_is_a_sadtalker_option():
    s = SadTalker()
    names = lambda **o: [c.name for c in s.required_checkpoints(make_options(s, o))]
    assert names()[0] == "SadTalker_V0.0.2_256.safetensors" and SadTalkerOptions().resolved().resolution == 256
    assert names(resolution=512)[0] == "SadTalker_V0.0.2_512.safetensors" and "SadTalker_V0.0.2_256.safetensors" not in names(resolution=512)
    assert names(resolution=256, preset="expressive")[0] == "SadTalker_V0.0.2_256.safetensors"
    meta = option_meta(SadTalkerOptions.model_fields["resolution"])
    assert (meta.flag, meta.help, meta.elsewhere) == ("--resolution", "Face size, 256 or 512. (default: 256)", "warn")
    assert option_owner("resolution") == ["sadtalker"]
    with pytest.raises(UsageError, match="Input should be 256 or 512, not 300"):
        make_options(s, {"resolution": 300})


def test_other_engines_accept_resolution_and_warn_that_they_ignore_it():
    w = get_engine("wav2lip")
    options = make_options(w, {"resolution": 512})
    assert options.ignored == ("resolution",) and options.model_dump() == Wav2LipOptions().model_dump()
    assert w.required_checkpoints(options) == w.required_checkpoints(Wav2LipOptions())
    assert w.run_warnings(options, CPU) == ["--resolution applies to SadTalker only; Wav2Lip ignores it"]
    with pytest.raises(UsageError, match="Input should be 256 or 512, not 300"):
        make_options(w, {"resolution": 300})


def test_no_shared_model_knows_the_resolution():
    from lipsync_tool.config import RunOptions

    assert "resolution" not in RunOptions.model_fields and "resolution" not in Job.__dataclass_fields__


def test_a_run_of_another_engine_warns_that_it_ignores_resolution(fake_engine, cli, media, tmp_path):
    out = tmp_path / "o.mp4"
    r = cli(media.portrait(), media.audio(seconds=0.6), out, "--engine", "fake", "--resolution", "512", "--no-upscale")
    assert r.code == 0, r.output
    assert "--resolution applies to SadTalker only; Fake ignores it" in r.output
    r = cli(media.portrait(), media.audio(seconds=0.6), tmp_path / "p.mp4", "--engine", "fake", "--no-upscale")
    assert r.code == 0 and "ignores it" not in r.output
