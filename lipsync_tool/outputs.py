"""Output writers: what a run publishes once the engine has rendered its clip.

:func:`get_outputs` picks the writers a run's options ask for (as whisper's
``get_writer()`` picks one per format): :class:`FileOutput` for OUTPUT,
:class:`HlsOutput` for ``--hls``.  A new format is one more :class:`Output`
subclass and one more line there.

The run calls each writer in turn: :meth:`Output.begin` before the engine
starts, :meth:`Output.add_chunk` as each chunk of a chunked run is ready (for
progressive formats), :meth:`Output.publish` with the whole clip, and
:meth:`Output.fail` or :meth:`Output.interrupt` when the run ends early.
"""

from __future__ import annotations

import os
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import naming
from .config import OUTPUT_EXTENSIONS
from .errors import FFmpegError, OutputPathError
from .report import HlsInfo

if TYPE_CHECKING:
    from .chunking import Chunk
    from .config import UpscaleOptions
    from .media import FFmpeg
    from .media.stream import FrameEncoder, VideoFormat
    from .report import RunReport, Timer


@dataclass(frozen=True)
class Rendered:
    """What the engine made: one clip, or the chunks' normalised clips in order."""

    clips: list[Path]
    #: Seconds of the audio the clips cover.
    duration: float
    chunked: bool = False
    #: The frames went straight into each output's encoder (no clips).
    streamed: bool = False


@dataclass(frozen=True)
class PublishContext:
    """What every writer needs from the run."""

    ff: FFmpeg
    #: The user's audio, muxed into the outputs.
    audio: Path
    #: The upscale options, at the run's fps.
    upscale: UpscaleOptions
    remove_audio: bool
    overwrite: bool
    #: The run's temp dir (command files, concat lists).
    workdir: Path
    observer: Any
    timer: Timer
    report: RunReport


class Output(ABC):
    """One published form of the run's clip."""

    def begin(self, ctx: PublishContext) -> None:
        """Before the engine runs (make the target ready)."""

    def add_chunk(self, ctx: PublishContext, chunk: Chunk, clip: Path, label: str, *, last: bool) -> None:
        """A chunk's clip is ready (chunked runs; progressive formats publish it now)."""

    def stream(self, ctx: PublishContext, video: VideoFormat, duration: float) -> FrameEncoder:
        """An encoder the engine's raw frames stream into as they are made
        (a warm worker's run); :meth:`publish` then finds the work done."""
        raise NotImplementedError(f"{type(self).__name__} cannot take streamed frames")

    @abstractmethod
    def publish(self, ctx: PublishContext, rendered: Rendered) -> None:
        """The whole clip is rendered: publish it."""

    def fail(self, ctx: PublishContext, reason: str) -> str | None:
        """The run failed after :meth:`begin`: leave the target saying so.
        Returns a note for the user about what was left, if anything."""
        return None

    def interrupt(self, ctx: PublishContext) -> None:
        """The run was interrupted after :meth:`begin`."""


