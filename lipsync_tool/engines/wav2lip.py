"""Wav2Lip (Rudrabha/Wav2Lip) adapter.

Upstream quirks this adapter respects (see the tests for the exact argv):

* ``--static`` is ``type=bool``: any non-empty string, ``False`` too, means
  True, so it is passed as ``--static True`` or not at all;
* image versus video is decided by ``face.split('.')[1]``, so the staged face
  has one dot and a lower-case extension;
* ``--crop`` and ``--box`` are top, bottom, left, right; the CLI takes
  X1 Y1 X2 Y2 and translates;
* it writes ``temp/`` relative to the working dir, which is the run's own;
* its audio conversion and final mux go through ``shell=True``, so every path
  it sees is free of spaces and shell characters;
* ``face_detection/detection/sfd/s3fd.pth`` is read relative to the module
  file, so the working dir's link farm puts the verified file there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..errors import EngineOOMError, EngineOutputMissingError, FaceNotFoundError, InputError, LipsyncError, UsageError
from .base import CheckpointSpec, Command, Engine, EngineOptions, Job, RepoSpec, Workspace, field_cli, format_number, is_cuda_oom, tail_lines
from .compat import is_cpu_oom, translate_common
from .face_restore import GFPGAN_V14, PARSENET, RESTORER_REQUIREMENTS, RETINAFACE
from .workerd.face_hint import padded_box

PANEL = "Wav2Lip options"

LICENCE = (
    "Wav2Lip's pretrained weights are for research and non-commercial use only "
    "(they were trained on the LRS2 dataset). Commercial use needs a licence from the "
    "authors (see https://github.com/Rudrabha/Wav2Lip#license-and-citation). "
    "s3fd (the face detector) is BSD-3-Clause."
)

_HF = "https://huggingface.co"

CHECKPOINTS = (
    CheckpointSpec(
        name="wav2lip.pth",
        urls=(
            "https://github.com/Winfredy/SadTalker/releases/download/v0.0.2/wav2lip.pth",
            "https://github.com/justinjohn0306/Wav2Lip/releases/download/models/wav2lip.pth",
            f"{_HF}/Nekochu/Wav2Lip/resolve/main/wav2lip.pth",
            f"{_HF}/numz/wav2lip_studio/resolve/main/Wav2lip/wav2lip.pth",
            f"{_HF}/steinhaug/cache-repository/resolve/main/Wav2Lip/wav2lip.pth",
            f"{_HF}/Ftfyhh/wav2lip/resolve/main/wav2lip.pth",
            f"{_HF}/vinthony/SadTalker/resolve/main/wav2lip.pth",
        ),
        size=435807851,
        sha256="b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37",
        dest="checkpoints/wav2lip.pth",
        licence="non-commercial research only",
    ),
    CheckpointSpec(
        name="wav2lip_gan.pth",
        urls=(
            "https://github.com/justinjohn0306/Wav2Lip/releases/download/models/wav2lip_gan.pth",
            f"{_HF}/Nekochu/Wav2Lip/resolve/main/wav2lip_gan.pth",
            f"{_HF}/numz/wav2lip_studio/resolve/main/Wav2lip/wav2lip_gan.pth",
            f"{_HF}/numz/wav2lip_studio-0.2/resolve/main/Wav2lip/wav2lip_gan.pth",
            f"{_HF}/steinhaug/cache-repository/resolve/main/Wav2Lip/wav2lip_gan.pth",
            f"{_HF}/AOLCDROM/WAV2LIP-HQ-Updated-MIRROR/resolve/main/wav2lip_gan.pth",
            f"{_HF}/camenduru/Wav2Lip/resolve/main/checkpoints/wav2lip_gan.pth",
        ),
        size=435801865,
        sha256="ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8",
        dest="checkpoints/wav2lip_gan.pth",
        licence="non-commercial research only",
    ),
    CheckpointSpec(
        name="s3fd.pth",
        urls=(
            "https://github.com/justinjohn0306/Wav2Lip/releases/download/models/s3fd.pth",
            f"{_HF}/camenduru/Wav2Lip/resolve/main/checkpoints/s3fd-619a316812.pth",
            f"{_HF}/spaces/vinthony/SadTalker/resolve/c53ab6f5304d4fa0d5b9e5a470a09afa87bc743b/checkpoints/hub/checkpoints/s3fd-619a316812.pth",
            f"{_HF}/vinthony/SadTalker/resolve/main/hub/checkpoints/s3fd-619a316812.pth",
            "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
        ),
        size=89843225,
        sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
        dest="face_detection/detection/sfd/s3fd.pth",
        licence="BSD-3-Clause",
    ),
    # --wav2lip-quality enhanced: GFPGAN, and the detector and face parser of its face helper
    GFPGAN_V14,
    RETINAFACE,
    PARSENET,
)
#: What --wav2lip-quality enhanced adds to the checkpoints.
RESTORER_WEIGHTS = (GFPGAN_V14.name, RETINAFACE.name, PARSENET.name)

FACE_HINT = (
    "Pass the face box yourself with --wav2lip-box X1 Y1 X2 Y2, widen --wav2lip-pads, "
    "or crop the image closer to the face."
)
OOM_HINT = (
    "Lower --wav2lip-batch-size and --wav2lip-face-det-batch-size, raise --wav2lip-resize-factor "
    "(2 for 1080p video), or set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True."
)
CPU_OOM_HINT = "Lower --wav2lip-batch-size and --wav2lip-face-det-batch-size, raise --wav2lip-resize-factor (video), or shorten the audio."

Quad = tuple[int, int, int, int]
#: --wav2lip-mask-size and --wav2lip-mask-feather (the same as workerd/blend.py's defaults; a test holds them equal).
MASK_SIZE = 0.75
MASK_FEATHER = 0.08
#: Options the warm worker's adapter honours and upstream's own CLI has no way to.
WORKER_ONLY_HINT = "Drop --runner subprocess (the warm worker is the default), or use --wav2lip-quality fast."


class Wav2LipOptions(EngineOptions):
    wav2lip_checkpoint: str = Field(
        "wav2lip_gan",
        json_schema_extra=field_cli(
            "--wav2lip-checkpoint",
            help="wav2lip (most accurate lip-sync), wav2lip_gan (better visual quality), or the PATH of your own .pth.",
            metavar="wav2lip|wav2lip_gan|PATH",
        ),
    )
    wav2lip_pads: Quad = Field(
        (0, 10, 0, 0),
        json_schema_extra=field_cli("--wav2lip-pads", help="Padding around the detected face: top bottom left right. Include the chin.", metavar="T B L R"),
    )
    wav2lip_static: bool = Field(
        False,
        json_schema_extra=field_cli("--wav2lip-static/--wav2lip-no-static", help="Use only the first frame of a face video. An image is always static."),
    )
    wav2lip_nosmooth: bool = Field(
        False, json_schema_extra=field_cli("--wav2lip-nosmooth", help="Don't smooth face detections over a short temporal window.")
    )
    wav2lip_batch_size: int = Field(128, ge=1, le=4096, json_schema_extra=field_cli("--wav2lip-batch-size", help="Generator batch size."))
    wav2lip_face_det_batch_size: int = Field(
        16, ge=1, le=1024, json_schema_extra=field_cli("--wav2lip-face-det-batch-size", help="Face detector batch size.")
    )
    wav2lip_resize_factor: int = Field(
        1, ge=1, le=16, json_schema_extra=field_cli("--wav2lip-resize-factor", help="Divide a face video's resolution by this factor first (video only).")
    )
    wav2lip_crop: Quad | None = Field(
        None,
        json_schema_extra=field_cli(
            "--wav2lip-crop", help="Crop a face video to this rectangle first, as X1 Y1 X2 Y2 (-1 for X2/Y2 = to the edge). Video only.", metavar="X1 Y1 X2 Y2"
        ),
    )
    wav2lip_box: Quad | None = Field(
        None,
        json_schema_extra=field_cli("--wav2lip-box", help="A fixed face box, as X1 Y1 X2 Y2, instead of face detection (s3fd is then not downloaded).", metavar="X1 Y1 X2 Y2"),
    )
    wav2lip_rotate: bool = Field(False, json_schema_extra=field_cli("--wav2lip-rotate", help="Rotate a face video 90° clockwise first (video only)."))
    wav2lip_quality: Literal["fast", "improved", "enhanced"] = Field(
        "fast",
        json_schema_extra=field_cli(
            "--wav2lip-quality",
            help="fast: upstream's output (the whole generated face box pasted back); improved: the original frame, with only "
            "the mouth of the generated face pasted through a feathered mask; enhanced: improved, with GFPGAN v1.4 run on "
            "the face crop first (slower; needs gfpgan in the engine's Python). improved and enhanced need the warm worker.",
        ),
    )
    wav2lip_mask_size: float = Field(
        MASK_SIZE,
        gt=0,
        le=1,
        json_schema_extra=field_cli("--wav2lip-mask-size", help=f"improved/enhanced: how much of the lower face box the mouth mask covers, 0-1. (default: {MASK_SIZE})"),
    )
    wav2lip_mask_feather: float = Field(
        MASK_FEATHER,
        ge=0,
        le=4096,
        json_schema_extra=field_cli(
            "--wav2lip-mask-feather",
            help=f"improved/enhanced: the mask's soft edge; below 1 a fraction of the face box, else whole pixels. (default: {MASK_FEATHER})",
        ),
    )
    require_face_every_frame: bool = Field(
        False,
        json_schema_extra=field_cli(
            "--require-face-every-frame",
            help="Fail when a frame of a face video has no face (upstream's behaviour); by default such frames pass through unchanged (warm worker).",
        ),
    )

    @field_validator("wav2lip_checkpoint")
    @classmethod
    def _checkpoint(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("give wav2lip, wav2lip_gan or the path of a .pth file")
        return v

    @field_validator("wav2lip_pads")
    @classmethod
    def _pads(cls, v: Quad) -> Quad:
        if any(p < 0 or p > 4096 for p in v):
            raise ValueError(f"pads must be between 0 and 4096, not {v}")
        return v

    @field_validator("wav2lip_box")
    @classmethod
    def _box(cls, v: Quad | None) -> Quad | None:
        if v is None:
            return v
        x1, y1, x2, y2 = v
        if min(v) < 0 or x2 <= x1 or y2 <= y1:
            raise ValueError(f"box must be X1 Y1 X2 Y2 with 0 <= X1 < X2 and 0 <= Y1 < Y2, not {' '.join(map(str, v))}")
        return v

    @field_validator("wav2lip_crop")
    @classmethod
    def _crop(cls, v: Quad | None) -> Quad | None:
        if v is None:
            return v
        x1, y1, x2, y2 = v
        if x1 < 0 or y1 < 0 or (x2 != -1 and x2 <= x1) or (y2 != -1 and y2 <= y1):
            raise ValueError(f"crop must be X1 Y1 X2 Y2 with X1 < X2 (or -1) and Y1 < Y2 (or -1), not {' '.join(map(str, v))}")
        return v

    @field_validator("wav2lip_mask_feather")
    @classmethod
    def _feather(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(f"a feather of 1 or more is in whole pixels, not {v} (below 1 it is a fraction of the face box)")
        return v

    @property
    def checkpoint_name(self) -> str | None:
        """Registry name of the chosen model, or None for a user's file."""
        return {"wav2lip": "wav2lip.pth", "wav2lip_gan": "wav2lip_gan.pth"}.get(self.wav2lip_checkpoint)


