"""The score columns of compare and batch, and the :class:`Scorer` protocol (no heavy imports).

A scorer has a ``name`` and ``score(video, audio)``, which returns either a
:class:`SyncScore` (LSE-C and LSE-D only) or an object with ``fields()`` (a
:class:`~lipsync_tool.scoring.ScoreResult`: every column).
:func:`score_fields` turns that, or its absence or failure, into the columns,
with ``"not computed"`` and the reason where a figure is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import LipsyncError

log = logging.getLogger(__name__)

NOT_COMPUTED = "not computed"


@dataclass(frozen=True)
class SyncScore:
    """SyncNet's lip-sync error metrics for one clip (Wav2Lip paper, §4.1)."""

    lse_c: float  # confidence: higher is better
    lse_d: float  # distance: lower is better
    scorer: str


@runtime_checkable
class Scorer(Protocol):
    """Scores how well a video's lips follow an audio track."""

    name: str

    def score(self, video: Path, audio: Path) -> SyncScore: ...


#: name → factory, for plug-in scorers that compare picks up by itself (``scorer="auto"``); none is built in:
#: the SyncNet scorer needs weights and a torch interpreter, so it runs when asked for (``--score``).
_SCORERS: dict[str, Callable[[], Scorer]] = {}


def register_scorer(name: str, factory: Callable[[], Scorer], *, replace: bool = False) -> None:
    if name in _SCORERS and not replace:
        raise ValueError(f"a scorer named {name!r} is already registered")
    _SCORERS[name] = factory


def unregister_scorer(name: str) -> None:
    _SCORERS.pop(name, None)


def available_scorers() -> list[str]:
    return sorted(_SCORERS)


def default_scorer() -> Scorer | None:
    """The first registered scorer that can be made, or None."""
    for name in available_scorers():
        try:
            return _SCORERS[name]()
        except LipsyncError as exc:
            log.warning("lip-sync scorer %s is not usable: %s", name, exc)
    return None


#: The score columns compare and batch report (a SyncScore fills only the first two).
SCORE_COLUMNS = ("lse_c", "lse_d", "av_offset", "mouth_sharpness", "av_duration_diff_s")
NO_SCORER_NOTE = "not asked for (compare --score computes them)"


def _not_computed(scorer: str | None, note: str) -> dict[str, Any]:
    return {**{c: NOT_COMPUTED for c in SCORE_COLUMNS}, "av_duration_diff_s": None, "scorer": scorer, "score_note": note}


def score_fields(scorer: Scorer | None, video: Path | None, audio: Path, *, no_scorer_note: str = NO_SCORER_NOTE) -> dict[str, Any]:
    """The score columns from *scorer*, or ``"not computed"`` with the reason."""
    if scorer is None:
        return _not_computed(None, no_scorer_note)
    if video is None:
        return _not_computed(scorer.name, "the engine produced no video")
    try:
        s = scorer.score(video, audio)
    except Exception as exc:  # noqa: BLE001 - a scorer's failure must not lose the comparison
        log.warning("scorer %s failed on %s: %s", scorer.name, video, exc)
        return _not_computed(scorer.name, f"the scorer failed: {exc}")
    if hasattr(s, "fields"):  # a ScoreResult: every column, "not computed" where it could not be
        return {**s.fields(), "scorer": scorer.name}
    return {**_not_computed(s.scorer, ""), "lse_c": float(s.lse_c), "lse_d": float(s.lse_d), "score_note": None}
