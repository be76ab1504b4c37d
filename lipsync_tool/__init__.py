"""lipsync-tool: a portrait and a speech recording in, a lip-synced 1080p MP4 out.

Public API (nothing heavy is imported here)::

    from lipsync_tool import LipSyncPipeline
    result = LipSyncPipeline(engine="wav2lip", wav2lip_box=(100, 80, 300, 330)).run("face.png", "speech.wav", "out.mp4")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipeline import LipSyncPipeline, OptionInfo, RunResult


def __getattr__(name: str) -> Any:
    if name in ("LipSyncPipeline", "OptionInfo", "RunResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


def get_engine(name: str):
    from .engines import get_engine as _get

    return _get(name)


def available_engines() -> list[str]:
    from .engines import available_engines as _available

    return _available()


__all__ = ["LipSyncPipeline", "OptionInfo", "RunResult", "__version__", "available_engines", "get_engine"]
