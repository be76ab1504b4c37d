"""Describing media files with ``ffmpeg -i``.

Probing works without ffprobe (the imageio-ffmpeg wheel ships none):
``ffmpeg -i`` describes the streams, and a stream-copy pass to the null muxer
counts packets and measures durations.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .binary import FFmpeg, find_ffmpeg


@dataclass
class VideoStream:
    codec: str
    width: int
    height: int
    fps: float | None
    pix_fmt: str | None = None
    frames: int | None = None
    duration: float | None = None


@dataclass
class AudioStream:
    codec: str
    sample_rate: int | None
    channels: str | None
    duration: float | None = None


@dataclass
class MediaInfo:
    path: str
    container: str
    duration: float | None
    video: VideoStream | None = None
    audio: AudioStream | None = None
    extra_streams: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_INPUT = re.compile(r"^Input #0, ([^,]+(?:,[^ ,]+)*), from")
_STREAM = re.compile(r"Stream #0:(\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: (Video|Audio|Data|Subtitle|Attachment): (.*)$")
_SIZE = re.compile(r"(?<![\dx])(\d{2,5})x(\d{2,5})(?![\dx])")
_FPS = re.compile(r"([\d.]+)(k?) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
_RATE = re.compile(r"(\d+) Hz")


def _hms(m: re.Match) -> float:
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def probe_text(ff: FFmpeg, path: Path) -> str:
    proc = ff.run(["-i", str(path)], what=f"probing {path}", timeout=120)
    return proc.stderr.decode("utf-8", "replace")


def parse_probe(text: str, path: str) -> MediaInfo:
    """Parse the stream description ``ffmpeg -i`` prints."""
    container = ""
    duration = None
    video = audio = None
    extra: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if m := _INPUT.match(line):
            container = m.group(1)
        elif m := _DURATION.search(line):
            duration = _hms(m)
        elif m := _STREAM.search(line):
            kind, desc = m.group(2), m.group(3)
            codec = desc.split(",")[0].split(" ")[0].strip()
            if kind == "Video" and video is None:
                size = _SIZE.search(desc)
                fps_m = _FPS.search(desc) or _TBR.search(desc)
                fps = None
                if fps_m:
                    fps = float(fps_m.group(1)) * (1000 if fps_m.group(2) else 1)
                pix = desc.split(",")[1].strip().split("(")[0] if "," in desc else None
                video = VideoStream(
                    codec=codec,
                    width=int(size.group(1)) if size else 0,
                    height=int(size.group(2)) if size else 0,
                    fps=fps,
                    pix_fmt=pix,
                )
            elif kind == "Audio" and audio is None:
                rate = _RATE.search(desc)
                parts = [p.strip() for p in desc.split(",")]
                audio = AudioStream(codec=codec, sample_rate=int(rate.group(1)) if rate else None, channels=parts[2] if len(parts) > 2 else None)
            else:
                extra.append(f"{kind}: {codec}")
    return MediaInfo(path=path, container=container, duration=duration, video=video, audio=audio, extra_streams=extra)


def _measure(ff: FFmpeg, path: Path, selector: str) -> tuple[int, float]:
    """Packets and duration of one stream, by stream-copying it to the null muxer."""
    proc = ff.run(["-i", str(path), "-map", selector, "-c", "copy", "-f", "null", "-", "-progress", "pipe:1", "-nostats"], what=f"measuring {path}", timeout=600)
    frames, out_us = 0, 0
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("frame="):
            frames = int(line.split("=", 1)[1] or 0)
        elif line.startswith("out_time_us="):
            v = line.split("=", 1)[1]
            if v.lstrip("-").isdigit():
                out_us = max(out_us, int(v))
    return frames, out_us / 1e6


def probe(path: Path, *, ff: FFmpeg | None = None, measure: bool = False) -> MediaInfo:
    """Describe *path*.  With *measure*, also count video frames and time each stream."""
    ff = ff or find_ffmpeg(os.environ.get("LIPSYNC_TOOL_FFMPEG"))
    info = parse_probe(probe_text(ff, path), str(path))
    if measure:
        if info.video:
            info.video.frames, _ = _measure(ff, path, "0:v:0")
            if info.video.fps:
                info.video.duration = info.video.frames / info.video.fps
        if info.audio:
            _, info.audio.duration = _measure(ff, path, "0:a:0")
    return info


def read_error(text: str) -> str:
    """The last meaningful line of an ffmpeg error output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"
