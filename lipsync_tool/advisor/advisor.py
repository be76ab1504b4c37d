"""The image advisor: face-alignment's faces and landmarks on a portrait, turned into advice.

:func:`check_image` fetches face-alignment's two weight files through the
verified cache (the ``face_alignment`` component: ``s3fd-619a316812.pth``,
the S3FD detector, and ``2DFAN4-cd938726ad.zip``, the 2D-FAN landmark network
as TorchScript), runs :mod:`.landmarksd` once in an interpreter with torch and
face-alignment (this one, or ``python``: an engine's), and returns an
:class:`Advice`.  torch is only ever imported in that child, so neither the
CLI nor a pipeline pays for it.  The child's torch hub dir is a link farm of
the verified files, and its download functions refuse, so nothing is fetched
from a hub at run time.

No face at all is a :class:`~..errors.FaceNotFoundError` (exit 2); every
other finding is a warning in :attr:`Advice.warnings` (see :mod:`.rules`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DependencyError, FaceNotFoundError, InputError, ResourceError, RunError, UsageError
from .geometry import estimate_pose
from .rules import Face, Recommendation, choose, recommend, stable_order, warnings_for

log = logging.getLogger(__name__)

COMPONENT = "face_alignment"
DETECTOR = "s3fd-619a316812.pth"
LANDMARKS = "2DFAN4-cd938726ad.zip"
CHILD = Path(__file__).with_name("landmarksd.py")
ADVISOR_HINT = (
    "Install the advisor's packages with pip install 'lipsync-tool[advisor]' (face-alignment and torch), "
    "or pass --python with an interpreter that has them."
)
NO_FACE_HINT = (
    "Use a photo with one clearly visible, roughly frontal face, at least 128 px tall; "
    "a face that is very small, dark, turned away or covered is not found."
)


@dataclass
class Advice:
    """What :func:`check_image` found; :meth:`to_json` is the ``check --json`` document."""

    image: str
    width: int
    height: int
    faces: list[Face]
    chosen: Face
    chosen_reason: str
    recommendation: Recommendation
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "face_count": len(self.faces),
            "face_index": self.chosen.index,
            "face_choice": self.chosen_reason,
            "faces": [_face_json(f) for f in self.faces],
            "recommendation": {"framing": rec.framing, "engine": rec.engine, "options": rec.options, "flags": list(rec.flags), "reason": rec.reason},
            "warnings": list(self.warnings),
            "details": self.details,
        }


def _face_json(face: Face) -> dict[str, Any]:
    return {
        "index": face.index,
        "box": [round(v, 1) for v in face.box],
        "width": face.width,
        "height": face.height,
        "size_px": face.size_px,
        "score": None if face.score is None else round(face.score, 3),
        "yaw": face.pose.yaw,
        "pitch": face.pose.pitch,
        "roll": face.pose.roll,
        "landmarks": [[round(x, 1), round(y, 1)] for x, y in face.landmarks],
    }


def advisor_weights(cache_dir: Path, *, registry_file: Path | None = None, offline: bool = False, downloader=None) -> dict[str, Path]:
    """The verified detector and landmark files (downloaded once into the cache)."""
    from ..resources.components import ComponentResources

    res = ComponentResources(COMPONENT, cache_dir, registry_file=registry_file, offline=offline, downloader=downloader)
    try:
        files = res.ensure([DETECTOR, LANDMARKS])
    except ResourceError as exc:
        note = f"The advisor's weights can be fetched ahead with: lipsync-tool setup --scorer {COMPONENT}."
        exc.hint = f"{exc.hint} {note}" if exc.hint else note
        raise
    return {name: f.path for name, f in files.items()}


def faces_from_reply(reply: dict[str, Any]) -> list[Face]:
    """The child's faces, numbered in the stable order, each with its pose."""
    raw = reply.get("faces") or []
    boxes = [tuple(float(v) for v in r["box"][:4]) for r in raw]
    faces = []
    for index, i in enumerate(stable_order(boxes)):
        landmarks = tuple((float(x), float(y)) for x, y in raw[i]["landmarks"])
        faces.append(Face(index=index, box=boxes[i], score=raw[i].get("score"), pose=estimate_pose(landmarks), landmarks=landmarks))
    return faces


