"""A rigged face-alignment for the advisor's tests: faces where the test puts them, landmarks it chooses.

**The detector.**  :func:`rig_s3fd` turns face-alignment's own S3FD (its
``net_s3fd.s3fd``, parameter names ``conv1_1`` … ``conv4_3_norm_mbox_conf``)
into a brightness detector, the idea of tests/syncnet_rig.py: every conv
passes two channels through its centre tap (``c0`` = how far a pixel is above
``THRESHOLD``, max-pooled on the way down; ``c1`` = 1), so after conv4_3's
L2Norm a stride-8 cell holds ``n = c0 / sqrt(c0² + 1)``.  Only conv4_3's head
says "face", with logit ``GAIN·n + BIAS``, and its box regression sets the
size: ``32·exp(0.2·SIZE_GAIN·n)`` px, centred on the cell.  So a small bright
square drawn inside one 8x8 cell (:func:`draw_faces`) is a face box whose
size is chosen by the square's grey level (:func:`grey_for_size`); the dark
background is no face.

**The landmark network.**  face-alignment 1.4 ships no FAN class (it loads the
2DFAN4 TorchScript archive), so :func:`fan_module` scripts a small module of the
same interface (``(1, 3, 256, 256)`` in, ``(1, 68, 64, 64)`` heatmaps out) whose
heatmaps peak at a chosen template, given in face-box units: face-alignment's
own ``get_preds_fromhm`` maps them back into the image.

**Landmark layouts.**  :func:`portrait_landmarks` is the 68-point layout of the
bundled portrait (``lipsync_tool/data/portrait.jpg``: eye, nose, mouth and jaw
positions measured on the image, the iBUG 300-W order); :func:`turn` lifts it to
3D (the nose standing out) and turns it, :func:`mirror` flips it with the
iBUG left/right pairs, :func:`rotate` rolls it in the image plane.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from syncnet_rig import _centre_taps  # the same centre-tap surgery as the SyncNet scorer's S3FD rig

from lipsync_tool.advisor.geometry import NOSE_DEPTH

# -- landmark layouts -------------------------------------------------------------------------


def _ellipse_jaw() -> list[tuple[float, float]]:
    cx, top, a, b = 225.6, 108.0, 47.0, 72.0
    return [(cx + a * math.cos(math.pi - i * math.pi / 16), top + b * math.sin(math.pi - i * math.pi / 16)) for i in range(17)]


def _eye(cx: float, cy: float) -> list[tuple[float, float]]:
    w, h = 7.0, 2.5
    pts = [(cx - w, cy), (cx - h, cy - h), (cx + h, cy - h), (cx + w, cy), (cx + h, cy + h), (cx - h, cy + h)]
    return pts  # both eyes start at the image-left corner, clockwise (iBUG)


def portrait_landmarks() -> list[tuple[float, float]]:
    """The bundled portrait's 68 landmarks (image pixels of the 512x512 JPEG), nearly frontal."""
    pts = _ellipse_jaw()
    pts += [(187 + 7.5 * i, 87 + 0.6 * (i - 2) ** 2) for i in range(5)]  # 17-21
    pts += [(232 + 7.5 * i, 88 + 0.6 * (i - 2) ** 2) for i in range(5)]  # 22-26
    pts += [(224.6, 103.0), (224.3, 110.0), (224.0, 117.0), (223.75, 125.0)]  # 27-30, 30 = the tip
    pts += [(214.0, 128.0), (218.5, 129.0), (223.75, 129.5), (229.0, 129.0), (233.5, 128.0)]  # 31-35
    pts += _eye(202.5, 101.25) + _eye(247.5, 103.0)  # 36-47
    pts += [(203.75, 141.25), (209.5, 139.5), (216.5, 138.0), (223.75, 138.0), (231.0, 138.0), (238.0, 139.5), (243.75, 142.0)]  # 48-54
    pts += [(238.0, 148.0), (231.0, 150.5), (223.75, 151.0), (216.5, 150.5), (209.5, 148.0)]  # 55-59
    pts += [(207.0, 141.5), (216.5, 141.0), (223.75, 141.0), (231.0, 141.0), (240.5, 142.0), (231.0, 146.0), (223.75, 147.0), (216.5, 146.0)]  # 60-67
    assert len(pts) == 68
    return pts