class Wav2Lip(Engine):
    name = "wav2lip"
    display_name = "Wav2Lip"
    Options = Wav2LipOptions
    repo = RepoSpec(url="https://github.com/Rudrabha/Wav2Lip.git", commit="5c90fa9b4a2c2a37d0b4ebf7633ac41534eb9941")
    checkpoints = CHECKPOINTS
    licence_notice = LICENCE
    face_input = "either"
    native_fps = True
    # Upstream muxes temp/result.avi with the audio by re-encoding it; a stream copy does.
    ffmpeg_copy_video_to = "results/result.mp4"
    worker_adapter = str(Path(__file__).with_name("workerd") / "wav2lip_adapter.py")
    batch_size_option = "wav2lip_batch_size"
    #: --face-index: upstream's CLI gets the chosen face as --box (padded_box); the worker's detector returns only that face.
    face_hint_runners = ("worker", "subprocess")
    requirements = (
        ((), ("torch>=2.0",)),
        ((), ("numpy>=1.24", "scipy", "opencv-python-headless>=4.6", "librosa>=0.10", "tqdm", "numba")),
    )

    def required_checkpoints(self, options: EngineOptions) -> list[CheckpointSpec]:
        assert isinstance(options, Wav2LipOptions)
        needed = []
        if options.checkpoint_name:
            needed.append(self.checkpoint(options.checkpoint_name))
        if options.wav2lip_box is None:
            needed.append(self.checkpoint("s3fd.pth"))
        if options.wav2lip_quality == "enhanced":
            needed += [self.checkpoint(name) for name in RESTORER_WEIGHTS]
        return needed

    def option_packages(self, options: EngineOptions) -> dict[str, str]:
        assert isinstance(options, Wav2LipOptions)
        if options.wav2lip_quality == "enhanced":
            return {name: "--wav2lip-quality enhanced" for name in ("gfpgan", "basicsr", "facexlib")}
        return {}

    def requirements_for(self, options: EngineOptions | None = None) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
        if isinstance(options, Wav2LipOptions) and options.wav2lip_quality == "enhanced":
            return self.requirements + RESTORER_REQUIREMENTS
        return self.requirements

    def user_files(self, options: EngineOptions) -> dict[str, Path]:
        assert isinstance(options, Wav2LipOptions)
        if options.checkpoint_name:
            return {}
        return {"checkpoints/user_model.pth": Path(options.wav2lip_checkpoint).expanduser()}

    def model_dest(self, options: Wav2LipOptions) -> str:
        name = options.checkpoint_name
        return self.checkpoint(name).dest if name else "checkpoints/user_model.pth"

    def validate(self, options: EngineOptions, *, face_is_video: bool) -> None:
        assert isinstance(options, Wav2LipOptions)
        if options.checkpoint_name is None and not Path(options.wav2lip_checkpoint).expanduser().is_file():
            raise InputError("no such file (given as --wav2lip-checkpoint)", subject=options.wav2lip_checkpoint, hint="Give wav2lip, wav2lip_gan, or the path of a .pth file.")
        if options.wav2lip_quality == "fast":
            tuning = [flag for name, flag in (("wav2lip_mask_size", "--wav2lip-mask-size"), ("wav2lip_mask_feather", "--wav2lip-mask-feather")) if name in options.model_fields_set]
            if tuning:
                raise UsageError("tunes --wav2lip-quality improved and enhanced only", subject=", ".join(tuning), hint="Add --wav2lip-quality improved, or drop it.")
        if not face_is_video:
            video_only = [
                flag
                for flag, given in (
                    ("--wav2lip-resize-factor", options.wav2lip_resize_factor != 1),
                    ("--wav2lip-crop", options.wav2lip_crop is not None),
                    ("--wav2lip-rotate", options.wav2lip_rotate),
                )
                if given
            ]
            if video_only:
                raise UsageError(
                    "only applies to a face video, and the face is an image",
                    subject=", ".join(video_only),
                    hint="Drop it, or crop and rotate the image itself.",
                )

    def check_runner(self, options: EngineOptions, runner_kind: str) -> None:
        """Refuse what only the warm worker can do when the run uses upstream's own CLI (``--runner subprocess``)."""
        assert isinstance(options, Wav2LipOptions)
        if runner_kind != "worker" and options.wav2lip_quality != "fast":
            raise UsageError(
                f"{options.wav2lip_quality} needs the warm worker runner; upstream's own inference.py (--runner subprocess) can only paste the whole face box",
                subject="--wav2lip-quality",
                hint=WORKER_ONLY_HINT,
            )

    def build_command(self, job: Job, options: EngineOptions, ws: Workspace) -> Command:
        assert isinstance(options, Wav2LipOptions)
        o = options
        argv = [
            *self.entry_argv(job.python),
            "--checkpoint_path", self.model_dest(o),
            "--face", ws.engine_path(job.face),
            "--audio", ws.engine_path(job.audio),
            "--outfile", "results/result.mp4",
            "--fps", format_number(job.fps),
            "--pads", *map(str, o.wav2lip_pads),
            "--face_det_batch_size", str(o.wav2lip_face_det_batch_size),
            "--wav2lip_batch_size", str(o.wav2lip_batch_size),
            "--resize_factor", str(o.wav2lip_resize_factor),
        ]  # fmt: skip
        if o.wav2lip_static:
            argv += ["--static", "True"]
        if o.wav2lip_crop is not None:
            x1, y1, x2, y2 = o.wav2lip_crop
            argv += ["--crop", str(y1), str(y2), str(x1), str(x2)]
        if o.wav2lip_box is not None:
            x1, y1, x2, y2 = o.wav2lip_box
            argv += ["--box", str(y1), str(y2), str(x1), str(x2)]
        elif job.face_hint is not None and not job.face_is_video:  # the chosen face (--face-index), where s3fd would find it
            top, bottom, left, right = padded_box(job.face_hint.box, o.wav2lip_pads, job.face_hint.frame)
            argv += ["--box", str(top), str(bottom), str(left), str(right)]
        if o.wav2lip_rotate:
            argv.append("--rotate")
        if o.wav2lip_nosmooth:
            argv.append("--nosmooth")
        return Command(argv=argv, cwd=ws.work, env=job.device.env())

    def preprocess_key(self, options: EngineOptions) -> dict[str, Any] | None:
        # The face boxes of every frame, after pads and smoothing (s3fd's output).
        assert isinstance(options, Wav2LipOptions)
        o = options
        if o.wav2lip_box is not None:
            return None  # upstream skips the detector: nothing to cache
        return {
            "pads": list(o.wav2lip_pads), "nosmooth": o.wav2lip_nosmooth, "static": o.wav2lip_static,
            "resize_factor": o.wav2lip_resize_factor, "crop": list(o.wav2lip_crop) if o.wav2lip_crop else None, "rotate": o.wav2lip_rotate,
        }  # fmt: skip

    def face_check_wanted(self, options: EngineOptions) -> bool:
        # A fixed face box means the user placed the face; the detector is not run.
        assert isinstance(options, Wav2LipOptions)
        return options.wav2lip_box is None

    def face_hints(self, options: EngineOptions) -> list[str]:
        return ["pass --wav2lip-box"]

    def find_output(self, ws: Workspace, log_text: str) -> Path:
        out = ws.results / "result.mp4"
        if not out.is_file() or out.stat().st_size == 0:
            raise self.missing_output(ws, f"{out} is {'empty' if out.is_file() else 'missing'} (upstream ignores the exit code of its final ffmpeg mux)", tail_lines(log_text))
        return out

    def translate_error(self, log_text: str, returncode: int, ws: Workspace) -> LipsyncError | None:
        tail = tail_lines(log_text)
        if "Face not detected!" in log_text:
            faulty = ws.work / "temp" / "faulty_frame.jpg"
            where = f" The frame it failed on is {faulty}." if faulty.exists() else ""
            return FaceNotFoundError("Wav2Lip's face detector (s3fd) found no face in a frame of the face input." + where, subject="face", hint=FACE_HINT)
        if "Image too big to run face detection on GPU" in log_text:
            # upstream says this after *any* error of the detector at batch size 1, on the CPU too
            return EngineOOMError(
                "Wav2Lip's face detector failed even one frame at a time (upstream reports it as 'Image too big to run face detection on GPU')",
                log_path=ws.log,
                log_tail=tail,
                hint="For a face video raise --wav2lip-resize-factor (2 for 1080p); for an image, use a smaller one; "
                "or skip the detector with --wav2lip-box X1 Y1 X2 Y2.",
            )
        if is_cuda_oom(log_text):
            return EngineOOMError("the GPU ran out of memory", log_path=ws.log, log_tail=tail, hint=OOM_HINT)
        if is_cpu_oom(log_text):
            return EngineOOMError("the engine ran out of memory", log_path=ws.log, log_tail=tail, hint=CPU_OOM_HINT)
        if "Mel contains nan" in log_text:
            return InputError("the audio's mel spectrogram contains NaN (often a synthetic voice with exact digital silence)", subject="audio", hint="Add a little noise to the audio and try again.")
        common = translate_common(log_text, ws)
        if common is not None:
            return common
        if re.search(r"^(/bin/)?sh: \d+: ffmpeg: not found", log_text, re.MULTILINE):
            # upstream ignores the exit code of its final mux, so this ends with exit 0 and no video
            return EngineOutputMissingError(
                "Wav2Lip's final ffmpeg mux could not run ('ffmpeg: not found'), so it wrote no video",
                log_path=ws.log,
                log_tail=tail,
                hint="lipsync-tool puts its ffmpeg first on the engine's PATH; check LIPSYNC_TOOL_FFMPEG and that the file is executable.",
            )
        return None


__all__ = ["Wav2Lip", "Wav2LipOptions"]
