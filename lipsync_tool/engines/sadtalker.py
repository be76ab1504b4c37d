"""SadTalker (OpenTalker/SadTalker) adapter.

Upstream quirks this adapter respects:

* the result is named by timestamp (``<result_dir>/<YYYY_MM_DD_HH.MM.SS>.mp4``),
  and the last stdout line says where; each run has its own result dir;
* ``gfpgan/weights/`` (face detector, landmarks, GFPGAN) and temporary
  ``<uuid>.mp4`` files are relative to the working dir, which is the run's own
  link farm of the repository, with the verified weights linked in;
* configs are found next to ``sys.argv[0]``, so the entry script sits in the
  working dir;
* ``--cpu`` is the only way to keep it off the GPU;
* a missing face surfaces as ``TypeError: exceptions must derive from
  BaseException`` (upstream raises a string).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..errors import EngineError, EngineOOMError, FaceNotFoundError, InputError, LipsyncError, UsageError
from .base import CheckpointSpec, Command, Device, Engine, EngineOptions, Job, RepoSpec, Workspace, field_cli, format_number, is_cuda_oom, tail_lines
from .compat import is_cpu_oom, translate_common
from .face_restore import GFPGAN_V14, PARSENET, RETINAFACE

PANEL = "SadTalker options"

LICENCE = (
    "SadTalker's code and its V0.0.2 weights are released under the Apache-2.0 licence; "
    "the face detector and landmark weights come from facexlib (MIT) and GFPGAN v1.4 is Apache-2.0. "
    "Check https://github.com/OpenTalker/SadTalker#license before shipping a product."
)

_HF = "https://huggingface.co"
_GH = "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2-rc"

CHECKPOINTS = (
    CheckpointSpec(
        name="SadTalker_V0.0.2_256.safetensors",
        urls=(
            f"{_GH}/SadTalker_V0.0.2_256.safetensors",
            f"{_HF}/vinthony/SadTalker-V002rc/resolve/main/SadTalker_V0.0.2_256.safetensors",
            f"{_HF}/camenduru/SadTalker/resolve/main/new/checkpoints/SadTalker_V0.0.2_256.safetensors",
            f"{_HF}/spaces/kevinwang676/SadTalker/resolve/main/checkpoints/SadTalker_V0.0.2_256.safetensors",
            f"{_HF}/Kedreamix/Linly-Talker/resolve/main/checkpoints/SadTalker_V0.0.2_256.safetensors",
        ),
        size=725066984,
        sha256="c211f5d6de003516bf1bbda9f47049a4c9c99133b1ab565c6961e5af16477bff",
        dest="checkpoints/SadTalker_V0.0.2_256.safetensors",
    ),
    CheckpointSpec(
        name="SadTalker_V0.0.2_512.safetensors",
        urls=(
            f"{_GH}/SadTalker_V0.0.2_512.safetensors",
            f"{_HF}/vinthony/SadTalker-V002rc/resolve/main/SadTalker_V0.0.2_512.safetensors",
            f"{_HF}/camenduru/SadTalker/resolve/main/new/checkpoints/SadTalker_V0.0.2_512.safetensors",
            f"{_HF}/spaces/kevinwang676/SadTalker/resolve/main/checkpoints/SadTalker_V0.0.2_512.safetensors",
        ),
        size=725066984,
        sha256="0e063f7ff5258240bdb0f7690783a7b1374e6a4a81ce8fa33456f4cd49694340",
        dest="checkpoints/SadTalker_V0.0.2_512.safetensors",
    ),
    CheckpointSpec(
        name="mapping_00109-model.pth.tar",
        urls=(
            f"{_GH}/mapping_00109-model.pth.tar",
            f"{_HF}/vinthony/SadTalker-V002rc/resolve/main/mapping_00109-model.pth.tar",
            f"{_HF}/camenduru/SadTalker/resolve/main/new/checkpoints/mapping_00109-model.pth.tar",
            f"{_HF}/spaces/kevinwang676/SadTalker/resolve/main/checkpoints/mapping_00109-model.pth.tar",
        ),
        size=155779231,
        sha256="84a8642468a3fcfdd9ab6be955267043116c2bec2284686a5262f1eaf017f64c",
        dest="checkpoints/mapping_00109-model.pth.tar",
    ),
    CheckpointSpec(
        name="mapping_00229-model.pth.tar",
        urls=(
            f"{_GH}/mapping_00229-model.pth.tar",
            "https://github.com/Winfredy/SadTalker/releases/download/v0.0.2/mapping_00229-model.pth.tar",
            f"{_HF}/vinthony/SadTalker-V002rc/resolve/main/mapping_00229-model.pth.tar",
            f"{_HF}/camenduru/SadTalker/resolve/main/new/checkpoints/mapping_00229-model.pth.tar",
            f"{_HF}/spaces/vinthony/SadTalker/resolve/c53ab6f5304d4fa0d5b9e5a470a09afa87bc743b/checkpoints/mapping_00229-model.pth.tar",
        ),
        size=155521183,
        sha256="62a1e06006cc963220f6477438518ed86e9788226c62ae382ddc42fbcefb83f1",
        dest="checkpoints/mapping_00229-model.pth.tar",
    ),
    CheckpointSpec(
        name="alignment_WFLW_4HG.pth",
        urls=(
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/alignment_WFLW_4HG.pth",
            f"{_HF}/camenduru/SadTalker/resolve/main/new/gfpgan/weights/alignment_WFLW_4HG.pth",
            f"{_HF}/Kedreamix/Linly-Talker/resolve/main/gfpgan/weights/alignment_WFLW_4HG.pth",
            f"{_HF}/datasets/LLLM-Lab/huanhuan_sadtalker/resolve/main/gfpgan/weights/alignment_WFLW_4HG.pth",
            f"{_HF}/leonelhs/facexlib/resolve/main/gfpgan/weights/alignment_WFLW_4HG.pth",
        ),
        size=193670248,
        sha256="bbfd137307a4c7debd5c283b9b0ce539466cee417ac0a155e184d857f9f2899c",
        dest="gfpgan/weights/alignment_WFLW_4HG.pth",
    ),
    RETINAFACE,
    GFPGAN_V14,
    PARSENET,
    CheckpointSpec(
        name="RestoreFormer.pth",
        urls=(
            "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/RestoreFormer.pth",
            f"{_HF}/fofr/comfyui/resolve/13843cef27d56bcf83645a985571a1346c2d9458/facerestore_models/RestoreFormer.pth",
            f"{_HF}/martintomov/comfy/resolve/69ae5f6f36f3e7177b03ffed743102cead5e712e/facerestore_models/RestoreFormer.pth",
            f"{_HF}/uwg/upscaler/resolve/f6bace545e358eab5491f8f39b90a2dd42e8cc77/Face_Restore/RestoreFormer.pth",
        ),
        size=290785322,
        sha256="07404d446d62ca3d5ed38b1de09a947a1e77d46dbccec961a74d713a8f24ace0",
        dest="gfpgan/weights/RestoreFormer.pth",
    ),
    CheckpointSpec(
        name="RealESRGAN_x2plus.pth",
        urls=(
            "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
            f"{_HF}/nateraw/real-esrgan/resolve/42efb9c3eeed1f5c0c8a626cf5f7f4481dfbb094/RealESRGAN_x2plus.pth",
            f"{_HF}/2kpr/Real-ESRGAN/resolve/d43aff1f1c922c1d974ae3d9ee9be86580428231/RealESRGAN_x2plus.pth",
        ),
        size=67061725,
        sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
        dest="weights/RealESRGAN_x2plus.pth",
        # upstream asks basicsr to fetch this URL at run time; the compat layer serves the verified copy
        serves_url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
    ),
)

#: The values a popular SadTalker front end publishes for its presets.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"pose_style": 0, "expression_scale": 1.0},
    "natural": {"pose_style": 45},
    "expressive": {"pose_style": 45, "expression_scale": 1.3},
    "professional": {"still": True, "expression_scale": 0.8},
    "fullbody": {"still": True, "preprocess": "full"},
}

#: Defaults for what neither the user nor the preset set (upstream's, except
#: ``still``, which this tool turns on by default).
DEFAULTS: dict[str, Any] = {
    "preprocess": "crop",
    "expression_scale": 1.0,
    "still": True,
    "pose_style": 0,
    "sadtalker_batch_size": 2,
    "resolution": 256,
}

FACE_HINT = "Try --preprocess full or resize, crop the image closer to a frontal face, or use a sharper, larger portrait."
OOM_HINT = "Lower --sadtalker-batch-size, use --resolution 256, drop --enhancer, or set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True."
CPU_OOM_HINT = "Lower --sadtalker-batch-size, use --resolution 256, drop --enhancer, use --preprocess crop, or shorten the audio (--chunk-seconds)."

Preprocess = Literal["crop", "extcrop", "resize", "full", "extfull"]


def _degrees(v: Any) -> tuple[int, ...] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        v = [p for p in v.replace(",", " ").split()]
    try:
        out = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"give whole degrees separated by commas, e.g. 0,20,-20, not {v!r}") from None
    if not out or any(abs(d) > 90 for d in out):
        raise ValueError(f"degrees must be between -90 and 90, not {v!r}")
    return out


class SadTalkerOptions(EngineOptions):
    # Once an option of every engine: the others still take it, and warn that they ignore it.
    resolution: Literal[256, 512] | None = Field(
        None, json_schema_extra=field_cli("--resolution", help="Face size, 256 or 512. (default: 256)", elsewhere="warn")
    )
    preset: Literal["default", "natural", "expressive", "professional", "fullbody"] | None = Field(
        None, json_schema_extra=field_cli("--preset", help="A named set of SadTalker options; explicit options override it.")
    )
    preprocess: Preprocess | None = Field(
        None,
        json_schema_extra=field_cli(
            "--preprocess",
            help="How upstream prepares the image: crop (face only), extcrop, resize, full (paste back into the whole image), extfull. (default: crop)",
            aliases=("extreme_crop",),
        ),
    )
    expression_scale: float | None = Field(
        None, gt=0, le=3, json_schema_extra=field_cli("--expression-scale", help="Strength of the facial motion. (default: 1.0)")
    )
    still: bool | None = Field(
        None, json_schema_extra=field_cli("--still/--no-still", help="Keep the head still (less motion, crops back cleanly). (default: still)")
    )
    enhancer: Literal["gfpgan", "RestoreFormer"] | None = Field(
        None, json_schema_extra=field_cli("--enhancer", help="Face enhancer run on every frame (doubles the size).")
    )
    background_enhancer: Literal["realesrgan"] | None = Field(
        None, json_schema_extra=field_cli("--background-enhancer", help="Background upsampler (GPU only; upstream ignores it on the CPU).")
    )
    pose_style: int | None = Field(None, ge=0, le=45, json_schema_extra=field_cli("--pose-style", help="Head pose style, 0..45. (default: 0)"))
    ref_eyeblink: Path | None = Field(None, json_schema_extra=field_cli("--ref-eyeblink", help="A video whose eye blinks to copy.", metavar="VIDEO"))
    ref_pose: Path | None = Field(None, json_schema_extra=field_cli("--ref-pose", help="A video whose head pose to copy.", metavar="VIDEO"))
    sadtalker_batch_size: int | None = Field(
        None, ge=1, le=256, json_schema_extra=field_cli("--sadtalker-batch-size", help="Face renderer batch size (raise it on a big GPU). (default: 2)")
    )
    input_yaw: tuple[int, ...] | None = Field(
        None, json_schema_extra=field_cli("--input-yaw", help="Free-view yaw angles in degrees, e.g. 0,20,-20.", metavar="DEG,...")
    )
    input_pitch: tuple[int, ...] | None = Field(None, json_schema_extra=field_cli("--input-pitch", help="Free-view pitch angles in degrees.", metavar="DEG,..."))
    input_roll: tuple[int, ...] | None = Field(None, json_schema_extra=field_cli("--input-roll", help="Free-view roll angles in degrees.", metavar="DEG,..."))
    checkpoint_dir: Path | None = Field(
        None,
        json_schema_extra=field_cli(
            "--checkpoint-dir", help="Your own SadTalker checkpoints/ folder (e.g. an existing install); each file is hashed and checked.", metavar="DIR"
        ),
    )
    gfpgan_dir: Path | None = Field(
        None, json_schema_extra=field_cli("--gfpgan-dir", help="Your own gfpgan/weights/ folder; each file is hashed and checked.", metavar="DIR")
    )

    @field_validator("preprocess", mode="before")
    @classmethod
    def _alias(cls, v: Any) -> Any:
        return "extcrop" if v == "extreme_crop" else v

    @field_validator("input_yaw", "input_pitch", "input_roll", mode="before")
    @classmethod
    def _deg(cls, v: Any) -> Any:
        return _degrees(v)

    def resolved(self) -> SadTalkerOptions:
        values = dict(DEFAULTS)
        if self.preset:
            values.update(PRESETS[self.preset])
        values.update({k: getattr(self, k) for k in self.model_fields_set if getattr(self, k) is not None})
        return SadTalkerOptions(**values)


class SadTalker(Engine):
    name = "sadtalker"
    display_name = "SadTalker"
    Options = SadTalkerOptions
    worker_adapter = str(Path(__file__).with_name("workerd") / "sadtalker_adapter.py")
    #: --face-index: the worker steers the cropper's detector to the chosen face; upstream's CLI has no way to (refused).
    face_hint_runners = ("worker",)
    batch_size_option = "sadtalker_batch_size"
    repo = RepoSpec(
        url="https://github.com/OpenTalker/SadTalker.git",
        commit="cd4c0465ae0b54a6f85af57f5c65fec9fe23e7f8",
        sparse_exclude=("docs/*.gif",),
    )
    checkpoints = CHECKPOINTS
    licence_notice = LICENCE
    #: A popular SadTalker front end renders long audio in 45 s pieces to avoid drift and OOM.
    default_chunk_seconds = 45.0
    #: basicsr, facexlib, gfpgan and realesrgan go last, without build isolation
    #: (basicsr's setup.py imports torch) and without their declared dependencies:
    #: those name opencv-python, whose GUI build would overwrite the headless cv2
    #: (and needs libGL), and tb-nightly, used only for training.  What they import
    #: at run time is listed in the step before.  setuptools provides the build and,
    #: on Python 3.12, the ``distutils`` that basicsr imports.  face-alignment (in
    #: upstream's requirements.txt) serves only ``--old_version`` and would pull
    #: opencv-python too, so it is left out.
    requirements = (
        ((), ("torch>=2.0", "torchvision>=0.17")),
        (
            (),
            (
                "setuptools", "wheel",
                "numpy>=1.24", "scipy", "opencv-python-headless>=4.6", "librosa>=0.10", "numba", "tqdm", "pyyaml", "yacs",
                "imageio>=2.19", "imageio-ffmpeg", "pydub", "scikit-image", "kornia", "safetensors", "av", "joblib",
                "pillow>=10", "requests", "filterpy", "lmdb",
            ),
        ),
        (("--no-build-isolation", "--no-deps"), ("basicsr>=1.4.2", "facexlib>=0.3.0", "gfpgan>=1.3.8", "realesrgan>=0.3.0")),
    )  # fmt: skip

    def preprocess_key(self, options: EngineOptions) -> dict[str, Any] | None:
        # CropAndExtract.generate(image, dir, preprocess, pic_size=size): the crop and 3DMM coefficients.
        o = _resolved(options)
        return {"preprocess": o.preprocess, "size": o.resolution}

    def required_checkpoints(self, options: EngineOptions) -> list[CheckpointSpec]:
        o = _resolved(options)
        names = [f"SadTalker_V0.0.2_{o.resolution}.safetensors"]
        names.append("mapping_00109-model.pth.tar" if "full" in (o.preprocess or "") else "mapping_00229-model.pth.tar")
        names += ["alignment_WFLW_4HG.pth", "detection_Resnet50_Final.pth"]
        if o.enhancer:
            names += ["GFPGANv1.4.pth" if o.enhancer == "gfpgan" else "RestoreFormer.pth", "parsing_parsenet.pth"]
        if o.background_enhancer == "realesrgan":
            names.append("RealESRGAN_x2plus.pth")
        user = self.user_files(options)
        return [self.checkpoint(n) for n in names if self.checkpoint(n).dest not in user]

    def user_files(self, options: EngineOptions) -> dict[str, Path]:
        """Files found in the user's --checkpoint-dir / --gfpgan-dir, by dest."""
        assert isinstance(options, SadTalkerOptions)
        found: dict[str, Path] = {}
        for folder, prefix in ((options.checkpoint_dir, "checkpoints/"), (options.gfpgan_dir, "gfpgan/weights/")):
            if folder is None:
                continue
            for spec in self.checkpoints:
                if spec.dest.startswith(prefix):
                    candidate = Path(folder).expanduser() / spec.dest[len(prefix) :]
                    if candidate.is_file():
                        found[spec.dest] = candidate
        return found

    def validate(self, options: EngineOptions, *, face_is_video: bool) -> None:
        o = _resolved(options)
        if face_is_video:
            raise UsageError("SadTalker animates a still image, and the face is a video", subject="face", hint="Give an image, or use --engine wav2lip.")
        for label, folder in (("--checkpoint-dir", o.checkpoint_dir), ("--gfpgan-dir", o.gfpgan_dir)):
            if folder is not None and not Path(folder).expanduser().is_dir():
                raise UsageError(f"{folder} is not a folder", subject=label)
        for label, video in (("--ref-eyeblink", o.ref_eyeblink), ("--ref-pose", o.ref_pose)):
            if video is not None and not Path(video).expanduser().is_file():
                raise InputError(f"no such file (given as {label})", subject=video)
        if o.background_enhancer and not o.enhancer:
            # Upstream only runs the background upsampler inside the face enhancer.
            raise UsageError("needs --enhancer gfpgan or RestoreFormer; upstream ignores it otherwise", subject="--background-enhancer")

    def build_command(self, job: Job, options: EngineOptions, ws: Workspace) -> Command:
        o = _resolved(options)
        argv = [
            *self.entry_argv(job.python),
            "--driven_audio", ws.engine_path(job.audio),
            "--source_image", ws.engine_path(job.face),
            "--checkpoint_dir", "checkpoints",
            "--result_dir", "results",
            "--size", str(o.resolution),
            "--preprocess", str(o.preprocess),
            "--expression_scale", format_number(o.expression_scale or 1.0),
            "--pose_style", str(o.pose_style),
            "--batch_size", str(o.sadtalker_batch_size),
        ]  # fmt: skip
        if o.still:
            argv.append("--still")
        if o.enhancer:
            argv += ["--enhancer", o.enhancer]
        if o.background_enhancer:
            argv += ["--background_enhancer", o.background_enhancer]
        for flag, staged in (("--ref_eyeblink", job_ref(ws, "ref_eyeblink", o.ref_eyeblink)), ("--ref_pose", job_ref(ws, "ref_pose", o.ref_pose))):
            if staged:
                argv += [flag, staged]
        for flag, degrees in (("--input_yaw", o.input_yaw), ("--input_pitch", o.input_pitch), ("--input_roll", o.input_roll)):
            if degrees:
                argv += [flag, *map(str, degrees)]
        if job.device.kind == "cpu":
            argv.append("--cpu")
        return Command(argv=argv, cwd=ws.work, env=job.device.env())

    def run_warnings(self, options: EngineOptions, device: Device) -> list[str]:
        warnings = super().run_warnings(options, device)
        if device.kind == "cpu" and _resolved(options).background_enhancer:
            warnings.append("--background-enhancer runs on a GPU only; upstream skips it on the CPU")
        return warnings

    def staged_refs(self, options: EngineOptions) -> dict[str, Path]:
        """Reference videos to stage into inputs/ (name → source)."""
        o = _resolved(options)
        return {k: v for k, v in (("ref_eyeblink", o.ref_eyeblink), ("ref_pose", o.ref_pose)) if v is not None}

    def find_output(self, ws: Workspace, log_text: str) -> Path:
        named = None
        for line in reversed(log_text.splitlines()):
            if "The generated video is named:" in line:
                named = line.split("The generated video is named:", 1)[1].strip()
                break
        candidates = [ws.work / named] if named else []
        candidates += sorted(ws.results.glob("*.mp4"))
        for c in candidates:
            if c.is_file() and c.stat().st_size > 0:
                return c
        raise self.missing_output(ws, f"no video in {ws.results}", tail_lines(log_text))

    def translate_error(self, log_text: str, returncode: int, ws: Workspace) -> LipsyncError | None:
        no_face = (
            "can not detect the landmark" in log_text
            # upstream's cropper raises a string, which Python 3 reports as this TypeError
            or ("exceptions must derive from BaseException" in log_text and "croper" in log_text)
            or "No face is detected in the input file" in log_text
            or "Can't get the coeffs of the input" in log_text
        )
        if no_face:
            return FaceNotFoundError("SadTalker found no face (no landmarks) in the image", subject="face", hint=FACE_HINT)
        if is_cuda_oom(log_text):
            return EngineOOMError("the GPU ran out of memory", log_path=ws.log, log_tail=tail_lines(log_text), hint=OOM_HINT)
        if is_cpu_oom(log_text):
            return EngineOOMError("the engine ran out of memory", log_path=ws.log, log_tail=tail_lines(log_text), hint=CPU_OOM_HINT)
        if "seamlessClone" in log_text and "roi.x" in log_text:
            # upstream's align_face bounds the paste box by the image's width on both axes, so a face whose crop
            # reaches the right or bottom edge makes paste_pic's seamlessClone fail (--preprocess full)
            return EngineError(
                "SadTalker could not paste the animated face back into the picture: the face's crop reaches the image's edge",
                log_path=ws.log,
                log_tail=tail_lines(log_text),
                hint="Pad the image so the face is further from its right and bottom edges, or use --preprocess crop.",
            )
        return translate_common(log_text, ws)


def job_ref(ws: Workspace, name: str, source: Path | None) -> str | None:
    if source is None:
        return None
    return ws.engine_path(ws.inputs / f"{name}.mp4")


def _resolved(options: EngineOptions) -> SadTalkerOptions:
    assert isinstance(options, SadTalkerOptions)
    return options.resolved()


__all__ = ["PRESETS", "SadTalker", "SadTalkerOptions"]
