"""The advice: which face, how it is framed, what to warn about, what to run.

Pure functions of the measured faces (no I/O), so each rule is tested alone.

**Which face.**  Faces are numbered 0, 1, … left to right by their box's left
edge (then top to bottom): the order ``--face-index`` counts in.  Without it
the largest box is used (the earliest in that order on a tie).

**Warnings** (advice; only "no face at all" stops anything):

* more than one face: which one is used, and how to choose another;
* a face box whose shorter side is under ``SMALL_FACE_PX`` (128 px): the
  engines work on 96–256 px face crops, so a smaller face is upscaled and blurs;
* ``|yaw| > PROFILE_YAW`` (35°): a profile or near-profile view, which the
  engines' face fits and detectors handle badly;
* ``|pitch| > TILT_PITCH`` (25°): the head tilted far up or down.

**Framing**, from the face box's height over the image's height ``r``:

* ``r ≥ CLOSE_UP`` (0.45): a close-up, a tight face crop;
* ``BODY_SHOT ≤ r < CLOSE_UP`` (0.15–0.45): a head-and-shoulders portrait;
* ``r < BODY_SHOT``: a half- or full-body shot.

**Recommendation.**  A close-up or a portrait: ``preprocess=crop`` (the face
region is animated with full head motion; the output is that region).  A
half- or full-body shot: ``preprocess=full`` with ``still`` (the face is
animated in its crop and pasted back into the whole picture, with the head
kept still so the paste stays clean).  The options are engine-neutral: the
engine recommended is the first registered one whose options model accepts
them (the built-in talking-head engine, whose ``--preprocess`` takes these
values), and the flags come from that model's CLI metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .geometry import Pose

SMALL_FACE_PX = 128
PROFILE_YAW = 35.0
TILT_PITCH = 25.0
CLOSE_UP = 0.45
BODY_SHOT = 0.15


@dataclass(frozen=True)
class Face:
    """One detected face: its box (x1, y1, x2, y2) in image pixels, score, pose and 68 landmarks."""

    index: int
    box: tuple[float, float, float, float]
    score: float | None
    pose: Pose
    landmarks: tuple[tuple[float, float], ...] = field(repr=False, default=())

    @property
    def width(self) -> int:
        return round(self.box[2] - self.box[0])

    @property
    def height(self) -> int:
        return round(self.box[3] - self.box[1])

    @property
    def size_px(self) -> int:
        """The box's shorter side: what the small-face rule measures."""
        return min(self.width, self.height)

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


@dataclass(frozen=True)
class Recommendation:
    framing: str  # close-up / portrait / body
    options: dict[str, Any]
    engine: str | None
    flags: tuple[str, ...]
    reason: str


def stable_order(boxes: list[tuple[float, float, float, float]]) -> list[int]:
    """Indices of *boxes* left to right, then top to bottom (the --face-index order)."""
    return sorted(range(len(boxes)), key=lambda i: (round(boxes[i][0]), round(boxes[i][1]), i))


def choose(faces: list[Face], face_index: int | None) -> tuple[Face, str]:
    """The face to use and why; *face_index* must be in range (the caller checks)."""
    if face_index is not None:
        return faces[face_index], f"chosen with --face-index {face_index}"
    best = max(faces, key=lambda f: (f.area, -f.index))
    return best, "the largest" if len(faces) > 1 else "the only face"


def framing(face: Face, image_height: int) -> str:
    ratio = face.height / max(1, image_height)
    if ratio >= CLOSE_UP:
        return "close-up"
    return "portrait" if ratio >= BODY_SHOT else "body"


def warnings_for(faces: list[Face], chosen: Face, reason: str) -> list[str]:
    out = []
    if len(faces) > 1:
        out.append(
            f"{len(faces)} faces found; using face {chosen.index} ({reason}, {chosen.width}x{chosen.height} px). "
            f"Choose another with --face-index 0..{len(faces) - 1} (numbered left to right), or crop the image to one person."
        )
    if chosen.size_px < SMALL_FACE_PX:
        out.append(
            f"the face is small ({chosen.width}x{chosen.height} px; under {SMALL_FACE_PX} px it is upscaled and the result blurs). "
            "Use a higher-resolution image or one where the face is larger."
        )
    yaw, pitch = chosen.pose.yaw, chosen.pose.pitch
    if abs(yaw) > PROFILE_YAW:
        side = "right" if yaw > 0 else "left"
        out.append(
            f"profile view: the head is turned about {abs(yaw):.0f}° to the image's {side} (over {PROFILE_YAW:.0f}°). "
            "Lip sync needs a near-frontal face; use a portrait facing the camera."
        )
    if abs(pitch) > TILT_PITCH:
        out.append(f"the head is tilted {'up' if pitch > 0 else 'down'} about {abs(pitch):.0f}°; a level, frontal portrait gives better results.")
    return out


_ADVICE = {
    "close-up": ({"preprocess": "crop"}, "a tight face crop: animate the face region (--preprocess crop)"),
    "portrait": (
        {"preprocess": "crop"},
        "a head-and-shoulders portrait: --preprocess crop animates the face with head motion (use --preprocess full --still to keep the whole picture)",
    ),
    "body": (
        {"preprocess": "full", "still": True},
        "a half- or full-body shot: --preprocess full animates the face and pastes it back into the whole picture; --still keeps the paste clean",
    ),
}


def recommend(face: Face, image_height: int, engines: dict[str, type] | None = None) -> Recommendation:
    """The preprocess mode and engine for *face* (see the module docstring)."""
    kind = framing(face, image_height)
    options, reason = _ADVICE[kind]
    engine, flags = _engine_for(options, engines)
    return Recommendation(framing=kind, options=dict(options), engine=engine, flags=flags, reason=reason)


def _engine_for(options: dict[str, Any], engines: dict[str, type] | None) -> tuple[str | None, tuple[str, ...]]:
    """The first engine whose options model takes *options*, and the CLI flags that say so."""
    if engines is None:
        from ..engines import DEFAULT_ENGINE, engine_classes

        found = engine_classes()
        engines = {DEFAULT_ENGINE: found[DEFAULT_ENGINE], **found} if DEFAULT_ENGINE in found else found
    for name, cls in engines.items():
        try:
            cls.Options.model_validate(options)
        except Exception:  # noqa: BLE001 - pydantic's ValidationError: this engine does not take them
            continue
        meta = cls.Options.cli_options()
        flags: list[str] = ["--engine", name]
        for key, value in options.items():
            flag = meta[key].flag if key in meta else "--" + key.replace("_", "-")
            on, _, off = flag.partition("/")
            flags += [on if value else (off or on)] if isinstance(value, bool) else [on, str(value)]
        return name, tuple(flags)
    return None, ()
