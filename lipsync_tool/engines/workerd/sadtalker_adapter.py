"""SadTalker in a warm worker: upstream's own objects, built once and kept.

Runs in the engine's interpreter, loaded by ``workerd/main.py`` with the link farm of the pinned clone first on ``sys.path``
(see docs/workers.md).  Nothing of upstream is copied here; a job is the sequence of ``inference.py``'s ``main()``, calling the objects it builds:

* ``init_path``, ``CropAndExtract``, ``Audio2Coeff``, ``AnimateFromCoeff``, ``get_data`` and
  ``get_facerender_data`` from the clone.  The job's argv (upstream's own) is parsed with upstream's flags
  and defaults (``inference.py`` builds its parser under ``if __name__ == '__main__'``).
* The models stay loaded across jobs, keyed by the device, ``--size``, ``--old_version``, the preprocess
  family (``full``/``extfull`` use another mapping checkpoint and config) and the real paths of the files
  ``init_path`` names and of the face detector's weights: real *files*, as every job has its own link farm.
  ``CropAndExtract`` is built only when a job needs it (not on a preprocessing-cache hit).
* Seeding: ``ctx.seed()`` at the start of a job and again just before ``Audio2Coeff.generate`` (Audio2Pose
  draws its noise there), so a result does not depend on whether the job loaded the models.
* Rendering: upstream's ``make_animation`` on ``AnimateFromCoeff``'s models, with the tensors its
  ``generate`` would pass, instead of ``generate`` (a temp mp4, pydub and an ffmpeg mux).  A forward hook
  on the ``generator`` converts each prediction as upstream does before ``imageio.mimsave``
  (``img_as_ubyte``, the resize to the crop's aspect) and streams the frames in upstream's order.
* ``--enhancer``: upstream's ``src.utils.face_enhancer`` on the frames, after the render (upstream: on its h264's).
* ``full``/``extfull``: upstream's ``paste_pic`` on chunks of frames, with stand-ins for the files it reads and writes (see :func:`paste_frames`).
* Preprocessing cache (``ctx.preprocess``): the 3DMM coefficients, the cropped image and ``crop_info``.
* A face hint (``--face-index``): the cropper's detector answers only the chosen face (``face_hint.for_sadtalker``).

Upstream's exceptions propagate unchanged (the cropper's ``raise 'can not detect the landmark from source
image'`` is a ``TypeError``): the log's traceback is what the error translation reads, as for a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

import lipsync_worker

FPS = 25.0
#: The preprocessing cache's files.
CACHE_COEFF, CACHE_CROP, CACHE_INFO = "source.mat", "source.png", "crop_info.json"
CACHE_VERSION = 1
#: Where upstream's KeypointExtractor loads the face detector and landmarks from (relative to the CWD).
DETECTOR_WEIGHTS = ("gfpgan/weights/alignment_WFLW_4HG.pth", "gfpgan/weights/detection_Resnet50_Final.pth")
#: Frames handed to paste_pic at once in full/extfull.
PASTE_CHUNK = 8
#: The "video file" paste_pic reads in :func:`paste_frames`: served from memory.
FRAMES_URI = "<lipsync-tool frames>"


#: inference.py's flags: (flag, keyword arguments), as upstream declares them (help texts left out).
FLAGS = (
    ("--driven_audio", {"default": "./examples/driven_audio/bus_chinese.wav"}), ("--source_image", {"default": "./examples/source_image/full_body_1.png"}),
    ("--ref_eyeblink", {"default": None}), ("--ref_pose", {"default": None}),
    ("--checkpoint_dir", {"default": "./checkpoints"}), ("--result_dir", {"default": "./results"}),
    ("--pose_style", {"type": int, "default": 0}), ("--batch_size", {"type": int, "default": 2}), ("--size", {"type": int, "default": 256}),
    ("--expression_scale", {"type": float, "default": 1.0}),
    ("--input_yaw", {"nargs": "+", "type": int, "default": None}), ("--input_pitch", {"nargs": "+", "type": int, "default": None}),
    ("--input_roll", {"nargs": "+", "type": int, "default": None}),
    ("--enhancer", {"type": str, "default": None}), ("--background_enhancer", {"type": str, "default": None}),
    ("--cpu", {"dest": "cpu", "action": "store_true"}), ("--face3dvis", {"action": "store_true"}), ("--still", {"action": "store_true"}),
    ("--preprocess", {"default": "crop", "choices": ["crop", "extcrop", "resize", "full", "extfull"]}),
    ("--verbose", {"action": "store_true"}), ("--old_version", {"action": "store_true"}),
    ("--net_recon", {"type": str, "default": "resnet50", "choices": ["resnet18", "resnet34", "resnet50"]}),
    ("--init_path", {"type": str, "default": None}), ("--use_last_fc", {"default": False}),
    ("--bfm_folder", {"type": str, "default": "./checkpoints/BFM_Fitting/"}), ("--bfm_model", {"type": str, "default": "BFM_model_front.mat"}),
    ("--focal", {"type": float, "default": 1015.0}), ("--center", {"type": float, "default": 112.0}), ("--camera_d", {"type": float, "default": 10.0}),
    ("--z_near", {"type": float, "default": 5.0}), ("--z_far", {"type": float, "default": 15.0}),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command line of upstream's ``inference.py`` (built there under ``if __name__ == '__main__'``)."""
    parser = argparse.ArgumentParser(prog="inference.py")
    for flag, kwargs in FLAGS:
        parser.add_argument(flag, **kwargs)
    return parser


