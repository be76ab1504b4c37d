"""The advisor before a job: its findings go into the run report; only "no face at all" stops the run.

It also decides the **face hint** (``Job.face_hint``): on a still with several faces, or with ``--face-index N``,
the chosen face's box (in the staged still's pixels) goes to the engine, whose detector then returns only that
face (see ``engines/workerd/face_hint.py``).  ``--face-index`` is never ignored: without the advisor (no
face-alignment, no weights offline), on a face video, with ``--skip-face-check``, or with a runner the engine
cannot steer, the run is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import naming
from ..errors import DependencyError, FaceNotFoundError, LipsyncError, UsageError

log = logging.getLogger(__name__)


def check_face_index(engine, engine_options, opts, face_is_video: bool) -> None:
    """Refuse ``--face-index`` where the advisor will not look at the face (before any work)."""
    if opts.face_index is None:
        return
    flag = naming.option("face_index")
    if face_is_video:
        raise UsageError(
            "chooses a face of a still portrait; the face input is a video", subject=flag, hint="Give a still image, or cut the video to the one person."
        )
    if opts.skip_face_check:
        raise UsageError(
            f"needs the portrait advisor, which {naming.option('skip_face_check')} skips", subject=flag, hint="Drop one of the two."
        )
    if not engine.face_check_wanted(engine_options):
        raise UsageError(f"cannot be combined with {engine.display_name} options that place the face themselves", subject=flag, hint="Drop one of the two.")


def advise_before_run(
    image: Path, still: Path, *, python: Path | str | None, settings: Any, info: Any, face_index: int | None = None, timeout: float = 600.0
) -> Any:
    """Run :func:`~.advisor.check_image` on the staged still *still* (of the user's *image*) and record it in *info*
    (the report's :class:`~lipsync_tool.report.FaceInfo`: ``advice``, and its warnings).  Returns the face hint
    (a ``FaceHint``; also in ``info.advice["face_hint"]``) when *face_index* is given or there are several faces,
    else None.

    A portrait without any face raises :class:`FaceNotFoundError`, and a *face_index* out of range a
    :class:`UsageError`; every other finding is advice.  An interpreter without face-alignment, or weights that
    cannot be had, do not stop the run either (the report and the log say the advice was not given, and why),
    unless *face_index* is given: then that is a :class:`DependencyError` naming the flag.
    """
    from ..engines.workerd.face_hint import FaceHint
    from ..runtime import engine_python, package_versions
    from .advisor import ADVISOR_HINT, check_image

    try:
        if package_versions(engine_python(python), ["face-alignment"]).get("face-alignment") is None:  # before any download
            raise DependencyError(
                f"face-alignment is not installed in {engine_python(python)}", subject="face-alignment", hint="pip install 'lipsync-tool[advisor]' there"
            )
        where = {"cache_dir": settings.cache_dir, "registry_file": settings.registry, "offline": settings.offline}
        advice = check_image(still, **where, python=python, face_index=face_index, timeout=timeout)
    except FaceNotFoundError as exc:
        raise FaceNotFoundError(exc.message, subject=image, hint=exc.hint) from None
    except UsageError:
        raise  # --face-index out of range
    except LipsyncError as exc:  # no face-alignment in that interpreter, no weights offline, …
        if face_index is not None:
            raise DependencyError(
                f"needs the portrait advisor to find face {face_index}, and it could not run: {exc}",
                subject=naming.option("face_index"),
                hint=(exc.hint + " " if exc.hint else "") + ADVISOR_HINT,
            ) from exc
        note = f"portrait advice not given: {exc}" + (f" ({exc.hint})" if exc.hint else "")
        log.warning("%s", note)
        info.warnings.append(note)
        info.advice = {"given": False, "reason": str(exc)}
        return None
    data = advice.to_json()
    info.advice = {"given": True, **data}
    for warning in advice.warnings:
        log.warning("%s: %s", image, warning)
        info.warnings.append(warning)
    if face_index is None and len(advice.faces) < 2:
        return None
    hint = FaceHint(advice.chosen.index, advice.chosen.box, (advice.width, advice.height), advice.chosen_reason)
    info.advice["face_hint"] = {**hint.to_json(), "used": True}
    return hint


def settle_face_hint(engine, runner_kind: str, hint: Any, *, explicit: bool, info: Any) -> Any:
    """The hint the job gets: *hint* where *engine* honours one under *runner_kind*.  Otherwise a hint the user
    asked for (*explicit*: ``--face-index``) is a :class:`UsageError`, and the advisor's own choice among several
    faces is dropped with a warning (the engine's detector picks, as it did before face hints existed)."""
    if hint is None and explicit:  # never ignored: the advisor either chose the face or raised
        raise UsageError("was given but the portrait advisor chose no face", subject=naming.option("face_index"))
    if hint is None or runner_kind in engine.face_hint_runners:
        return hint
    worker_can = "worker" in engine.face_hint_runners
    why = f"{engine.display_name} cannot be told which face to animate" + (" with --runner subprocess" if worker_can else "")
    if explicit:
        steer = "Drop --runner subprocess (the warm worker is the default)." if worker_can else "Crop the image to the one person."
        raise UsageError(why, subject=naming.option("face_index"), hint=steer)
    note = f"{why}: its own detector picks the face, which may not be face {hint.index}"
    log.warning("%s", note)
    info.warnings.append(note)
    info.advice["face_hint"]["used"] = False
    return None


def with_face_hint(command: Any, hint: Any) -> Any:
    """*command* with the hint's file (``face_hint.FILE``) among the files written into its working dir."""
    import dataclasses
    import json

    from ..engines.workerd.face_hint import FILE

    if hint is None:
        return command
    return dataclasses.replace(command, files={**command.files, FILE: json.dumps(hint.to_json())})


def hint_error(exc: LipsyncError, hint: Any) -> FaceNotFoundError | None:
    """A worker's failure to find the hinted face (``face_hint.HintNotMatched``) as the error the user reads."""
    from ..engines.workerd.face_hint import NOT_MATCHED

    if hint is None or NOT_MATCHED not in str(exc):
        return None
    detail = str(exc)
    start = detail.find(f"face {hint.index}")
    return FaceNotFoundError(
        detail[start:].rstrip(")") if start >= 0 else detail,
        subject=naming.option("face_index"),
        hint="Choose another face with --face-index (lipsync-tool check IMAGE lists them), crop the image to the one person, "
        "or pass --skip-face-check to let the engine's own detector pick.",
    )
