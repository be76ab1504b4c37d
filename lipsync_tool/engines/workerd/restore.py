"""``--wav2lip-quality enhanced``: a face restorer on the face crop only (numpy + OpenCV here).

A pure helper of the warm workers' adapters (``lipsync_worker.load_helper("restore")``
in the engine's interpreter), like ``blend.py``.  What it does for one frame::

    frame ──► upstream's paste of the generated face into a copy of the frame
          ──► the face box plus a margin (the "crop") ──► the restorer ──► the restored crop
          ──► its face box, pasted into the original frame through the mouth mask (blend.py)

The restorer only ever sees the crop, never the whole frame (a portrait can be
4K; GFPGAN's detector and paste-back cost grow with the image), and what it
returns is used only inside the mouth mask, so every pixel outside the mask is
the input frame's, as with ``improved``.

:func:`gfpgan` builds the real restorer: GFPGAN v1.4 through the ``gfpgan``
package's ``GFPGANer`` (upscale 1, no background upsampler).  Its face helper
reads RetinaFace and ParseNet from ``gfpgan/weights/`` relative to the working
dir, where the verified files are linked; the GFPGAN weights are passed by
path.  A crop in which the restorer finds no face comes back unrestored and is
counted (``missed``), never silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: The margin around the face box given to the restorer, as a fraction of the box's size on each side:
#: its detector needs the whole head (forehead, chin) to find and align the face.
MARGIN = 0.3
#: Where the verified weights are linked in the worker's working dir (as upstream's code expects them).
GFPGAN_WEIGHTS = "gfpgan/weights/GFPGANv1.4.pth"

#: A restorer: a BGR uint8 crop in, the restored crop (same shape) out, or None when it found no face.
Enhance = Callable[[Any], Any]


def crop_region(frame_shape, box, margin: float = MARGIN) -> tuple[int, int, int, int]:
    """The crop ``(y1, y2, x1, x2)`` around the face box ``(y1, y2, x1, x2)``, clipped to the frame."""
    h, w = frame_shape[:2]
    y1, y2, x1, x2 = (int(v) for v in box)
    dy, dx = round((y2 - y1) * margin), round((x2 - x1) * margin)
    return max(0, y1 - dy), min(h, y2 + dy), max(0, x1 - dx), min(w, x2 + dx)


class Restorer:
    """Runs *enhance* on the crop around each face box and returns the box's part of the result."""

    def __init__(self, enhance: Enhance, margin: float = MARGIN):
        self.enhance, self.margin = enhance, margin
        self.restored = 0
        self.missed = 0

    def restore(self, frame, box):
        """The face box of *frame* (uint8 H×W×3, not changed), restored: an array of the box's size."""
        y1, y2, x1, x2 = (int(v) for v in box)
        ry1, ry2, rx1, rx2 = crop_region(frame.shape, box, self.margin)
        crop = np.ascontiguousarray(frame[ry1:ry2, rx1:rx2])
        out = self.enhance(crop)
        if out is None:
            self.missed += 1
            out = crop
        elif out.shape != crop.shape:
            raise ValueError(f"the restorer returned {out.shape} for a crop of {crop.shape}")
        else:
            self.restored += 1
        face = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
        # the box may reach past the frame (upstream's pads); those pixels are never pasted
        ty1, ty2, tx1, tx2 = max(y1, ry1), min(y2, ry2), max(x1, rx1), min(x2, rx2)
        face[ty1 - y1 : ty2 - y1, tx1 - x1 : tx2 - x1] = out[ty1 - ry1 : ty2 - ry1, tx1 - rx1 : tx2 - rx1]
        return face

    def summary(self) -> dict[str, int]:
        return {"restored": self.restored, "no_face_found": self.missed}


def gfpgan(device: str, weights: str = GFPGAN_WEIGHTS, weight: float = 0.5) -> Enhance:
    """GFPGAN v1.4 (``gfpgan.GFPGANer``, arch ``clean``) on *device*, as an :data:`Enhance`."""
    import torch
    from gfpgan import GFPGANer

    restorer = GFPGANer(model_path=weights, upscale=1, arch="clean", channel_multiplier=2, bg_upsampler=None, device=torch.device(device))

    def enhance(crop):
        _, restored_faces, image = restorer.enhance(crop, has_aligned=False, only_center_face=True, paste_back=True, weight=weight)
        if not restored_faces or image is None:
            return None
        return np.asarray(image, dtype=np.uint8)

    return enhance


def mouth_paster(blend, restorer: Restorer | None, size: float, feather: float, paste_box):
    """``put(pred, frame, coords)`` for improved (*restorer* None) and enhanced: the generated face
    resized to its box; with a restorer, first pasted whole into a copy of the frame by *paste_box*
    (upstream's paste) and restored on the crop around the box; then pasted through the mouth mask."""
    import cv2

    def put(pred, frame, coords):
        y1, y2, x1, x2 = coords
        if restorer is None:
            face = cv2.resize(pred.astype(np.uint8), (x2 - x1, y2 - y1))
        else:
            face = restorer.restore(paste_box(pred, frame.copy(), coords), coords)
        return blend.paste_mouth(frame, face, coords, size, feather)

    return put
