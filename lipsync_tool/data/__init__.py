"""The sample inputs that ship with lipsync-tool (``lipsync-tool demo`` runs them).

See README.md in this folder for where they come from and their licences.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: The bundled portrait and speech, by role.
SAMPLES = {"image": "portrait.jpg", "audio": "speech.wav"}


def sample(role: str) -> Traversable:
    """The bundled sample for *role* (``image`` or ``audio``); a real path in a
    normal install (use :func:`importlib.resources.as_file` to be sure)."""
    return files(__name__) / SAMPLES[role]


__all__ = ["SAMPLES", "sample"]