def job_args(ctx) -> argparse.Namespace:
    """The job's argv, parsed as upstream would; ``batch_size`` from the job overrides ``--batch_size``."""
    argv = [str(a) for a in ctx.job.get("argv") or []]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits (and prints why); that must not end the worker
        raise lipsync_worker.JobFailed(f"SadTalker's command line refused the job's arguments (exit {exc.code}): {argv}", "usage") from None
    free = lipsync_worker.gpu.free_vram(__import__("torch")) if ctx.job.get("batch_size") == "auto" else None
    args.batch_size, why = lipsync_worker.gpu.choose_batch_size(ctx.job.get("batch_size"), args.batch_size, kind=f"sadtalker-{args.size}", free_bytes=free, fp16=bool(ctx.job.get("fp16")))
    ctx.note("batch_size", {"value": args.batch_size, "source": why})
    return args


def _file_id(path: str) -> tuple:
    """A file by its real path (links resolved), size and mtime; a folder (the config dir) as named:
    in a link farm each job has its own folder, mirroring the same clone."""
    if os.path.isdir(path):
        return (path,)
    real = os.path.realpath(path)
    st = os.stat(real) if os.path.isfile(real) else None
    return (real,) if st is None else (real, st.st_size, st.st_mtime_ns)


def model_key(paths: dict[str, Any], args: argparse.Namespace, device: str) -> tuple:
    files = tuple((k, _file_id(v)) for k, v in sorted(paths.items()) if isinstance(v, str))
    family = "full" if "full" in args.preprocess else "crop"
    return (device, args.size, bool(args.old_version), family, files, tuple(_file_id(p) for p in DETECTOR_WEIGHTS))


class _LoadTimer:
    """How long this job spent building models (a context manager around each build)."""

    def __init__(self):
        self.loaded, self.seconds, self._start = False, 0.0, 0.0

    def __enter__(self):
        self._start = time.monotonic()

    def __exit__(self, *exc):
        self.seconds += time.monotonic() - self._start
        self.loaded = self.loaded or exc[0] is None


class _Models:
    """Upstream's model objects for one key (``CropAndExtract`` built on first use)."""

    def __init__(self, key: tuple, paths: dict[str, Any], device: str, audio_to_coeff, animate_from_coeff):
        self.key, self.paths, self.device = key, paths, device
        self.audio_to_coeff, self.animate_from_coeff = audio_to_coeff, animate_from_coeff
        self._crop_extract = None

    def crop_extract(self, timer: _LoadTimer):
        if self._crop_extract is None:
            from src.utils.preprocess import CropAndExtract

            with timer:
                self._crop_extract = CropAndExtract(self.paths, self.device)
        return self._crop_extract