class FileOutput(Output):
    """OUTPUT: the clip upscaled into one video file, published atomically."""

    def __init__(self, path: Path):
        self.path = path
        self._streamed: Path | None = None

    def stream(self, ctx: PublishContext, video: VideoFormat, duration: float) -> FrameEncoder:
        from .media import AudioSource, upscale_argv
        from .media.stream import PIPE, FrameEncoder, raw_video_input

        self._streamed = tmp_out = temp_output_path(self.path)
        argv = upscale_argv(ctx.ff.path, PIPE, AudioSource(ctx.audio), tmp_out, ctx.upscale, duration, fmt=output_format(self.path), raw_input=raw_video_input(video))
        (ctx.workdir / "upscale_command.txt").write_text(_shell_join(argv) + "\n")
        ctx.report.commands.ffmpeg = argv
        return FrameEncoder(argv, what="the upscale", output=tmp_out)

    def fail(self, ctx: PublishContext, reason: str) -> str | None:
        if self._streamed is not None:
            self._streamed.unlink(missing_ok=True)
        return None

    def interrupt(self, ctx: PublishContext) -> None:
        self.fail(ctx, "interrupted")

    def publish(self, ctx: PublishContext, rendered: Rendered) -> None:
        from .media import AudioSource, concat_list, probe, run_ffmpeg_job, upscale_argv
        from .targets import publish_file

        tmp_out = self._streamed if rendered.streamed and self._streamed is not None else temp_output_path(self.path)
        try:
            if not rendered.streamed:  # streamed frames were encoded while the engine ran
                ctx.observer.stage("upscale")
                with ctx.timer("upscale"):
                    if rendered.chunked:
                        source, raw_input = concat_list(rendered.clips, ctx.workdir / "chunks.ffconcat"), {"f": "concat", "safe": 0}
                    else:
                        source, raw_input = rendered.clips[0], None
                    argv = upscale_argv(ctx.ff.path, source, AudioSource(ctx.audio), tmp_out, ctx.upscale, rendered.duration, fmt=output_format(self.path), raw_input=raw_input)
                    (ctx.workdir / "upscale_command.txt").write_text(_shell_join(argv) + "\n")
                    ctx.report.commands.ffmpeg = argv
                    run_ffmpeg_job(argv, what="the upscale", total_seconds=rendered.duration, on_progress=lambda f: ctx.observer.progress("upscale", f))
            ctx.observer.stage("publish")
            with ctx.timer("publish"):
                info = probe(tmp_out, ff=ctx.ff, measure=True)
                check_published(info, rendered.duration, remove_audio=ctx.remove_audio, fps=ctx.upscale.fps)
                publish_file(tmp_out, self.path, overwrite=ctx.overwrite)
                ctx.report.output.media = {**info.to_dict(), "path": str(self.path)}
        finally:
            tmp_out.unlink(missing_ok=True)


class HlsOutput(Output):
    """``--hls DIR``: an m3u8 playlist whose segments appear as the chunks are
    rendered; ``#EXT-X-ENDLIST`` only when the whole run succeeded."""

    def __init__(self, directory: Path, segment_seconds: float):
        self.dir = directory
        self.segment_seconds = segment_seconds
        self.playlist = None  # hls.HlsPlaylist, from begin()
        self._progressive = False

    @property
    def playlist_path(self) -> Path | None:
        return self.playlist.playlist if self.playlist is not None else None

    def begin(self, ctx: PublishContext) -> None:
        from .hls import HlsPlaylist

        self.playlist = HlsPlaylist(ctx.ff, self.dir, self.segment_seconds, overwrite=ctx.overwrite)
        ctx.report.hls = HlsInfo(str(self.playlist.playlist))
        if not ctx.remove_audio:
            self.playlist.prepare_audio(ctx.audio, ctx.upscale.audio_bitrate)

    def _publish(self, ctx: PublishContext, clip: Path, start: float, end: float | None, duration: float) -> None:
        assert self.playlist is not None
        audio = self.playlist.piece_audio(start, end) if not ctx.remove_audio else None
        self.playlist.publish(clip, audio, ctx.upscale, duration, start=start, on_progress=lambda f: ctx.observer.progress("hls", f))

    def stream(self, ctx: PublishContext, video: VideoFormat, duration: float) -> FrameEncoder:
        """Segments appear while the frames are still being made."""
        from .media import hls_argv
        from .media.stream import PIPE, FrameEncoder, raw_video_input

        assert self.playlist is not None
        self._progressive = True
        audio = self.playlist.piece_audio(0.0, None) if not ctx.remove_audio else None
        argv = hls_argv(
            ctx.ff.path, PIPE, audio, self.playlist.playlist, ctx.upscale, duration, segment_seconds=self.segment_seconds, ts_offset=0.0, raw_input=raw_video_input(video)
        )
        self.playlist.commands.append(argv)
        self.playlist.published_seconds = duration  # once the encoder has finished (fail() counts what is there)
        return FrameEncoder(argv, what="the HLS segments")

    def add_chunk(self, ctx: PublishContext, chunk: Chunk, clip: Path, label: str, *, last: bool) -> None:
        self._progressive = True
        ctx.observer.stage("hls", label)
        with ctx.timer("hls"):
            self._publish(ctx, clip, chunk.start, None if last else chunk.end, chunk.duration)

    def publish(self, ctx: PublishContext, rendered: Rendered) -> None:
        assert self.playlist is not None
        if not self._progressive:
            ctx.observer.stage("hls")
            with ctx.timer("hls"):
                self._publish(ctx, rendered.clips[0], 0.0, None, rendered.duration)
        self.playlist.end()
        assert ctx.report.hls is not None
        ctx.report.hls.commands = self.playlist.commands

    def fail(self, ctx: PublishContext, reason: str) -> str | None:
        if self.playlist is None:
            return None
        from .hls import playlist_durations

        if self.playlist.playlist.exists():
            self.playlist.published_seconds = sum(playlist_durations(self.playlist.playlist))
        self.playlist.fail(reason)
        note = f"The HLS playlist {self.playlist.playlist} stops after {self.playlist.published_seconds:.2f} s and is marked as failed (no #EXT-X-ENDLIST)."
        if ctx.report.hls is not None:
            ctx.report.hls.failed = note
        return note

    def interrupt(self, ctx: PublishContext) -> None:
        if self.playlist is not None:
            self.playlist.fail("interrupted")


