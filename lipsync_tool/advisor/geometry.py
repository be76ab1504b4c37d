"""Head pose from the 68 landmarks, by plain geometry (no model, no numpy).

The 68 points follow the iBUG 300-W layout that face-alignment's 2D-FAN
predicts: 0–16 the jaw, 17–26 the brows, 27–30 the nose bridge down to the tip
(30), 31–35 the nostrils, 36–41 and 42–47 the eyes (the image's left eye
first), 48–67 the mouth.

The estimate treats the face as a flat plate (eyes and mouth) with the nose
tip standing out of it by ``NOSE_DEPTH`` times the eye-to-mouth distance:

* **roll** is the angle of the line through the two eye centres; the points are
  turned back by it before the rest is measured;
* **yaw**: on a frontal face the nose tip lies on the midline through the eye
  midpoint ``E`` and the mouth centre ``M``.  Turned by ``yaw``, it moves
  sideways by ``NOSE_DEPTH·|EM|·sin(yaw)`` while ``|EM|`` (vertical) stays, so
  ``yaw = asin(dx / (NOSE_DEPTH·|EM|))``.  Positive: the nose points to the
  image's right;
* **pitch**: along the midline the nose tip sits at ``NOSE_AT`` of the way from
  ``E`` to ``M`` on a level face.  Tilted by ``pitch``, the plate shortens by
  ``cos(pitch)`` and the tip moves by ``NOSE_DEPTH·sin(pitch)``, so
  ``pitch = atan((NOSE_AT − t) / NOSE_DEPTH)``.  Positive: the nose points up
  (chin up).

Both constants are rough averages of adult faces (and of the bundled
portrait's layout), so the angles are good to ten degrees or so: enough to
tell a frontal face from a three-quarter view or a profile, which is all the
advice needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[float, float]

#: How far the nose tip stands out of the eye–mouth plane, in eye-to-mouth distances.
NOSE_DEPTH = 0.45
#: Where the nose tip sits between the eye line (0) and the mouth centre (1) on a level face.
NOSE_AT = 0.55

NOSE_TIP = 30
LEFT_EYE = range(36, 42)
RIGHT_EYE = range(42, 48)
MOUTH = range(48, 68)


@dataclass(frozen=True)
class Pose:
    """Degrees; see the module docstring for the signs."""

    yaw: float
    pitch: float
    roll: float


def _mean(points: Sequence[Point]) -> Point:
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


def _rotate(p: Point, centre: Point, angle: float) -> Point:
    c, s = math.cos(angle), math.sin(angle)
    x, y = p[0] - centre[0], p[1] - centre[1]
    return (centre[0] + c * x - s * y, centre[1] + s * x + c * y)


def _clamp(v: float) -> float:
    return max(-1.0, min(1.0, v))


def estimate_pose(landmarks: Sequence[Sequence[float]]) -> Pose:
    """Yaw, pitch and roll of a face from its 68 (x, y) landmarks in image pixels."""
    if len(landmarks) != 68:
        raise ValueError(f"expected 68 landmarks, got {len(landmarks)}")
    pts = [(float(p[0]), float(p[1])) for p in landmarks]
    left, right = _mean([pts[i] for i in LEFT_EYE]), _mean([pts[i] for i in RIGHT_EYE])
    roll = math.atan2(right[1] - left[1], right[0] - left[0])
    eyes = ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2)
    level = [_rotate(p, eyes, -roll) for p in pts]
    mouth = _mean([level[i] for i in MOUTH])
    nose = level[NOSE_TIP]
    axis = (mouth[0] - eyes[0], mouth[1] - eyes[1])
    length = math.hypot(*axis)
    if length < 1e-6:
        raise ValueError("degenerate landmarks: the eyes and the mouth coincide")
    ux, uy = axis[0] / length, axis[1] / length
    rel = (nose[0] - eyes[0], nose[1] - eyes[1])
    along = (rel[0] * ux + rel[1] * uy) / length
    # Sideways, measured perpendicular to the midline (positive to the image's right).
    side = (rel[0] * uy - rel[1] * ux) / length
    yaw = math.degrees(math.asin(_clamp(side / NOSE_DEPTH)))
    pitch = math.degrees(math.atan((NOSE_AT - along) / NOSE_DEPTH))
    return Pose(yaw=round(yaw, 1), pitch=round(pitch, 1), roll=round(math.degrees(roll), 1))

