"""The face hint: which face of a still portrait the engine animates (``--face-index``, or the advisor's choice).

The parent writes :data:`FILE` into the job's working dir (``Command.files``) when the pre-job advisor chose
one face of several (or the user did, with ``--face-index``): the chosen box, ``x1 y1 x2 y2`` in pixels of the
staged still, that still's size, the face's index and why it was chosen.  A worker adapter reads it with
:meth:`FaceHint.read`, maps the box into the frame its detector sees (:func:`into_frame`, :func:`scaled`), and
wraps the detector so that only the detection that best matches the hint is returned (:meth:`FaceHint.choose`).
Upstream then crops, animates and pastes back that face.  When no detection matches, the job fails with
:class:`HintNotMatched`: another face is never animated instead.

Plain Python (no numpy, no OpenCV): loaded in the worker with ``lipsync_worker.load_helper("face_hint")``, and
imported by the parent (its file name, its messages) and the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: The hint's file, in the job's working dir.
FILE = "face_hint.json"
VERSION = 1
#: A detection is the hinted face when their boxes overlap this much (intersection over union), or, for
#: detectors whose boxes are cut differently (tighter, taller), when each box holds the other's centre.
MIN_IOU = 0.3
#: Words the parent finds in a worker's error to tell a hint that matched no detection (see :class:`HintNotMatched`).
NOT_MATCHED = "is not among the faces the engine's detector found"

Box = tuple[float, float, float, float]


class HintNotMatched(ValueError):
    """No detection of the engine matches the hinted face.  A ``ValueError`` on purpose: upstream Wav2Lip retries
    a ``RuntimeError`` of its detector with a smaller batch.  ``kind`` is read by the worker's error reply."""

    kind = "face_not_found"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``x1 y1 x2 y2`` boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 and inter > 0 else 0.0


def _holds_centre(outer: Sequence[float], inner: Sequence[float]) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def best_match(boxes: Sequence[Sequence[float]], target: Sequence[float], min_iou: float = MIN_IOU) -> tuple[int | None, float]:
    """The index of the box in *boxes* that is *target* (the largest overlap, if it is at least *min_iou* or the two
    boxes hold each other's centres), or None; and the largest overlap found."""
    best, best_iou = None, 0.0
    for i, box in enumerate(boxes):
        value = iou(box, target)
        if best is None or value > best_iou:
            best, best_iou = i, value
    if best is None:
        return None, 0.0
    box = boxes[best]
    if best_iou >= min_iou or (_holds_centre(box, target) and _holds_centre(target, box)):
        return best, best_iou
    return None, best_iou


def into_frame(box: Sequence[float], *, resize_factor: int = 1, crop_top_left: tuple[int, int] = (0, 0)) -> Box:
    """A box of the staged face in the coordinates of the frame Wav2Lip's detector sees: upstream divides a face
    video's frames by ``--resize_factor`` (integer division of the size), then cuts ``--crop`` (its top and left
    edges shift the origin).  A still image is neither resized nor cropped by upstream (factor 1, no crop)."""
    if resize_factor < 1:
        raise ValueError(f"the resize factor must be at least 1, not {resize_factor}")
    top, left = crop_top_left
    x1, y1, x2, y2 = (float(v) / resize_factor for v in box)
    return (x1 - left, y1 - top, x2 - left, y2 - top)