def advise(image: Path, reply: dict[str, Any], *, face_index: int | None = None, engines: dict[str, type] | None = None) -> Advice:
    """The advice for *image* from the child's *reply* (pure; see :mod:`.rules`)."""
    faces = faces_from_reply(reply)
    if not faces:
        raise FaceNotFoundError("no face found in the image", subject=image, hint=NO_FACE_HINT)
    if face_index is not None and not 0 <= face_index < len(faces):
        found = f"{len(faces)} face" + ("s (0.." + str(len(faces) - 1) + ")" if len(faces) > 1 else " (index 0)")
        raise UsageError(f"{face_index} is out of range: the image has {found}", subject="--face-index", hint="Faces are numbered left to right from 0.")
    chosen, reason = choose(faces, face_index)
    height = int(reply["height"])
    return Advice(
        image=str(image),
        width=int(reply["width"]),
        height=height,
        faces=faces,
        chosen=chosen,
        chosen_reason=reason,
        recommendation=recommend(chosen, height, engines),
        warnings=warnings_for(faces, chosen, reason),
        details={k: reply[k] for k in ("versions", "scale") if k in reply},
    )


def check_image(
    image: Path | str,
    *,
    cache_dir: Path,
    registry_file: Path | None = None,
    offline: bool = False,
    python: Path | str | None = None,
    face_index: int | None = None,
    device: str = "cpu",
    timeout: float = 600.0,
    downloader=None,
) -> Advice:
    """Check a portrait before a job: faces, size, pose, and the recommended preprocess mode and engine.

    Raises :class:`FaceNotFoundError` when there is no face (the one finding
    that should stop a run), :class:`UsageError` for a *face_index* out of
    range, :class:`InputError` for an unreadable image, and the resource and
    dependency errors of the weights and the child process.
    """
    from ..runtime import engine_python

    image = Path(image)
    if not image.is_file():
        raise InputError("no such file" if not image.exists() else "is not a file", subject=image)
    interpreter = engine_python(python)
    weights = advisor_weights(Path(cache_dir), registry_file=registry_file, offline=offline, downloader=downloader)
    reply = run_child(interpreter, image, weights, device=device, timeout=timeout)
    advice = advise(image, reply, face_index=face_index)
    advice.details.update({"python": interpreter, "device": device, "weights": {n: str(p) for n, p in weights.items()}})
    log.info("advisor: %d face(s) in %s; face %d used", len(advice.faces), image, advice.chosen.index)
    return advice


def _link_farm(hub: Path, weights: dict[str, Path]) -> None:
    """``hub/checkpoints/<name>`` → the verified file, where face-alignment's loader looks."""
    checkpoints = hub / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name, path in weights.items():
        try:
            os.symlink(path, checkpoints / name)
        except OSError:
            shutil.copyfile(path, checkpoints / name)


def run_child(python: str, image: Path, weights: dict[str, Path], *, device: str = "cpu", timeout: float = 600.0) -> dict[str, Any]:
    """Run :mod:`.landmarksd` once on *image*; its reply (``ok`` is true)."""
    from ..process import ProcessTimeout, run_logged

    work = Path(tempfile.mkdtemp(prefix="lipsync-check-"))
    keep = False
    try:
        _link_farm(work / "hub", weights)
        request = {"image": str(image.resolve()), "s3fd": str(weights[DETECTOR]), "hub_dir": str(work / "hub"), "device": device}
        (work / "request.json").write_text(json.dumps(request), encoding="utf-8")
        env = {**os.environ, "TORCH_HOME": str(work), "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
        argv = [python, str(CHILD), str(work / "request.json"), str(work / "reply.json")]
        try:
            result = run_logged(argv, cwd=work, env=env, log_path=work / "advisor.log", timeout=timeout)
        except ProcessTimeout:
            keep = True
            raise RunError(f"the face check did not finish within {timeout:.0f} s", subject=str(image), hint=f"See its log: {work / 'advisor.log'}") from None
        reply_path = work / "reply.json"
        if result.returncode != 0 or not reply_path.exists():
            keep = True
            tail = " | ".join((work / "advisor.log").read_text("utf-8", "replace").strip().splitlines()[-3:])
            raise RunError(f"the face check process failed (exit {result.returncode}): {tail or 'no output'}", subject=python, hint=f"See its log: {work / 'advisor.log'}")
        reply = json.loads(reply_path.read_text("utf-8"))
        if not reply.get("ok"):
            keep = reply.get("kind") == "failed"
            raise _child_error(reply, python, image, work)
        return reply
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _child_error(reply: dict[str, Any], python: str, image: Path, work: Path) -> Exception:
    kind, error = reply.get("kind"), reply.get("error") or "unknown error"
    if kind == "dependency":
        return DependencyError(f"face-alignment cannot be imported: {error}", subject="--python", hint=ADVISOR_HINT)
    if kind == "image":
        return InputError(error, subject=image, hint="Use a JPEG, PNG or WebP image.")
    if kind == "download":
        return DependencyError(
            error, subject=python, hint="This face-alignment version wants a landmark file the registry does not hold: install face-alignment 1.4.x."
        )
    return RunError(f"the face check failed: {error}", subject=image, hint=f"See its log: {work / 'advisor.log'}")
