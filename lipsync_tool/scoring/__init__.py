"""Lip-sync scores: SyncNet's LSE-D, LSE-C and AV offset, plus two weightless figures.

* :class:`SyncNetScorer` (:mod:`.scorer`): weights through the verified cache,
  a scorer process in a torch interpreter (:mod:`.syncnetd`), report fields;
* :mod:`.quality`: mouth-region sharpness and the audio/video duration gap.

Nothing heavy is imported here: torch and OpenCV live only in the scorer's process.
"""

from .fields import NOT_COMPUTED, SCORE_COLUMNS, Scorer, SyncScore, score_fields
from .scorer import ScoreOptions, ScoreResult, SyncNetScorer

__all__ = ["NOT_COMPUTED", "SCORE_COLUMNS", "ScoreOptions", "ScoreResult", "Scorer", "SyncNetScorer", "SyncScore", "score_fields"]
