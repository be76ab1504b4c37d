"""The face pre-check: dlib's HOG detector on the staged portrait."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .images import flatten, open_image

#: Detections scoring below this do not count as a second face for the
#: several-faces warning (they still pass the pre-check).
FACE_NOTICE_MIN_SCORE = 0.3


@dataclass(frozen=True)
class FaceBox:
    """A face the pre-check found, in pixels of the image it looked at."""

    x: int
    y: int
    width: int
    height: int
    score: float = 0.0

    @property
    def area(self) -> int:
        return self.width * self.height

    def scaled(self, factor: float) -> FaceBox:
        return FaceBox(round(self.x * factor), round(self.y * factor), round(self.width * factor), round(self.height * factor), self.score)


_DETECTORS = threading.local()


def _detector():
    """dlib's HOG detector, built once per thread: building it takes about 0.4 s
    and holds the GIL (a service stalled on it at every job's start), and one
    detector must not be shared between threads."""
    detector = getattr(_DETECTORS, "detector", None)
    if detector is None:
        import dlib

        detector = _DETECTORS.detector = dlib.get_frontal_face_detector()
    return detector


def find_faces(image: Path) -> list[FaceBox]:
    """Frontal faces dlib's HOG detector finds (its model is built into dlib),
    most confident first, in pixels of *image* (upright, EXIF applied).

    Any bit depth or mode is read as :func:`stage_face` reads it (a 16-bit
    grayscale image is rescaled, not clipped).
    """
    import numpy as np
    from PIL import ImageOps

    im = open_image(image)
    if im is None:
        raise InputError("is not an image that can be decoded", subject=image)
    with im:
        gray = flatten(ImageOps.exif_transpose(im)).convert("L")
    return find_faces_in_array(np.asarray(gray))


def find_faces_in_array(gray) -> list[FaceBox]:
    """:func:`find_faces` on an 8-bit grayscale array (rows, columns), boxes in its pixels."""
    import numpy as np

    h, w = gray.shape[:2]
    scale = 1.0
    arr = np.ascontiguousarray(gray, dtype=np.uint8)
    if max(w, h) > 800:
        from PIL import Image

        scale = 800 / max(w, h)
        arr = np.asarray(Image.fromarray(arr).resize((max(1, round(w * scale)), max(1, round(h * scale)))))
    detector = _detector()
    # Most portraits have a face well above the detector's 80 px minimum: try
    # without upsampling first (about 15x faster), then look for small faces.
    rects, scores, _ = detector.run(arr, 0, 0)
    if len(rects) == 0 and max(arr.shape) < 1000:
        rects, scores, _ = detector.run(arr, 1, 0)
    boxes = []
    for r, score in sorted(zip(rects, scores), key=lambda rs: -rs[1]):
        x0, y0 = max(0, r.left()) / scale, max(0, r.top()) / scale
        x1, y1 = min(arr.shape[1], r.right() + 1) / scale, min(arr.shape[0], r.bottom() + 1) / scale
        boxes.append(FaceBox(round(x0), round(y0), round(x1 - x0), round(y1 - y0), float(score)))
    return boxes


def count_faces(image: Path) -> int:
    """How many faces :func:`find_faces` finds."""
    return len(find_faces(image))


def several_faces_message(src: Path, boxes: list[FaceBox], *, scale: float = 1.0, first_frame: bool = False) -> str | None:
    """A warning for an input with more than one face, naming the largest; else None.

    Neither engine lets one choose: SadTalker's cropper and Wav2Lip's
    ``face_detect`` take their own detector's first, most confident,
    detection, which is usually the largest face but not always.  *scale*
    maps the boxes to the user's image (when the staged copy was downscaled).
    """
    # dlib's weakest detections (scores near 0) are often a fold of cloth or
    # a hand; a second face worth a warning scores well above that.
    boxes = [b for b in boxes if b.score >= FACE_NOTICE_MIN_SCORE]
    if len(boxes) < 2:
        return None
    big = max(boxes, key=lambda b: b.area).scaled(scale)
    where = f"the first frame of {src}" if first_frame else str(src)
    return (
        f"{len(boxes)} faces found in {where}; the engine lip-syncs only one of them, the one its own detector is most "
        f"confident of (usually the largest or clearest; here likely the {big.width}x{big.height} px face at x={big.x}, y={big.y}). "
        "Crop the input to one face to choose."
    )