def get_outputs(output: Path | None, *, hls: Path | None, hls_segment_seconds: float) -> list[Output]:
    """The writers for a run's OUTPUT and --hls, in publishing order."""
    outputs: list[Output] = []
    if output is not None:
        outputs.append(FileOutput(output))
    if hls is not None:
        outputs.append(HlsOutput(Path(hls), hls_segment_seconds))
    return outputs


# -- helpers (pure) ---------------------------------------------------------------------


def _shell_join(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


def output_format(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def temp_output_path(output: Path) -> Path:
    """A process-unique temp file beside OUTPUT, so ``os.replace`` is atomic."""
    return output.with_name(f".{output.stem}.{os.getpid()}-{random.randrange(16**6):06x}.partial{output.suffix.lower()}")


def check_output_name(output: Path) -> None:
    """OUTPUT names a video container (the other checks are :func:`targets.check_targets`'s)."""
    if output.is_dir():
        raise OutputPathError(
            f"is a folder; {naming.option('output')} must be a video file name", subject=output, hint=f"Name a file inside it, e.g. {output / 'out.mp4'}"
        )
    if output.suffix.lower() not in OUTPUT_EXTENSIONS:
        what = f"the extension {output.suffix!r}" if output.suffix else "no extension"
        raise OutputPathError(f"has {what}; the output must be a {', '.join(OUTPUT_EXTENSIONS)} file", subject=output, hint=f"Name it e.g. {output.with_suffix('.mp4').name}.")


def check_published(info, audio_duration: float, *, remove_audio: bool, fps: float) -> None:
    """The file about to be published really is what the run promises."""
    frame = 1.0 / fps
    if info.video is None or info.video.codec != "h264":
        raise FFmpegError(f"the upscaled file has no H.264 video stream ({info.video.codec if info.video else 'none'})")
    if not remove_audio and (info.audio is None or info.audio.codec != "aac"):
        raise FFmpegError("the upscaled file has no AAC audio stream")
    vdur = info.video.duration
    if vdur is not None and abs(vdur - audio_duration) > frame + 1e-6:
        raise FFmpegError(f"the video lasts {vdur:.3f} s but the audio {audio_duration:.3f} s (more than one frame apart)")
