"""Two figures that need no weights: mouth-region sharpness and the audio/video duration gap.

* **Mouth sharpness**: the variance of the Laplacian (the 4-neighbour kernel)
  of the lower face, in grey levels², the median over up to
  :data:`SAMPLES` evenly spaced frames.  The face is dlib's HOG detection
  (its model is built into dlib, as for the face pre-check), the largest in
  each frame; the lower face is its bottom 40 %, the middle 60 % of its width.
  Higher is sharper; compare it between outputs of the same input.
* **A−V duration**: the audio stream's duration minus the video stream's, in
  seconds, each measured by stream-copying it (not from the container's
  header), so a clip whose audio was cut or padded shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..media import FFmpeg, MediaInfo, find_faces_in_array

log = logging.getLogger(__name__)

SAMPLES = 30
#: The lower face inside a HOG box (fractions of its height and width).
MOUTH_TOP, MOUTH_SIDE = 0.6, 0.2


@dataclass(frozen=True)
class Sharpness:
    value: float | None
    frames: int  # frames with a face that were measured
    note: str | None = None


def laplacian_variance(gray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D array (as ``cv2.Laplacian(…, CV_64F).var()`` inside the border)."""
    import numpy as np

    a = np.asarray(gray, dtype=np.float64)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return 0.0
    lap = a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4.0 * a[1:-1, 1:-1]
    return float(lap.var())


def mouth_region(gray, box) -> object:
    """The lower-face crop of *gray* for a :class:`~lipsync_tool.media.FaceBox`."""
    y0 = box.y + round(box.height * MOUTH_TOP)
    x0 = box.x + round(box.width * MOUTH_SIDE)
    x1 = box.x + box.width - round(box.width * MOUTH_SIDE)
    return gray[max(0, y0) : max(0, box.y + box.height), max(0, x0) : max(0, x1)]


def gray_frames(ff: FFmpeg, video: Path, info: MediaInfo, samples: int = SAMPLES):
    """Up to *samples* evenly spaced frames of *video* as 8-bit grey arrays."""
    import numpy as np

    v = info.video
    duration = (v.duration if v and v.duration else None) or info.duration or 0.0
    rate = max(0.2, min(v.fps or 25.0, samples / duration)) if duration > 0 else (v.fps or 25.0)
    proc = ff.run(
        ["-i", str(video), "-map", "0:v:0", "-vf", f"fps={rate:.4f},format=gray", "-frames:v", str(samples), "-f", "rawvideo", "pipe:1"],
        what=f"reading frames of {video}",
        timeout=600,
    )
    size = v.width * v.height
    data = np.frombuffer(proc.stdout, dtype=np.uint8)
    count = len(data) // size
    return [data[i * size : (i + 1) * size].reshape(v.height, v.width) for i in range(count)]


def mouth_sharpness(ff: FFmpeg, video: Path, info: MediaInfo, samples: int = SAMPLES) -> Sharpness:
    """The median mouth-region sharpness of *video* (see the module docstring)."""
    import numpy as np

    if info.video is None:
        return Sharpness(None, 0, "no video stream")
    values = []
    frames = gray_frames(ff, video, info, samples)
    for gray in frames:
        faces = find_faces_in_array(gray)
        if not faces:
            continue
        region = mouth_region(gray, max(faces, key=lambda b: b.area))
        if region.size >= 64:
            values.append(laplacian_variance(region))
    if not values:
        return Sharpness(None, 0, f"no face found in the {len(frames)} frames sampled (dlib's HOG detector, faces of 80 px and up)")
    return Sharpness(float(np.median(values)), len(values))


def av_duration_gap(info: MediaInfo) -> float | None:
    """Audio minus video duration in seconds (from a *measured* probe), or None without both streams."""
    if info.video is None or info.audio is None or info.video.duration is None or info.audio.duration is None:
        return None
    return round(info.audio.duration - info.video.duration, 4)
