"""Pasting a generated face back through a feathered mouth mask (numpy + OpenCV only).

A pure helper of the warm workers' adapters (``lipsync_worker.load_helper("blend")``
in the engine's interpreter); nothing of upstream and nothing of lipsync-tool is
imported here, so the Wav2Lip adapter and the fake engine's adapter share it.

The mask lives in the coordinates of one frame's face box, so it follows the
box from frame to frame::

      x1 ─────────────── x2
   y1 ┌─────────────────┐
      │   (upper half:  │
      │    never mask)  │
      │      ╭─────╮    │  the ellipse: centred in the lower half
      │     (  mouth )  │  (at 3/4 of the box height), its axes
   y2 └──────╰─────╯────┘  ``size`` × half the width and ``size`` × a quarter of the height

Inside the ellipse shrunk by the feather radius the mask is 1; a Gaussian
blur spreads the edge over the feather radius; outside the full ellipse it is
exactly 0, so those pixels of the output are the input frame's, byte for byte.
"""

from __future__ import annotations

import cv2
import numpy as np

#: The fraction of the lower half of the face box the ellipse spans.
DEFAULT_SIZE = 0.75
#: The feather width: below 1 a fraction of the box's smaller side, else pixels.
DEFAULT_FEATHER = 0.08
#: Mask values this close to 1 count as 1 (the sum of a Gaussian kernel is 1 ± float error).
_ONE = 1.0 - 1e-4


def feather_pixels(feather: float, box_height: int, box_width: int) -> int:
    """The feather radius in pixels: *feather* below 1 is a fraction of the box's smaller side."""
    if feather < 0:
        raise ValueError(f"the feather must be >= 0, not {feather}")
    if feather < 1:
        return round(feather * min(box_height, box_width))
    return round(feather)


def ellipse_axes(box_height: int, box_width: int, size: float) -> tuple[float, float, float, float]:
    """The mouth ellipse in box coordinates: centre x, centre y, semi-axis x, semi-axis y."""
    if not 0 < size <= 1:
        raise ValueError(f"the mask size must be in (0, 1], not {size}")
    return (box_width - 1) / 2.0, (box_height - 1) * 0.75, size * box_width / 2.0, size * box_height / 4.0


def _inside(h: int, w: int, cx: float, cy: float, ax: float, ay: float):
    """A boolean array: the pixels whose centres lie inside the ellipse (empty when an axis is 0)."""
    if ax <= 0 or ay <= 0:
        return np.zeros((h, w), dtype=bool)
    ys, xs = np.ogrid[:h, :w]
    return ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1.0


def mouth_mask(box_height: int, box_width: int, size: float = DEFAULT_SIZE, feather: float = DEFAULT_FEATHER):
    """The mask (float32, box_height × box_width, 0..1) of one face box."""
    cx, cy, ax, ay = ellipse_axes(box_height, box_width, size)
    outer = _inside(box_height, box_width, cx, cy, ax, ay)
    # The radius leaves the inner ellipse at least 2r across, so its centre sees the whole kernel (1 there).
    r = min(feather_pixels(feather, box_height, box_width), int(min(ax, ay) / 3))
    if r < 1:
        return outer.astype(np.float32)
    inner = _inside(box_height, box_width, cx, cy, ax - r, ay - r).astype(np.float32)
    mask = cv2.GaussianBlur(inner, (2 * r + 1, 2 * r + 1), r / 2.0, borderType=cv2.BORDER_CONSTANT)
    mask[~outer] = 0.0  # the square kernel's corners reach past the ellipse: exactly 0 there
    mask[mask >= _ONE] = 1.0
    return np.clip(mask, 0.0, 1.0)


def frame_mask(frame_shape, box, size: float = DEFAULT_SIZE, feather: float = DEFAULT_FEATHER):
    """The mask of a whole frame (float32, H × W) for a face box ``(y1, y2, x1, x2)``."""
    h, w = frame_shape[:2]
    y1, y2, x1, x2 = (int(v) for v in box)
    full = np.zeros((h, w), dtype=np.float32)
    local = mouth_mask(y2 - y1, x2 - x1, size, feather)
    ty1, ty2, tx1, tx2 = max(0, y1), min(h, y2), max(0, x1), min(w, x2)
    if ty2 > ty1 and tx2 > tx1:
        full[ty1:ty2, tx1:tx2] = local[ty1 - y1 : ty2 - y1, tx1 - x1 : tx2 - x1]
    return full


def paste_mouth(frame, face, box, size: float = DEFAULT_SIZE, feather: float = DEFAULT_FEATHER):
    """*frame* (uint8 H×W×3, changed in place and returned) with *face* (uint8, the
    generated face already resized to the box) pasted through the mouth mask of
    ``box = (y1, y2, x1, x2)``.  Pixels where the mask is 0 are left untouched."""
    y1, y2, x1, x2 = (int(v) for v in box)
    if face.shape[:2] != (y2 - y1, x2 - x1):
        raise ValueError(f"the face is {face.shape[1]}x{face.shape[0]}, its box {x2 - x1}x{y2 - y1}")
    h, w = frame.shape[:2]
    ty1, ty2, tx1, tx2 = max(0, y1), min(h, y2), max(0, x1), min(w, x2)
    if ty2 <= ty1 or tx2 <= tx1:
        return frame
    mask = mouth_mask(y2 - y1, x2 - x1, size, feather)[ty1 - y1 : ty2 - y1, tx1 - x1 : tx2 - x1]
    gen = face[ty1 - y1 : ty2 - y1, tx1 - x1 : tx2 - x1].astype(np.float32)
    region = frame[ty1:ty2, tx1:tx2]
    m = mask[..., None]
    mixed = np.clip(np.rint(region.astype(np.float32) * (1.0 - m) + gen * m), 0, 255).astype(np.uint8)
    inside = mask > 0
    region[inside] = mixed[inside]
    return frame
