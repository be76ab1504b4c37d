"""Compare's side-by-side video: every engine's clip at one height, labelled
with the engine's name, stacked left to right, with the original audio.

Pure: the graph is built with ffmpeg-python and compiled to an argv; running
it is :func:`~lipsync_tool.media.encoding.run_ffmpeg_job`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DependencyError
from .encoding import frame_rate


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str


def side_by_side_graph(clips: Sequence[Clip], audio: Path, out: Path, *, height: int, fps: float, duration: float, font: Path, crf: int = 18, preset: str = "medium"):
    """One ffmpeg graph: each clip at *height*, labelled, stacked left to right,
    with *audio* as AAC.  Pure: returns an ffmpeg-python node."""
    import ffmpeg as ffm

    if not clips:
        raise ValueError("no clips to put side by side")
    if height % 2:
        raise ValueError(f"height {height} must be even")
    size = max(12, round(height / 18))
    streams = []
    for clip in clips:
        v = ffm.input(str(clip.path)).video
        v = v.filter("fps", fps=frame_rate(fps))
        v = v.filter("scale", -2, height, flags="bicubic")
        v = v.filter("setsar", 1)
        v = v.filter("format", "yuv420p")
        v = v.filter(
            "drawtext",
            fontfile=str(font),
            text=clip.label,
            expansion="none",
            fontsize=size,
            fontcolor="white",
            box=1,
            boxcolor="black@0.6",
            boxborderw=max(4, size // 3),
            x=f"{size}",
            y=f"{size}",
        )
        streams.append(v)
    video = streams[0] if len(streams) == 1 else ffm.filter(streams, "hstack", inputs=len(streams))
    sound = ffm.input(str(audio))["a:0"]
    return ffm.output(
        video,
        sound,
        str(out),
        vcodec="libx264",
        pix_fmt="yuv420p",
        crf=crf,
        preset=preset,
        acodec="aac",
        audio_bitrate="192k",
        t=f"{duration:.6f}",
        movflags="+faststart",
        f="mp4",
    )


def side_by_side_argv(ff_path: str, clips: Sequence[Clip], audio: Path, out: Path, **kwargs: Any) -> list[str]:
    return [ff_path, "-hide_banner", "-nostdin", "-y", *side_by_side_graph(clips, audio, out, **kwargs).get_args()]


#: A font file for the labels, when none of the usual ones is installed.
ENV_FONT = "LIPSYNC_TOOL_FONT"


# -- the label font -------------------------------------------------------------------------

_FONT_NAMES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "LiberationSans-Regular.ttf",
    "NotoSans-Regular.ttf",
    "FreeSans.ttf",
    "Arial.ttf",
    "arial.ttf",
    "Helvetica.ttc",
    "Roboto-Regular.ttf",
)
FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "~/Library/Fonts",
    "C:/Windows/Fonts",
)
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


def find_font(explicit: str | os.PathLike | None = None, *, search_dirs: Sequence[str | os.PathLike] = FONT_DIRS) -> Path:
    """A font file for drawtext: *explicit*, ``$LIPSYNC_TOOL_FONT``, a common
    sans font, else any TrueType/OpenType font in *search_dirs*.

    The file is passed to drawtext as ``fontfile``, so fontconfig's own
    lookup (and its config) does not matter.
    """
    chosen = explicit or os.environ.get(ENV_FONT)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise DependencyError("no such font file", subject=path, hint="Give a .ttf or .otf file with --font.")
        return path
    found: list[Path] = []
    for d in search_dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            continue
        for dirpath, _, filenames in os.walk(root):
            found += [Path(dirpath) / f for f in filenames if f.lower().endswith(_FONT_SUFFIXES)]
    by_name = {p.name: p for p in sorted(found)}
    for name in _FONT_NAMES:
        if name in by_name:
            return by_name[name]
    if found:
        return min(found)
    raise DependencyError(
        "no font found for the engine labels of the side-by-side video",
        subject="font",
        hint=f"Install one (e.g. apt-get install fonts-dejavu-core), or pass --font FILE.ttf (or set {ENV_FONT}).",
    )