#: The iBUG 68 points' horizontal mirror partners.
FLIP = list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + list(range(35, 30, -1))
FLIP += [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
FLIP += [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]


def mirror(points, width: float):
    """*points* flipped left-right in an image *width* wide, re-indexed so each point keeps its meaning."""
    flipped = [(width - 1 - x, y) for x, y in points]
    return [flipped[FLIP[i]] for i in range(68)]


def rotate(points, degrees: float, centre: tuple[float, float] = (225.0, 120.0)):
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return [(centre[0] + c * (x - centre[0]) - s * (y - centre[1]), centre[1] + s * (x - centre[0]) + c * (y - centre[1])) for x, y in points]


def _depths(points) -> list[float]:
    """How far each point stands toward the camera, in pixels (the model of geometry.py)."""
    eyes_y = (points[39][1] + points[42][1]) / 2
    mouth_y = sum(p[1] for p in points[48:68]) / 20
    tip = NOSE_DEPTH * (mouth_y - eyes_y)
    z = [0.0] * 68
    for i, f in zip(range(27, 31), (0.25, 0.45, 0.7, 1.0)):
        z[i] = f * tip
    for i, f in zip(range(31, 36), (0.35, 0.45, 0.55, 0.45, 0.35)):
        z[i] = f * tip
    cx = points[30][0]
    for i in range(17):
        z[i] = -0.9 * tip * abs(points[i][0] - cx) / 47.0
    return z


def turn(points, yaw: float = 0.0, pitch: float = 0.0):
    """*points* lifted to 3D (the nose out of the face's plane) and turned: +yaw moves the nose
    to the image's right, +pitch moves it up; projected orthographically."""
    z = _depths(points)
    xc = (points[39][0] + points[42][0]) / 2
    yc = (points[39][1] + points[42][1]) / 2
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    out = []
    for (x, y), d in zip(points, z):
        x1, d1 = xc + (x - xc) * cy + d * sy, -(x - xc) * sy + d * cy
        out.append((x1, yc + (y - yc) * cp - d1 * sp))
    return out


#: The frame in which templates are given as face-box units (the portrait's face, square).
FRAME = (170.0, 80.0, 112.0)


def to_unit(points):
    x0, y0, side = FRAME
    return [((x - x0) / side, (y - y0) / side) for x, y in points]


# -- the detector -------------------------------------------------------------------------------

CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3")
CONVS += ("conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "conv6_1", "conv6_2", "conv7_1", "conv7_2")
HEADS = ("conv3_3_norm", "conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2")
MEAN = (104.0 + 117.0 + 123.0) / 3  # face-alignment subtracts the BGR means
THRESHOLD = 40.0
SCALE = 30.0
GAIN, BIAS = 40.0, -12.0  # face logit: only n > 0.3 is a face
SIZE_GAIN = 10.0
BACKGROUND = 40


def rig_s3fd(state: dict) -> dict:
    """A copy of face-alignment's S3FD state dict rigged as the module docstring says."""
    sd = {k: v.clone() for k, v in state.items()}
    for i, name in enumerate(CONVS):
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        if i == 0:
            _centre_taps(w, b, [(0, c, 1.0 / (3 * SCALE)) for c in range(3)])
            b[0], b[1] = -THRESHOLD / SCALE, 1.0
        else:
            _centre_taps(w, b, [(0, 0, 1.0), (1, 1, 1.0)])
    for head in HEADS:
        sd[f"{head}_mbox_loc.weight"].zero_()
        sd[f"{head}_mbox_loc.bias"].zero_()
        w, b = sd[f"{head}_mbox_conf.weight"], sd[f"{head}_mbox_conf.bias"]
        w.zero_()
        b.fill_(10.0)  # background ...
        b[-1] = -10.0  # ... and no face
    for head in HEADS[:3]:
        sd[f"{head}.weight"].fill_(1.0)
    w, b = sd["conv4_3_norm_mbox_conf.weight"], sd["conv4_3_norm_mbox_conf.bias"]
    w[1, 0, 1, 1] = GAIN
    b[0], b[1] = 0.0, BIAS
    loc = sd["conv4_3_norm_mbox_loc.weight"]
    loc[2, 0, 1, 1] = loc[3, 0, 1, 1] = SIZE_GAIN
    return sd


def grey_for_size(size: float) -> int:
    """The grey level of a square that the rigged detector sees as a *size* px face (about 60–230)."""
    n = math.log(size / 32.0) / (0.2 * SIZE_GAIN)
    if not 0.31 < n < 0.99:
        raise ValueError(f"the rig makes faces of about 60 to 230 px, not {size}")
    c0 = n / math.sqrt(1 - n * n)
    return round(c0 * SCALE + THRESHOLD + MEAN)


def size_for_grey(grey: int) -> float:
    c0 = max(0.0, (grey - MEAN - THRESHOLD) / SCALE)
    return 32.0 * math.exp(0.2 * SIZE_GAIN * c0 / math.sqrt(c0 * c0 + 1))


def draw_faces(path: Path, size: tuple[int, int], faces: list[tuple[int, int, float]]) -> list[tuple[float, float, float, float]]:
    """A PNG with a face of each (x, y, size) (centred on the 8 px grid) on a dark ground; the expected boxes."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(im)
    boxes = []
    for x, y, s in faces:
        gx, gy, grey = (x // 8) * 8, (y // 8) * 8, grey_for_size(s)
        draw.rectangle([gx + 2, gy + 2, gx + 5, gy + 5], fill=(grey,) * 3)
        half = size_for_grey(grey) / 2
        boxes.append((gx + 4 - half, gy + 4 - half, gx + 4 + half, gy + 4 + half))
    im.save(path)
    return boxes


# -- the landmark network -----------------------------------------------------------------------


def _heatmaps(template):
    """(68, 64, 64) heatmaps whose face-alignment decoding lands on *template* (face-box units)."""
    import torch

    hm = torch.zeros(68, 64, 64)
    for j, (u, v) in enumerate(template):
        # face-alignment crops 200·(w+h)/195 px around the box centre raised by 0.12·h: a square box's
        # unit coordinate u maps to (u − 0.5)·31.2 + 32 on the 64 px heatmap (index i decodes to i + 0.5).
        fx, fy = (u - 0.5) * 64 * 195 / 400 + 32 - 0.5, (v - 0.5 + 0.12) * 64 * 195 / 400 + 32 - 0.5
        px, py = round(fx), round(fy)
        hm[j, py, px] = 1.0
        if abs(fx - px) > 0.125:  # the decoder's quarter-pixel step toward the larger neighbour
            hm[j, py, px + (1 if fx > px else -1)] = 0.5
        if abs(fy - py) > 0.125:
            hm[j, py + (1 if fy > py else -1), px] = 0.5
    return hm


def fan_module(template):
    """A TorchScript module with 2D-FAN's interface whose heatmaps put the landmarks at *template*."""
    import torch

    class RigFAN(torch.nn.Module):
        def __init__(self, hm: torch.Tensor):
            super().__init__()
            self.register_buffer("hm", hm)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.hm.unsqueeze(0).expand(x.shape[0], -1, -1, -1) + x.mean() * 0.0

    return torch.jit.script(RigFAN(_heatmaps(template)))


def write_weights(out: Path, template=None) -> Path:
    """Both weight files in *out* in their published formats, and ``registry.toml`` naming them by file:// URL."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd

    out.mkdir(parents=True, exist_ok=True)
    s3fd_path, fan_path = out / "s3fd-619a316812.pth", out / "2DFAN4-cd938726ad.zip"
    if not s3fd_path.exists():
        torch.save({k: v.half() for k, v in rig_s3fd(s3fd().state_dict()).items()}, s3fd_path)
    fan_module(template or to_unit(portrait_landmarks())).save(str(fan_path))
    lines = []
    for path in (s3fd_path, fan_path):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f'[face_alignment.checkpoints."{path.name}"]\nurls = ["{path.as_uri()}"]\nsha256 = "{digest}"\nsize = {path.stat().st_size}\n')
    registry = out / "registry.toml"
    registry.write_text("\n".join(lines))
    return registry