def scaled(box: Sequence[float], source: tuple[int, int], target: tuple[int, int]) -> Box:
    """*box* of a *source* ``(width, height)`` image in a copy resized to *target* ``(width, height)``."""
    sx, sy = target[0] / source[0], target[1] / source[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def padded_box(box: Sequence[float], pads: Sequence[int], frame: tuple[int, int]) -> tuple[int, int, int, int]:
    """A hinted box (x1 y1 x2 y2, the advisor's S3FD detection) as Wav2Lip's ``--box`` (top bottom left right),
    padded as upstream's ``face_detect`` pads a detection (``--pads`` top bottom left right) and clipped to the
    *frame* (width, height): upstream takes a ``--box`` as it is, without pads."""
    width, height = frame
    x1, y1, x2, y2 = (max(0, int(v)) for v in box)
    top, bottom, left, right = (int(p) for p in pads)
    return (max(0, y1 - top), min(height, y2 + bottom), max(0, x1 - left), min(width, x2 + right))


class HintedBatchDetector:
    """Wav2Lip's kept ``face_detection.FaceAlignment`` for a job with a hint: ``get_detections_for_batch`` answers,
    for each image, the detection that is the hinted face (upstream's answers the first detection), ``None`` for an
    image without any face (upstream's "Face not detected!" follows), and raises :class:`HintNotMatched` when the
    image has faces but not that one.  *target* is the hint's box in the detector's frame (:func:`into_frame`)."""

    def __init__(self, detector, hint: FaceHint, target: Sequence[float]):
        self._detector, self._hint, self._target = detector, hint, tuple(target)
        self.calls = 0

    def get_detections_for_batch(self, images):
        self.calls += 1
        found = self._detector.face_detector.detect_from_batch(images[..., ::-1].copy())  # BGR in, as upstream's
        out: list = []
        for rows in found:
            if len(rows) == 0:
                out.append(None)
                continue
            boxes = [[max(0.0, float(v)) for v in row[:4]] for row in rows]
            out.append(tuple(int(v) for v in boxes[self._hint.choose(boxes, self._target, what="the detections of Wav2Lip's s3fd")]))
        return out

    def __getattr__(self, name: str):
        return getattr(self._detector, name)


@dataclass(frozen=True)
class FaceHint:
    """The chosen face: its *index* (0, 1, … left to right), its *box* in pixels of the staged still of size *frame*
    ``(width, height)``, and why it was chosen (``--face-index 1``, ``the largest``)."""

    index: int
    box: Box
    frame: tuple[int, int]
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "index": self.index, "box": [round(v, 2) for v in self.box], "frame": list(self.frame), "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaceHint:
        if data.get("version") != VERSION:
            raise ValueError(f"a face hint of version {data.get('version')!r}; this worker reads version {VERSION}")
        x1, y1, x2, y2 = (float(v) for v in data["box"])
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"the face hint's box is empty: {data['box']}")
        width, height = (int(v) for v in data["frame"])
        return cls(int(data["index"]), (x1, y1, x2, y2), (width, height), str(data.get("reason", "")))

    @classmethod
    def read(cls, folder: str) -> FaceHint | None:
        """The hint the parent wrote into the job's working dir *folder*, or None when it wrote none."""
        path = os.path.join(folder, FILE)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))

    def label(self) -> str:
        return f"face {self.index}" + (f" ({self.reason})" if self.reason else "")

    def choose(self, boxes: Sequence[Sequence[float]], target: Sequence[float] | None = None, *, what: str = "") -> int:
        """The index into *boxes* (detections, ``x1 y1 x2 y2`` in the detector's frame) of the hinted face, whose box
        in that frame is *target* (default: :attr:`box`); :class:`HintNotMatched` when none of them is it."""
        target = self.box if target is None else target
        found, overlap = best_match(boxes, target)
        if found is None:
            where = f" in {what}" if what else ""
            raise HintNotMatched(
                f"{self.label()} {NOT_MATCHED}{where} ({len(boxes)} found; the best overlaps it by IoU {overlap:.2f}, "
                f"at least {MIN_IOU} is needed): no other face is animated in its place"
            )
        return found


def for_wav2lip(folder: str, args: Any, still_image: bool):
    """For a Wav2Lip worker job (upstream's parsed *args*): None without a hint, else the wrapper for its kept
    detector (:class:`HintedBatchDetector`).  The job's argv carries the hint as ``--box`` (:func:`padded_box`, for
    upstream's own CLI); the worker runs the detector instead, so that the face is upstream's own s3fd detection
    (pads, smoothing, the preprocessing cache) and a hint that matches no detection fails the job."""
    hint = FaceHint.read(folder)
    if hint is None:
        return None
    if not still_image:
        raise ValueError("a face hint (--face-index) applies to a still image, and this job's face is a video")
    if list(args.box) != list(padded_box(hint.box, args.pads, hint.frame)):
        raise ValueError(f"the job's --box {args.box} is not its face hint's {padded_box(hint.box, args.pads, hint.frame)}")
    args.box = [-1, -1, -1, -1]
    target = into_frame(hint.box)  # upstream neither resizes nor crops a still image
    return lambda detector: HintedBatchDetector(detector, hint, target)


class HintedDetNet:
    """SadTalker's RetinaFace (``det_net``) while its cropper looks for the source face: ``detect_faces`` answers only
    the detection that is the hinted face (the cropper takes the first), or raises :class:`HintNotMatched`."""

    def __init__(self, net, hint: FaceHint, target: Sequence[float]):
        self._net, self._hint, self._target = net, hint, tuple(target)

    def detect_faces(self, image, *args, **kwargs):
        dets = self._net.detect_faces(image, *args, **kwargs)
        if len(dets) == 0:
            return dets  # no face at all: upstream's own error follows
        i = self._hint.choose([[float(v) for v in d[:4]] for d in dets], self._target, what="the detections of SadTalker's RetinaFace")
        return dets[i : i + 1]

    def __getattr__(self, name: str):
        return getattr(self._net, name)


@contextlib.contextmanager
def for_sadtalker(folder: str, crop_extract, preprocess: str) -> Iterator[FaceHint | None]:
    """While SadTalker's ``CropAndExtract.generate`` crops the source image: with a hint in *folder*, its cropper's
    ``get_landmark`` sees only the hinted face (:class:`HintedDetNet`); upstream then crops, animates and, for
    ``full``, pastes back that face.  The 3DMM fit on the crop that follows runs on upstream's own detector.
    ``--preprocess resize`` detects nothing (the whole image is the face), so a hint there fails the job."""
    hint = FaceHint.read(folder)
    if hint is None:
        yield None
        return
    if "crop" not in preprocess.lower() and "full" not in preprocess.lower():
        raise ValueError(f"--preprocess {preprocess} animates the whole image, so it cannot animate {hint.label()}: use crop or full")
    cropper = crop_extract.propress
    own = cropper.get_landmark

    def get_landmark(img_np):
        holder = cropper.predictor
        net = holder.det_net
        holder.det_net = HintedDetNet(net, hint, scaled(hint.box, hint.frame, (img_np.shape[1], img_np.shape[0])))
        try:
            return own(img_np)
        finally:
            holder.det_net = net

    cropper.get_landmark = get_landmark
    try:
        yield hint
    finally:
        del cropper.get_landmark
