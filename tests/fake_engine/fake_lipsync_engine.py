"""A fake engine for the tests: the real contract, a throwaway upstream.

Its repository and checkpoint come from environment variables that the test
fixtures set, so the same class works in-process and as an entry-point
plug-in of a ``lipsync-tool`` subprocess.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from lipsync_tool.engines.base import CheckpointSpec, Command, Engine, EngineOptions, Job, RepoSpec, Workspace, field_cli, format_number, tail_lines
from lipsync_tool.errors import FaceNotFoundError


class FakeOptions(EngineOptions):
    fake_mode: Literal["ok", "crash", "hang", "noout", "empty", "noface", "die"] = Field(
        "ok", json_schema_extra=field_cli("--fake-mode", help="How the fake engine behaves.")
    )
    fake_extra_seconds: float = Field(0.0, json_schema_extra=field_cli("--fake-extra-seconds", help="Render this much longer than the audio."))
    fake_sleep: float = Field(0.0, ge=0, json_schema_extra=field_cli("--fake-sleep", help="Seconds the fake engine sleeps before rendering."))
    fake_wav2lip_mux: bool = Field(False, json_schema_extra=field_cli("--fake-wav2lip-mux", help="Finish with Wav2Lip's shell-string ffmpeg mux."))
    fake_frame_delay: float = Field(0.0, ge=0, json_schema_extra=field_cli("--fake-frame-delay", help="Seconds the fake worker waits between batches of 8 frames."))
    fake_quality: Literal["off", "fast", "improved", "enhanced"] = Field(
        "off",
        json_schema_extra=field_cli("--fake-quality", help="off: the face unchanged; fast/improved/enhanced: a fake generator pasted as Wav2Lip's qualities do (worker only)."),
    )
    fake_mask_size: float | None = Field(None, gt=0, le=1, json_schema_extra=field_cli("--fake-mask-size", help="improved: the mouth mask's size."))
    fake_mask_feather: float | None = Field(None, ge=0, json_schema_extra=field_cli("--fake-mask-feather", help="improved: the mouth mask's feather."))
    fake_require_face_every_frame: bool = Field(
        False, json_schema_extra=field_cli("--fake-require-face-every-frame", help="Fail when a frame of the face has no face.")
    )
    fake_fail_on_run: int = Field(0, ge=0, json_schema_extra=field_cli("--fake-fail-on-run", help="Crash on the N-th invocation (counted in $FAKE_ENGINE_COUNTER)."))


def _repo() -> RepoSpec:
    return RepoSpec(url=os.environ.get("FAKE_ENGINE_REPO", "file:///nonexistent"), commit=os.environ.get("FAKE_ENGINE_COMMIT", "0" * 40))


def _checkpoints() -> tuple[CheckpointSpec, ...]:
    return (
        CheckpointSpec(
            name="fake.ckpt",
            urls=tuple(u for u in os.environ.get("FAKE_ENGINE_CKPT_URLS", "").split(" ") if u),
            size=int(os.environ.get("FAKE_ENGINE_CKPT_SIZE", "1")),
            sha256=os.environ.get("FAKE_ENGINE_CKPT_SHA256", "0" * 64),
            dest="models/fake.ckpt",
        ),
    )


class _Lazy:
    """Class attributes read from the environment when they are looked up."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, owner):
        return self.fn()


class FakeEngine(Engine):
    name = "fake"
    display_name = "Fake"
    Options = FakeOptions
    repo = _Lazy(_repo)  # type: ignore[assignment]
    checkpoints = _Lazy(_checkpoints)  # type: ignore[assignment]
    licence_notice = "The fake weights are for tests only."
    face_input = "either"
    native_fps = True
    ffmpeg_copy_video_to = "results/result.mp4"
    worker_adapter = str(Path(__file__).with_name("fake_worker_adapter.py"))
    #: The advisor's face-alignment run would slow every fake job; tests/test_advisor.py turns it on.
    portrait_advice = False
    #: The worker adapter's fake detector honours a face hint (--face-index); the fake upstream CLI cannot.
    face_hint_runners = ("worker",)

    def required_checkpoints(self, options):
        return [self.checkpoint("fake.ckpt")]

    def preprocess_key(self, options):
        # fast/improved cache every frame of the face, off only the first.
        return {"size": 256} if options.fake_quality == "off" else {"size": 256, "frames": "all"}

    def build_command(self, job: Job, options: EngineOptions, ws: Workspace) -> Command:
        assert isinstance(options, FakeOptions)
        argv = [
            *self.entry_argv(job.python),
            "--face", ws.engine_path(job.face),
            "--audio", ws.engine_path(job.audio),
            "--outfile", "results/result.mp4",
            "--checkpoint_path", "models/fake.ckpt",
            "--fps", format_number(job.fps),
            "--mode", options.fake_mode,
        ]  # fmt: skip
        if options.fake_extra_seconds:
            argv += ["--extra_seconds", format_number(options.fake_extra_seconds)]
        if options.fake_sleep:
            argv += ["--sleep", format_number(options.fake_sleep)]
        if options.fake_wav2lip_mux:
            argv.append("--mux_like_wav2lip")
        if options.fake_frame_delay:
            argv += ["--frame_delay", format_number(options.fake_frame_delay)]
        if options.fake_fail_on_run:
            argv += ["--fail_on_run", str(options.fake_fail_on_run)]
        return Command(argv, ws.work, job.device.env())

    def find_output(self, ws: Workspace, log_text: str) -> Path:
        out = ws.results / "result.mp4"
        if not out.is_file() or out.stat().st_size == 0:
            raise self.missing_output(ws, f"{out} is missing or empty", tail_lines(log_text))
        return out

    def translate_error(self, log_text, returncode, ws):
        if "Face not detected!" in log_text:
            return FaceNotFoundError("the fake engine found no face", subject="face", hint="Try --wav2lip-box.")
        return None
