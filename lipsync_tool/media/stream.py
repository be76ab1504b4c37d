"""Raw frames into ffmpeg: the encoders that a warm worker's frames stream into.

A :class:`FrameEncoder` is one ffmpeg reading raw video on its stdin (the
argv comes from :func:`~lipsync_tool.media.encoding.upscale_argv` or
``hls_argv`` with :func:`raw_video_input`), so the upscale, the audio and the
container happen in the one encode, while the frames are still being made.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FFmpegError

log = logging.getLogger(__name__)

#: The video input of a streamed encode.
PIPE = Path("pipe:0")


@dataclass(frozen=True)
class VideoFormat:
    """What a worker's raw frames are."""

    width: int
    height: int
    fps: float
    pix_fmt: str = "bgr24"

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "fps": self.fps, "pix_fmt": self.pix_fmt}


def raw_video_input(video: VideoFormat) -> dict[str, Any]:
    """ffmpeg input options for *video* on stdin (``raw_input=`` of the argv builders)."""
    from .encoding import frame_rate

    return {"f": "rawvideo", "pix_fmt": video.pix_fmt, "s": f"{video.width}x{video.height}", "framerate": frame_rate(video.fps)}


class FrameEncoder:
    """One ffmpeg fed raw frames: :meth:`write` them, then :meth:`close`
    (waits, raises FFmpegError) or :meth:`abort` (kills)."""

    def __init__(self, argv: list[str], *, what: str, output: Path | None = None):
        from ..process import spawn

        self.argv, self.what, self.output = argv, what, output
        self.frames = 0
        self._stderr: list[bytes] = []
        self._broken: BaseException | None = None
        self.proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read(65536), b""):
            self._stderr.append(chunk)

    def write(self, data: bytes, frames: int) -> None:
        """Feed *frames* frames; once ffmpeg has failed, the rest is dropped (see :meth:`close`)."""
        if self._broken is not None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.frames += frames
        except (BrokenPipeError, OSError) as exc:
            self._broken = exc

    def close(self) -> None:
        """End the input and wait for ffmpeg to finish the file."""
        from ..process import forget

        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait()
        forget(self.proc)
        self._drain.join(timeout=5)
        if rc != 0:
            err = b"".join(self._stderr).decode("utf-8", "replace")
            raise FFmpegError(f"{self.what} failed (exit {rc})", argv=self.argv, stderr_tail="\n".join(err.splitlines()[-15:]))

    def abort(self) -> None:
        from ..process import forget, kill_group

        kill_group(self.proc, grace=1.0)
        forget(self.proc)
        if self.output is not None:
            self.output.unlink(missing_ok=True)


class FileSink:
    """A worker's frames encoded into one lossless intermediate clip (a chunk
    of a long run, or any caller of ``WorkerRunner.run``)."""

    def __init__(self, ff_path: str, path: Path):
        self.ff_path, self.path = ff_path, path
        self.encoder: FrameEncoder | None = None
        self.video: VideoFormat | None = None

    def open(self, video: VideoFormat) -> None:
        self.video = video
        argv = [
            self.ff_path, "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
            *[x for k, v in raw_video_input(video).items() for x in (f"-{k}", str(v))], "-i", "pipe:0",
            "-vf", "crop=trunc(iw/2)*2:trunc(ih/2)*2", "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv444p", str(self.path),
        ]  # fmt: skip
        self.encoder = FrameEncoder(argv, what="encoding the worker's frames", output=self.path)

    def write(self, data: bytes, frames: int) -> None:
        assert self.encoder is not None
        self.encoder.write(data, frames)

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()

    def abort(self) -> None:
        if self.encoder is not None:
            self.encoder.abort()
