"""The advisor before a job: its findings go into the run report; only "no face at all" stops the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import DependencyError, FaceNotFoundError, LipsyncError

log = logging.getLogger(__name__)


def advise_before_run(image: Path, still: Path, *, python: Path | str | None, settings: Any, info: Any, timeout: float = 600.0) -> None:
    """Run :func:`~.advisor.check_image` on the staged still *still* (of the user's *image*) and record it in *info*
    (the report's :class:`~lipsync_tool.report.FaceInfo`: ``advice``, and its warnings).

    A portrait without any face raises :class:`FaceNotFoundError`; every other
    finding is advice.  An interpreter without face-alignment, or weights that
    cannot be had, do not stop the run either: the report and the log say the
    advice was not given, and why (never silently).
    """
    from ..runtime import engine_python, package_versions
    from .advisor import check_image

    try:
        if package_versions(engine_python(python), ["face-alignment"]).get("face-alignment") is None:  # before any download
            raise DependencyError(
                f"face-alignment is not installed in {engine_python(python)}", subject="face-alignment", hint="pip install 'lipsync-tool[advisor]' there"
            )
        advice = check_image(still, cache_dir=settings.cache_dir, registry_file=settings.registry, offline=settings.offline, python=python, timeout=timeout)
    except FaceNotFoundError as exc:
        raise FaceNotFoundError(exc.message, subject=image, hint=exc.hint) from None
    except LipsyncError as exc:  # no face-alignment in that interpreter, no weights offline, …
        note = f"portrait advice not given: {exc}" + (f" ({exc.hint})" if exc.hint else "")
        log.warning("%s", note)
        info.warnings.append(note)
        info.advice = {"given": False, "reason": str(exc)}
        return
    data = advice.to_json()
    info.advice = {"given": True, **data}
    for warning in advice.warnings:
        log.warning("%s: %s", image, warning)
        info.warnings.append(warning)
