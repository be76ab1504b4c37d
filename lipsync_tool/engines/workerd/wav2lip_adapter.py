"""Wav2Lip in a warm worker: upstream's own ``inference.py``, imported once.

Runs in the engine's interpreter, loaded by ``workerd/main.py`` with the link
farm of the pinned clone first on ``sys.path`` (see docs/workers.md).  Nothing
of upstream is copied here:

* ``inference.py`` is imported from the link farm as a module, with a
  placeholder ``sys.argv`` (it parses its arguments at import).  Per job, the
  job's argv (upstream's own, as a subprocess run gets it) is parsed by
  upstream's own ``parser`` and becomes the module's ``args``; the module's
  ``device`` is the job's.  Upstream's ``datagen``, ``face_detect``,
  ``load_model`` and ``audio`` then behave exactly as in a subprocess run.
* Only the loop of upstream's ``main()`` is written here again (read the
  frames, cut the mel into chunks, run the batches through the generator,
  paste the 96x96 mouth crop back), streaming each finished batch to the
  parent (``ctx.frames``) instead of writing ``temp/result.avi`` and muxing it
  with ffmpeg.
* The generator stays loaded across jobs, keyed by the checkpoint's real path
  (and its size and mtime) and the device.  The s3fd detector, which
  upstream's ``face_detect`` builds on every call, comes from a cache: the
  module's ``face_detection`` name is pointed at a stand-in whose
  ``FaceAlignment`` returns a kept instance (the detector holds no per-call
  state).
* The preprocessing cache holds the face boxes upstream's ``face_detect``
  returned (after pads and smoothing), and the frames without a face; on a
  hit the crops are cut from the frames as upstream cuts them, and the
  detector is not run.
* Frames of a face video where s3fd finds no face pass through unchanged
  (unless ``require_face_every_frame``): for this job the kept detector is
  wrapped (:class:`_Recording`) so it notes them and hands upstream's
  ``face_detect`` a stand-in box (the last face found), and the loop sends
  those frames as they were read.  An image, ``--static``, or a video with no
  face at all fails as upstream does.
* ``wav2lip_quality = improved`` pastes only the mouth of the generated face
  through a feathered mask (``workerd/blend.py``); ``enhanced`` runs GFPGAN on
  the face crop first (``workerd/restore.py``); ``fast`` is upstream's paste.

Upstream's own exceptions (``Face not detected!``, ``Mel contains nan``, …)
propagate unchanged: the traceback in the log is what the engine's error
translation reads, as for a subprocess run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import lipsync_worker

#: Where the preprocessing cache keeps the face boxes.
BOXES_FILE = "boxes.json"
BOXES_VERSION = 2  # 2 added "faceless"; a version 1 entry has none (its run needed a face in every frame)
#: Frame indices listed in the report's note on frames without a face.
FIRST_FACELESS = 10
NO_FACE = "Face not detected! Ensure the video contains a face in all the frames."
#: Upstream's placeholder argv at import (its parser requires these three).
IMPORT_ARGV = ["inference.py", "--checkpoint_path", "unset", "--face", "unset", "--audio", "unset"]
#: The extensions upstream treats as an image, tested on ``face.split('.')[1]``.
IMAGE_EXTENSIONS = ("jpg", "png", "jpeg")
#: Generators kept loaded at once (each is about 150 MB).
MAX_MODELS = 2


def is_image(face: str) -> bool:
    """Upstream's image test: the text after the *first* dot (a quirk: ``a.b/c.png`` is a video)."""
    return face.split(".")[1] in IMAGE_EXTENSIONS


class _Detectors:
    """Stands in for the ``face_detection`` package inside ``inference.py``:
    ``FaceAlignment(...)`` answers a kept instance; everything else is the package's."""

    def __init__(self, package, build):
        self._package = package
        self.FaceAlignment = build

    def __getattr__(self, name: str):
        return getattr(self._package, name)