class Adapter:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.models: _Models | None = None

    def render(self, ctx) -> dict[str, Any]:
        import numpy  # noqa: F401 - imported first, so that ctx.seed() seeds it
        import torch

        ctx.seed()
        args = job_args(ctx)
        args.device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
        fp16 = bool(ctx.job.get("fp16"))
        if fp16 and args.device != "cuda":
            raise lipsync_worker.JobFailed("--fp16 needs a CUDA GPU", "usage")
        os.makedirs(args.result_dir, exist_ok=True)
        save_dir = tempfile.mkdtemp(prefix=time.strftime("%Y_%m_%d_%H.%M.%S-"), dir=args.result_dir)
        try:
            self.job(ctx, args, save_dir, fp16)
        finally:
            if not args.verbose:
                shutil.rmtree(save_dir, ignore_errors=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
        return {"device": args.device, "batch_size": args.batch_size, "preprocess_mode": args.preprocess, "size": args.size}

    def job(self, ctx, args: argparse.Namespace, save_dir: str, fp16: bool) -> None:
        """inference.py's main(), from the models on (its save_dir is *save_dir*)."""
        from src.generate_batch import get_data
        from src.generate_facerender_batch import get_facerender_data

        timer = _LoadTimer()
        models = self.load_models(args, timer)
        first_coeff_path, crop_pic_path, crop_info = self.source(ctx, args, models, save_dir, timer)
        ref_eyeblink_coeff_path, ref_pose_coeff_path = references(args, models, save_dir, timer)
        ctx.note("models", {"loaded": timer.loaded, "seconds": round(timer.seconds, 3)})
        batch = get_data(first_coeff_path, args.driven_audio, args.device, ref_eyeblink_coeff_path, still=args.still)
        ctx.seed()  # Audio2Pose draws its noise in generate
        coeff_path = models.audio_to_coeff.generate(batch, save_dir, args.pose_style, ref_pose_coeff_path)
        if args.face3dvis:
            from src.face3d.visualize import gen_composed_video

            gen_composed_video(args, args.device, first_coeff_path, coeff_path, args.driven_audio, os.path.join(save_dir, "3dface.mp4"))
        data = get_facerender_data(
            coeff_path, crop_pic_path, first_coeff_path, args.driven_audio, args.batch_size, args.input_yaw, args.input_pitch, args.input_roll,
            expression_scale=args.expression_scale, still_mode=args.still, preprocess=args.preprocess, size=args.size,
        )  # fmt: skip
        sink = build_sink(ctx, args, crop_info)
        animate(ctx, models.animate_from_coeff, data, crop_info, args.size, sink, fp16)
        sink.close()

    def load_models(self, args: argparse.Namespace, timer: _LoadTimer) -> _Models:
        from src.utils.init_path import init_path

        # upstream: os.path.join(os.path.split(sys.argv[0])[0], 'src/config'), i.e. 'src/config' in the CWD
        paths = init_path(args.checkpoint_dir, os.path.join("", "src/config"), args.size, args.old_version, args.preprocess)
        key = model_key(paths, args, args.device)
        if self.models is not None and self.models.key == key:
            return self.models
        self.models = None  # free the old set before building the new one
        from src.facerender.animate import AnimateFromCoeff
        from src.test_audio2coeff import Audio2Coeff

        with timer:
            audio_to_coeff = Audio2Coeff(paths, args.device)
            animate_from_coeff = AnimateFromCoeff(paths, args.device)
        self.models = _Models(key, paths, args.device, audio_to_coeff, animate_from_coeff)
        return self.models

    def source(self, ctx, args: argparse.Namespace, models: _Models, save_dir: str, timer: _LoadTimer):
        """CropAndExtract on the source image, or its outputs from the preprocessing cache."""
        first_frame_dir = os.path.join(save_dir, "first_frame_dir")
        os.makedirs(first_frame_dir, exist_ok=True)
        cache = ctx.preprocess
        if cache and cache.get("hit"):
            found = read_cache(cache["dir"], args, first_frame_dir)
            if found is not None:
                ctx.note("preprocess", {"hit": True})
                return found
            print("[lipsync-tool worker] the cached preprocessing does not fit this job; extracting again", flush=True)
        print("3DMM Extraction for source image", flush=True)
        extractor = models.crop_extract(timer)
        with lipsync_worker.load_helper("face_hint").for_sadtalker(os.getcwd(), extractor, args.preprocess):
            first_coeff_path, crop_pic_path, crop_info = extractor.generate(
                args.source_image, first_frame_dir, args.preprocess, source_image_flag=True, pic_size=args.size
            )
        if first_coeff_path is None:
            raise lipsync_worker.JobFailed("Can't get the coeffs of the input", "face_not_found")
        if cache:
            write_cache(cache["dir"], args, first_coeff_path, crop_pic_path, crop_info)
        ctx.note("preprocess", {"hit": False})
        return first_coeff_path, crop_pic_path, crop_info


def references(args: argparse.Namespace, models: _Models, save_dir: str, timer: _LoadTimer) -> tuple[str | None, str | None]:
    """The 3DMM coefficients of --ref_eyeblink and --ref_pose, extracted as upstream does."""

    def extract(video: str, what: str) -> str:
        folder = os.path.join(save_dir, os.path.splitext(os.path.split(video)[-1])[0])
        os.makedirs(folder, exist_ok=True)
        print(f"3DMM Extraction for the reference video providing {what}", flush=True)
        coeff_path, _, _ = models.crop_extract(timer).generate(video, folder, args.preprocess, source_image_flag=False)
        return coeff_path

    eyeblink = extract(args.ref_eyeblink, "eye blinking") if args.ref_eyeblink is not None else None
    if args.ref_pose is None:
        return eyeblink, None
    return eyeblink, eyeblink if args.ref_pose == args.ref_eyeblink else extract(args.ref_pose, "pose")


# -- the preprocessing cache ---------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def write_cache(folder: str, args: argparse.Namespace, coeff_path: str, crop_pic_path: str, crop_info) -> None:
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(coeff_path, os.path.join(folder, CACHE_COEFF))
    shutil.copyfile(crop_pic_path, os.path.join(folder, CACHE_CROP))
    meta = {"version": CACHE_VERSION, "preprocess": args.preprocess, "size": args.size, "crop_info": _jsonable(crop_info)}
    with open(os.path.join(folder, CACHE_INFO), "w") as f:
        json.dump(meta, f)


def read_cache(folder: str, args: argparse.Namespace, first_frame_dir: str):
    """(coeff path, cropped image path, crop_info), named as CropAndExtract names them; None if unusable."""
    try:
        with open(os.path.join(folder, CACHE_INFO)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or (meta.get("version"), meta.get("preprocess"), meta.get("size")) != (CACHE_VERSION, args.preprocess, args.size):
        return None
    pic_name = os.path.splitext(os.path.split(args.source_image)[-1])[0]
    coeff_path, crop_pic_path = os.path.join(first_frame_dir, pic_name + ".mat"), os.path.join(first_frame_dir, pic_name + ".png")
    try:
        shutil.copyfile(os.path.join(folder, CACHE_COEFF), coeff_path)
        shutil.copyfile(os.path.join(folder, CACHE_CROP), crop_pic_path)
    except OSError:
        return None
    size, crop, quad = meta["crop_info"]
    return coeff_path, crop_pic_path, (tuple(size), None if crop is None else tuple(crop), quad)


# -- rendering and streaming ---------------------------------------------------------------------


def animate(ctx, animate_from_coeff, data: dict, crop_info, img_size: int, sink, fp16: bool) -> None:
    """Upstream's make_animation on AnimateFromCoeff's models, with the tensors its generate() would pass."""
    import torch
    from src.facerender.modules.make_animation import make_animation

    afc, device = animate_from_coeff, animate_from_coeff.device
    source_image = data["source_image"].type(torch.FloatTensor).to(device)
    source_semantics = data["source_semantics"].type(torch.FloatTensor).to(device)
    target_semantics = data["target_semantics_list"].type(torch.FloatTensor).to(device)
    nets = (afc.generator, afc.kp_extractor, afc.he_estimator, afc.mapping)
    cameras = [data[k].to(device) if k in data else None for k in ("yaw_c_seq", "pitch_c_seq", "roll_c_seq")]
    order = InOrder(ctx, data["frame_num"], target_semantics.shape[1], Converter(crop_info, img_size), sink)
    handle = afc.generator.register_forward_hook(order.hook)
    autocast = torch.autocast("cuda", dtype=torch.float16) if fp16 else contextlib.nullcontext()
    try:
        with autocast:
            make_animation(source_image, source_semantics, target_semantics, *nets, *cameras, use_exp=True)
    finally:
        handle.remove()
    order.finish()


class Converter:
    """A prediction (3, H, W) → the uint8 frame upstream hands imageio.mimsave: ``img_as_ubyte``,
    then (when crop_info[0], the crop's size, is set) resized to *img_size* wide at the crop's aspect."""

    def __init__(self, crop_info, img_size: int):
        self.original_size, self.img_size = crop_info[0], img_size

    def __call__(self, prediction):
        import cv2
        import numpy as np
        from skimage import img_as_ubyte

        frame = img_as_ubyte(np.transpose(prediction.data.cpu().numpy(), [1, 2, 0]).astype(np.float32))
        if self.original_size:
            width, height = self.original_size
            frame = cv2.resize(frame, (self.img_size, int(self.img_size * height / width)))
        return frame


class InOrder:
    """The generator's predictions, sent in upstream's frame order.

    ``get_facerender_data`` lays the frames out as (batch_size, T', …) and ``make_animation`` runs the
    generator once per column: call *t* makes frames t, T'+t, 2T'+t, …; upstream flattens (batch, T') and
    keeps the first ``frame_num``.  Frames are converted as they come and wait only for those before them."""

    def __init__(self, ctx, frame_num: int, columns: int, convert, sink):
        self.ctx, self.frame_num, self.columns, self.convert, self.sink = ctx, frame_num, columns, convert, sink
        self.pending: dict[int, Any] = {}
        self.sent = self.calls = 0

    def hook(self, module, inputs, output) -> None:
        prediction = output["prediction"]
        for row in range(prediction.shape[0]):
            index = row * self.columns + self.calls
            if index < self.frame_num:
                self.pending[index] = self.convert(prediction[row])
        self.calls += 1
        self.ctx.progress("render", self.calls, self.columns)
        self.flush()

    def flush(self) -> None:
        ready = []
        while self.sent in self.pending:
            ready.append(self.pending.pop(self.sent))
            self.sent += 1
        if ready:
            self.sink.put(ready)

    def finish(self) -> None:
        self.flush()
        if self.sent != self.frame_num:
            raise RuntimeError(f"the face renderer made {self.sent} of {self.frame_num} frames")


class Send:
    """RGB frames to the parent (``ctx.video`` before the first)."""

    def __init__(self, ctx):
        self.ctx, self.opened = ctx, False

    def put(self, frames: list) -> None:
        import numpy as np

        batch = np.ascontiguousarray(np.stack(frames))
        if not self.opened:
            self.ctx.video(batch.shape[2], batch.shape[1], FPS, pix_fmt="rgb24")
            self.opened = True
        self.ctx.frames(batch)

    def close(self) -> None:
        pass


class Enhance:
    """--enhancer: upstream's face enhancer on all the frames (it builds its restorer per call), then on."""

    def __init__(self, after, method: str, background: str | None):
        self.after, self.method, self.background, self.frames = after, method, background, []

    def put(self, frames: list) -> None:
        self.frames += frames

    def close(self) -> None:
        from src.utils.face_enhancer import enhancer_generator_no_len

        frames, self.frames = self.frames, []
        for image in enhancer_generator_no_len(frames, method=self.method, bg_upsampler=self.background):
            self.after.put([image])
        self.after.close()


class Paste:
    """full/extfull: chunks of frames pasted into the source image by upstream's paste_pic."""

    def __init__(self, after, pic_path: str, crop_info, extended: bool):
        self.after, self.pic_path, self.crop_info, self.extended, self.frames = after, pic_path, crop_info, extended, []

    def put(self, frames: list) -> None:
        self.frames += frames
        if len(self.frames) >= PASTE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.frames:
            frames, self.frames = self.frames, []
            self.after.put(paste_frames(frames, self.pic_path, self.crop_info, self.extended))

    def close(self) -> None:
        self.flush()
        self.after.close()


def build_sink(ctx, args: argparse.Namespace, crop_info):
    """Where the rendered frames go: [paste →] [enhance →] the parent, as upstream's order of steps."""
    sink: Any = Send(ctx)
    if args.enhancer:
        sink = Enhance(sink, args.enhancer, args.background_enhancer)
    if "full" in args.preprocess.lower():
        sink = Paste(sink, args.source_image, crop_info, "ext" in args.preprocess.lower())
    return sink


class _MemoryVideo:
    """cv2.VideoCapture of frames in memory (read), or a cv2.VideoWriter that keeps them (write)."""

    def __init__(self, frames: list, fps_prop: int = -1):
        self.frames, self._next, self._fps_prop = frames, iter(list(frames)), fps_prop

    def get(self, prop: int) -> float:
        return FPS if prop == self._fps_prop else 0.0

    def read(self):
        frame = next(self._next, None)
        return frame is not None, frame

    def write(self, frame) -> None:
        self.frames.append(frame)

    def release(self) -> None:
        pass


class _Cv2View:
    """cv2 as paste_pic sees it in :func:`paste_frames`."""

    def __init__(self, cv2, frames: list, out: list):
        self._cv2, self._frames, self._out = cv2, frames, out

    def __getattr__(self, name: str):
        return getattr(self._cv2, name)

    def VideoCapture(self, uri, *args):
        return _MemoryVideo(self._frames, self._cv2.CAP_PROP_FPS) if uri == FRAMES_URI else self._cv2.VideoCapture(uri, *args)

    def VideoWriter(self, *args):
        return _MemoryVideo(self._out)


def paste_frames(frames: list, pic_path: str, crop_info, extended: bool) -> list:
    """Upstream's ``paste_pic`` on *frames* (RGB); the pasted frames, RGB.

    ``paste_pic`` reads the animated crop back from upstream's temp video with
    ``cv2.VideoCapture`` (BGR), pastes each frame into the source image with
    ``cv2.seamlessClone``, writes a temp mpeg4 with ``cv2.VideoWriter`` and
    muxes it with the audio.  Its own code runs here, bound to a copy of its
    module's globals in which ``cv2.VideoCapture(FRAMES_URI)`` serves *frames*,
    ``cv2.VideoWriter`` keeps what it writes, and the mux and the temp file's
    removal do nothing.  Upstream's module is left as it is.
    """
    import types

    import cv2
    import numpy as np
    from src.utils.paste_pic import paste_pic

    out: list = []
    scope = dict(paste_pic.__globals__)
    # paste_pic uses os.path.isfile (the source image) and os.remove (its temp video, never written here)
    quiet_os = types.SimpleNamespace(path=os.path, remove=lambda path: None)
    scope.update(cv2=_Cv2View(cv2, [np.ascontiguousarray(f[..., ::-1]) for f in frames], out), os=quiet_os, save_video_with_watermark=lambda *a, **k: None)
    bound = types.FunctionType(paste_pic.__code__, scope, paste_pic.__name__, paste_pic.__defaults__, paste_pic.__closure__)
    bound(FRAMES_URI, pic_path, crop_info, None, None, extended_crop=extended)
    if len(out) != len(frames):
        raise RuntimeError(f"paste_pic gave {len(out)} frames for {len(frames)}")
    return [np.ascontiguousarray(f[..., ::-1]) for f in out]