class _Recording:
    """The kept detector, for one job whose frames without a face may pass through.

    It notes, in order, which images had a face, and answers a stand-in box
    for the others (the last face found, else the whole image) so that
    upstream's ``face_detect`` goes on; the loop later sends those frames
    unchanged.  The stand-in only weighs in the smoothing window of the frames
    just before it (upstream's window looks forward), and it is the last face."""

    def __init__(self, detector, record: FaceRecord):
        self._detector, self._record = detector, record

    def get_detections_for_batch(self, images):
        try:
            rects = self._detector.get_detections_for_batch(images)
        except RuntimeError:
            self._record.restart()  # upstream starts again from the first image with a smaller batch
            raise
        out = []
        for rect, image in zip(rects, images, strict=True):
            self._record.found.append(rect is not None)
            if rect is not None:
                self._record.last = rect
            out.append(rect if rect is not None else (self._record.last or (0, 0, image.shape[1], image.shape[0])))
        return out

    def __getattr__(self, name: str):
        return getattr(self._detector, name)


class FaceRecord:
    """One job's frames without a face (indices into the frames upstream's face_detect was given)."""

    def __init__(self, tolerant: bool):
        self.tolerant = tolerant
        self.found: list[bool] = []
        self.last = None
        #: From the preprocessing cache on a hit.
        self.cached: list[int] | None = None

    def restart(self) -> None:
        self.found, self.last = [], None

    def faceless(self) -> list[int]:
        return list(self.cached) if self.cached is not None else [i for i, ok in enumerate(self.found) if not ok]

    def check(self, images) -> None:
        """Fail as upstream does when frames without a face may not pass (or no frame has one)."""
        faceless = self.faceless()
        if faceless and (not self.tolerant or len(faceless) >= len(images)):
            import cv2

            cv2.imwrite("temp/faulty_frame.jpg", images[faceless[0]])
            raise ValueError(NO_FACE if not self.tolerant else "Face not detected! No frame of the face video has a face.")


class Adapter:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.upstream = None  # inference.py, imported on the first job
        self.face_detection = None  # the real package
        self.import_args = None  # the namespace upstream built at import (img_size, …)
        self.models: dict[tuple, Any] = {}
        self.detectors: dict[str, Any] = {}
        self._ctx = None
        self.faces: FaceRecord | None = None
        self.hint = None  # this job's face hint (--face-index): wraps the kept detector (workerd/face_hint.py)
        self._restorer: tuple[tuple, Any] | None = None  # (device and weights file, GFPGAN's enhance)

    # -- one job -------------------------------------------------------------------------------

    def render(self, ctx) -> dict[str, Any]:
        ctx.seed()
        inf = self.load_upstream()
        args = self.job_args(inf, ctx)
        device = self.job_device(ctx)
        inf.args, inf.device = args, device
        self._ctx = ctx
        options = ctx.options or {}
        self.faces = FaceRecord(tolerant=not options.get("require_face_every_frame", False) and not args.static)
        self.hint = lipsync_worker.load_helper("face_hint").for_wav2lip(os.getcwd(), args, is_image(args.face))
        try:
            frames, fps = read_frames(args)
            print(f"Number of frames available for inference: {len(frames)}", flush=True)
            chunks = mel_chunks(inf, wav_path(args), fps)
            print(f"Length of mel chunks: {len(chunks)}", flush=True)
            frames = frames[: len(chunks)]
            with self.face_boxes(inf, ctx, args):
                self.generate(inf, ctx, frames, chunks, fps)
        finally:
            self._ctx, self.faces, self.hint = None, None, None
            if device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
        return {"device": device, "batch_size": args.wav2lip_batch_size}

    def job_args(self, inf, ctx):
        """The job's argv, parsed by upstream's own parser, plus what upstream sets after parsing."""
        argv = [str(a) for a in ctx.job.get("argv") or []]
        try:
            args = inf.parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits (and prints why); that must not end the worker
            raise lipsync_worker.JobFailed(f"Wav2Lip's argument parser refused the job's arguments (exit {exc.code}): {argv}", "usage") from None
        for name, value in vars(self.import_args).items():
            if not hasattr(args, name):  # img_size: set by upstream after parse_args
                setattr(args, name, value)
        if os.path.isfile(args.face) and is_image(args.face):
            args.static = True  # as upstream does at import: an image is always static
        requested = ctx.job.get("batch_size")
        free = None
        if requested == "auto":
            import torch

            free = lipsync_worker.gpu.free_vram(torch)
        size, why = lipsync_worker.gpu.choose_batch_size(requested, args.wav2lip_batch_size, kind="wav2lip", free_bytes=free, fp16=bool(ctx.job.get("fp16")))
        args.wav2lip_batch_size = size
        ctx.note("batch_size", {"value": size, "source": why})
        return args

    def job_device(self, ctx) -> str:
        import torch

        device = ctx.job.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise lipsync_worker.JobFailed("the engine's torch sees no CUDA GPU (--device cuda)", "usage")
        if ctx.job.get("fp16") and not device.startswith("cuda"):
            raise lipsync_worker.JobFailed("--fp16 needs a CUDA GPU", "usage")
        return device

    # -- upstream, models, detector ------------------------------------------------------------

    def load_upstream(self):
        """``inference.py`` from the link farm, imported once with a placeholder argv."""
        if self.upstream is not None:
            return self.upstream
        path = os.path.join(self.workdir, "inference.py")
        spec = importlib.util.spec_from_file_location("inference", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        saved = sys.argv
        sys.argv = list(IMPORT_ARGV)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.argv = saved
        self.face_detection = module.face_detection
        module.face_detection = _Detectors(module.face_detection, self.face_alignment)
        self.import_args = module.args
        self.upstream = module
        return module

    def model(self, inf, ctx, path: str, device: str):
        """Upstream's ``load_model(path)``, once per checkpoint file and device."""
        real = os.path.realpath(path)
        st = os.stat(real)
        key = (real, st.st_size, st.st_mtime_ns, device)
        model = self.models.get(key)
        if model is not None:
            ctx.note("models", {"loaded": False, "seconds": 0.0})
            return model
        started = time.monotonic()
        model = inf.load_model(path)
        while len(self.models) >= MAX_MODELS:
            self.models.pop(next(iter(self.models)))
        self.models[key] = model
        print("Model loaded", flush=True)
        ctx.note("models", {"loaded": True, "seconds": round(time.monotonic() - started, 3)})
        return model

    def face_alignment(self, *args, **kwargs):
        """What ``face_detection.FaceAlignment(...)`` answers inside upstream's face_detect: one instance per arguments."""
        key = repr((args, sorted(kwargs.items())))
        detector = self.detectors.get(key)
        started = time.monotonic()
        loaded = detector is None
        if detector is None:
            detector = self.new_face_alignment(*args, **kwargs)
            self.detectors[key] = detector
        if self._ctx is not None:
            self._ctx.note("detector", {"loaded": loaded, "seconds": round(time.monotonic() - started, 3)})
        detector = self.hint(detector) if self.hint is not None else detector
        if self.faces is not None and self.faces.tolerant:
            return _Recording(detector, self.faces)
        return detector

    def new_face_alignment(self, *args, **kwargs):
        """Upstream's detector (s3fd, its weights read from the worker's link farm)."""
        return self.face_detection.FaceAlignment(*args, **kwargs)

    # -- the preprocessing cache ---------------------------------------------------------------

    @contextlib.contextmanager
    def face_boxes(self, inf, ctx, args):
        """For this job, upstream's face_detect behind the preprocessing cache."""
        pre = ctx.preprocess
        if args.box[0] != -1:  # upstream skips the detector: nothing to keep
            if pre is not None:
                ctx.note("preprocess", {"hit": False, "skipped": "box"})
            yield
            return
        detect = inf.face_detect
        faces = self.faces
        assert faces is not None
        cached = cached_face_detect(detect, ctx, pre, faces) if pre is not None else detect

        def checked(images):
            results = cached(images)
            faces.check(images)
            return results

        inf.face_detect = checked
        try:
            yield
        finally:
            inf.face_detect = detect

    # -- the loop of upstream's main() ---------------------------------------------------------

    def generate(self, inf, ctx, frames: list, chunks: list, fps: float) -> int:
        """Batches from upstream's datagen through the generator; each finished batch goes to the parent."""
        import numpy as np

        args, device = inf.args, inf.device
        total = math.ceil(len(chunks) / args.wav2lip_batch_size)
        put, restorer = self.paster(ctx, device)
        model, sent, passed = None, 0, []
        for i, (img_batch, mel_batch, batch_frames, coords) in enumerate(inf.datagen(frames.copy(), chunks)):
            if model is None:
                model = self.model(inf, ctx, args.checkpoint_path, device)
                height, width = frames[0].shape[:-1]
                ctx.video(width, height, fps)
                faceless = set(self.faces.faceless()) if self.faces is not None else set()
            pred = predict(model, img_batch, mel_batch, device, bool(ctx.job.get("fp16")))
            done = []
            for p, f, c in zip(pred, batch_frames, coords, strict=False):
                source = 0 if args.static else (sent + len(done)) % len(frames)  # the frame datagen took, as it takes it
                if source in faceless:
                    passed.append(sent + len(done))
                    done.append(f)  # datagen's own copy of the frame as it was read
                else:
                    done.append(put(p, f, c))
            ctx.frames(np.stack(done))
            sent += len(done)
            ctx.progress("render", i + 1, total)
        if passed:
            ctx.note("frames_without_face", {"count": len(passed), "first": passed[:FIRST_FACELESS]})
        if restorer is not None:
            ctx.note("restorer", {"name": "GFPGANv1.4", **restorer.summary()})
        return sent

    def paster(self, ctx, device: str):
        """How a predicted crop goes back into its frame: upstream's paste (fast), through the mouth mask
        (improved), or restored by GFPGAN on the face crop, then through the mouth mask (enhanced)."""
        options = ctx.options or {}
        quality = options.get("wav2lip_quality", "fast")
        if quality == "fast":
            return paste, None
        if quality not in ("improved", "enhanced"):
            raise lipsync_worker.JobFailed(f"this worker does not know --wav2lip-quality {quality}", "usage")
        blend = lipsync_worker.load_helper("blend")
        size = float(options.get("wav2lip_mask_size", blend.DEFAULT_SIZE))
        feather = float(options.get("wav2lip_mask_feather", blend.DEFAULT_FEATHER))
        restorer = self.restorer(ctx, device) if quality == "enhanced" else None
        return lipsync_worker.load_helper("restore").mouth_paster(blend, restorer, size, feather, paste), restorer

    def restorer(self, ctx, device: str):
        """A :class:`restore.Restorer` around GFPGAN, loaded once per worker, device and weights file."""
        restore = lipsync_worker.load_helper("restore")
        st = os.stat(os.path.realpath(restore.GFPGAN_WEIGHTS))
        key = (device, os.path.realpath(restore.GFPGAN_WEIGHTS), st.st_size, st.st_mtime_ns)
        started = time.monotonic()
        loaded = self._restorer is None or self._restorer[0] != key
        if loaded:
            try:
                self._restorer = (key, restore.gfpgan(device))
            except ImportError as exc:
                raise lipsync_worker.JobFailed(f"--wav2lip-quality enhanced needs gfpgan in the engine's Python: {exc}", "dependency") from None
        ctx.note("restorer_load", {"loaded": loaded, "seconds": round(time.monotonic() - started, 3)})
        return restore.Restorer(self._restorer[1])


def read_frames(args) -> tuple[list, float]:
    """The face's frames and fps, prepared as upstream's main() prepares them."""
    import cv2

    if not os.path.isfile(args.face):
        raise ValueError("--face argument must be a valid path to video/image file")
    if is_image(args.face):
        return [cv2.imread(args.face)], args.fps
    stream = cv2.VideoCapture(args.face)
    try:
        fps = stream.get(cv2.CAP_PROP_FPS)
        print("Reading video frames...", flush=True)
        frames = []
        while True:
            ok, frame = stream.read()
            if not ok:
                break
            frames.append(prepare_frame(frame, args))
    finally:
        stream.release()
    return frames, fps


def prepare_frame(frame, args):
    """--resize_factor, then --rotate, then --crop (top bottom left right, -1: to the edge)."""
    import cv2

    if args.resize_factor > 1:
        frame = cv2.resize(frame, (frame.shape[1] // args.resize_factor, frame.shape[0] // args.resize_factor))
    if args.rotate:
        frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    top, bottom, left, right = args.crop
    bottom = frame.shape[0] if bottom == -1 else bottom
    right = frame.shape[1] if right == -1 else right
    return frame[top:bottom, left:right]


def wav_path(args) -> str:
    """The audio as a WAV: upstream converts anything else to temp/temp.wav (in the job's dir) with ffmpeg."""
    if args.audio.endswith(".wav"):
        return args.audio
    print("Extracting raw audio...", flush=True)
    subprocess.run(["ffmpeg", "-y", "-i", args.audio, "-strict", "-2", "temp/temp.wav"], check=False, timeout=600)
    return "temp/temp.wav"


def mel_chunks(inf, path: str, fps: float) -> list:
    """Upstream's mel spectrogram, cut into one window of ``mel_step_size`` per video frame."""
    import numpy as np

    mel = inf.audio.melspectrogram(inf.audio.load_wav(path, 16000))
    print(mel.shape, flush=True)
    if np.isnan(mel).any():
        raise ValueError("Mel contains nan! Using a TTS voice? Add a small epsilon noise to the wav file and try again")
    step, length = inf.mel_step_size, mel.shape[1]
    per_frame = 80.0 / fps
    chunks = []
    for i in range(int(length / per_frame) + 2):  # by then a window would pass the end
        start = int(i * per_frame)
        if start + step > length:
            chunks.append(mel[:, length - step :])
            break
        chunks.append(mel[:, start : start + step])
    return chunks


def predict(model, img_batch, mel_batch, device: str, fp16: bool):
    """The generator on one batch: its 96x96 mouth crops, N x 96 x 96 x 3, as 0..255 floats."""
    import numpy as np
    import torch

    img = torch.FloatTensor(np.transpose(img_batch, (0, 3, 1, 2))).to(device)
    mel = torch.FloatTensor(np.transpose(mel_batch, (0, 3, 1, 2))).to(device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if fp16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        pred = model(mel, img)
    return pred.float().cpu().numpy().transpose(0, 2, 3, 1) * 255.0


def paste(pred, frame, coords):
    """The crop resized back into its box of the frame (the frame is the batch's own copy)."""
    import cv2
    import numpy as np

    y1, y2, x1, x2 = coords
    frame[y1:y2, x1:x2] = cv2.resize(pred.astype(np.uint8), (x2 - x1, y2 - y1))
    return frame


def cached_face_detect(detect, ctx, pre: dict[str, Any], faces: FaceRecord):
    """Upstream's *detect*, behind the cache in ``pre["dir"]``: a miss runs it and
    keeps its boxes and frames without a face; a hit cuts the crops from the
    cached boxes instead (and tells *faces* which frames had none)."""
    path = os.path.join(pre["dir"], BOXES_FILE)

    def through_cache(images):
        if pre.get("hit"):
            boxes, faces.cached = read_boxes(path, images)
            ctx.note("preprocess", {"hit": True, "frames": len(boxes)})
            return [[image[y1:y2, x1:x2], (y1, y2, x1, x2)] for image, (y1, y2, x1, x2) in zip(images, boxes, strict=True)]
        results = detect(images)
        boxes = [[int(v) for v in coords] for _, coords in results]
        write_boxes(path, boxes, images, faces.faceless())
        ctx.note("preprocess", {"hit": False, "frames": len(boxes)})
        return results

    return through_cache


def write_boxes(path: str, boxes: list[list[int]], images, faceless: list[int]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"version": BOXES_VERSION, "order": "y1 y2 x1 x2", "shape": list(images[0].shape[:2]), "boxes": boxes, "faceless": faceless}
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_boxes(path: str, images) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """The cached boxes, and the frames without a face."""
    with open(path) as f:
        data = json.load(f)
    boxes = [tuple(int(v) for v in box) for box in data.get("boxes", [])]
    if data.get("version") not in (1, BOXES_VERSION) or len(boxes) != len(images) or list(images[0].shape[:2]) != data.get("shape"):
        raise RuntimeError(f"the cached face boxes in {path} do not fit this face input ({len(boxes)} boxes for {len(images)} frames)")
    return boxes, [int(i) for i in data.get("faceless", [])]
