"""Building and running the encoding passes: the one-pass upscale graph,
HLS segments, chunk normalisation and concatenation, and AAC slicing.

Building an argv is pure (ffmpeg-python compiles the graph); only
:func:`run_ffmpeg_job` runs anything.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import UpscaleOptions
from ..errors import FFmpegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioSource:
    path: Path
    stream: int = 0  # index among the file's audio streams
    start: float | None = None  # seconds into the file (a chunk's audio)
    #: Already-encoded AAC to copy, delayed by this many seconds (a chunk's slice).
    copy_offset: float | None = None


def upscale_graph(
    raw: Path,
    audio: AudioSource | None,
    out: Path,
    opts: UpscaleOptions,
    duration: float,
    *,
    fmt: str | None = None,
    raw_input: dict[str, Any] | None = None,
    extra_output: dict[str, Any] | None = None,
):
    """The one-pass ffmpeg graph: fps, hold the last frame, scale, encode, mux.

    Pure: returns an ffmpeg-python node; :func:`upscale_argv` compiles it.
    *raw_input* are input options of the video (e.g. the concat demuxer for
    chunks); *extra_output* are output options (e.g. the HLS muxer's).
    """
    import ffmpeg as ffm

    v = ffm.input(str(raw), **(raw_input or {})).video
    v = v.filter("fps", fps=frame_rate(opts.fps))
    # Hold the last frame so the video is never shorter than the audio; -t cuts it.
    v = v.filter("tpad", stop=-1, stop_mode="clone")
    v = _resize(v, opts).filter("setsar", 1)
    streams = [v]
    kwargs: dict[str, Any] = {**video_codec_options(opts), "pix_fmt": "yuv420p", "t": f"{duration:.6f}"}
    if audio is not None and not opts.remove_audio:
        a_in: dict[str, Any] = {}
        if audio.start is not None:
            a_in = {"ss": f"{audio.start:.6f}", "t": f"{duration:.6f}"}
        if audio.copy_offset is not None:
            a_in = {"itsoffset": f"{audio.copy_offset:.6f}"}
        streams.append(ffm.input(str(audio.path), **a_in)[f"a:{audio.stream}"])
        if audio.copy_offset is not None:
            kwargs["acodec"] = "copy"
        else:
            kwargs.update({"acodec": "aac", "audio_bitrate": opts.audio_bitrate})
    else:
        kwargs["an"] = None
    container = fmt or out.suffix.lower().lstrip(".")
    if container in ("mp4", "mov"):
        kwargs["movflags"] = "+faststart"
    kwargs["f"] = {"mkv": "matroska", "mp4": "mp4", "mov": "mov"}.get(container, container)
    kwargs.update(extra_output or {})
    return ffm.output(*streams, str(out), **kwargs)


def video_codec_options(opts: UpscaleOptions) -> dict[str, Any]:
    """The H.264 encoder's options: libx264 (--crf, --x264-preset), or NVENC
    at the constant quality closest to the same --crf."""
    if opts.encoder == "h264_nvenc":
        return {"vcodec": "h264_nvenc", "rc": "vbr", "cq": opts.crf, "b:v": 0, "preset": "p5"}
    return {"vcodec": "libx264", "crf": opts.crf, "preset": opts.x264_preset}


def _resize(v, opts: UpscaleOptions):
    """*v* scaled to the target height or canvas (padded or cropped to fit),
    or, with upscaling off, cropped to even sides as libx264 needs."""
    if not opts.enabled:
        return v.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2")
    if not opts.canvas:
        return v.filter("scale", -2, opts.target_height, flags="bicubic")
    cw, ch = opts.canvas
    if opts.fit == "pad":
        v = v.filter("scale", cw, ch, force_original_aspect_ratio="decrease", force_divisible_by=2, flags="bicubic")
        return v.filter("pad", cw, ch, "(ow-iw)/2", "(oh-ih)/2", color="black")
    v = v.filter("scale", cw, ch, force_original_aspect_ratio="increase", force_divisible_by=2, flags="bicubic")
    return v.filter("crop", cw, ch)


def upscale_argv(ff_path: str, raw: Path, audio: AudioSource | None, out: Path, opts: UpscaleOptions, duration: float, **kw: Any) -> list[str]:
    # Global options go first: ffmpeg may ignore options after the last output.
    return [ff_path, "-hide_banner", "-nostdin", "-y", *upscale_graph(raw, audio, out, opts, duration, **kw).get_args()]


def hls_argv(
    ff_path: str,
    clip: Path,
    audio: AudioSource | None,
    playlist: Path,
    opts: UpscaleOptions,
    duration: float,
    *,
    segment_seconds: float,
    ts_offset: float,
    raw_input: dict[str, Any] | None = None,
) -> list[str]:
    """Upscale *clip* (with its slice of the audio) straight into HLS segments
    appended to *playlist* (the muxer continues its numbering); keyframes
    every *segment_seconds* so segments have that length; timestamps
    continue at *ts_offset*."""
    seg = f"{segment_seconds:g}"
    extra = {
        "force_key_frames": f"expr:gte(t,n_forced*{seg})",
        # No B-frames: each piece's first DTS then equals its first PTS, so
        # pieces appended one after another never step back in time.
        "bf": 0,
        "hls_time": seg,
        "hls_list_size": 0,
        "hls_playlist_type": "event",
        "hls_flags": "append_list+omit_endlist+temp_file+independent_segments",
        "hls_segment_type": "mpegts",
        "hls_segment_filename": str(playlist.parent / "segment_%05d.ts"),
        "output_ts_offset": f"{ts_offset:.6f}",
        # The first piece's audio starts with the encoder's priming, before 0:
        # shifting that piece to non-negative times would overlap the next one.
        "avoid_negative_ts": "disabled",
    }
    return upscale_argv(ff_path, clip, audio, playlist, opts, duration, fmt="hls", extra_output=extra, raw_input=raw_input)


def encode_aac_argv(ff_path: str, src: Path, dst: Path, bitrate: str, stream: int = 0) -> list[str]:
    """The whole audio as one continuous AAC (ADTS) stream, to be sliced per chunk."""
    return [ff_path, "-hide_banner", "-nostdin", "-y", "-i", str(src), "-map", f"0:a:{stream}", "-vn", "-c:a", "aac", "-b:a", bitrate, "-f", "adts", str(dst)]


#: Samples per AAC frame, and the priming ffmpeg's AAC encoder puts before the first sample.
AAC_FRAME = 1024
AAC_PRIMING = 1024
_ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def adts_frames(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Sample rate and (offset, length) of every frame of an ADTS stream."""
    frames: list[tuple[int, int]] = []
    rate = 0
    i = 0
    while i + 7 <= len(data):
        if data[i] != 0xFF or (data[i + 1] & 0xF6) != 0xF0:
            raise ValueError(f"not an ADTS frame at byte {i}")
        rate = _ADTS_RATES[(data[i + 2] >> 2) & 0x0F]
        length = ((data[i + 3] & 0x03) << 11) | (data[i + 4] << 3) | (data[i + 5] >> 5)
        if length < 7:
            raise ValueError(f"bad ADTS frame length at byte {i}")
        frames.append((i, length))
        i += length
    return rate, frames


def slice_adts(data: bytes, start: float, end: float | None) -> tuple[bytes, float]:
    """The AAC frames whose first sample lies in [start, end) (end None: to the
    end), and the time of the first one, so a chunk's audio can be copied
    without re-encoding and without overlapping its neighbours."""
    rate, frames = adts_frames(data)
    picked = []
    first_time = None
    for index, (offset, length) in enumerate(frames):
        t = (index * AAC_FRAME - AAC_PRIMING) / rate
        # The encoder's priming frame (before 0) is left out: a piece that started
        # before 0 would be shifted by the muxer and overlap the next piece.
        if t >= start - 1e-9 and (end is None or t < end - 1e-9):
            if first_time is None:
                first_time = t
            picked.append(data[offset : offset + length])
    return b"".join(picked), (first_time if first_time is not None else start)


def normalize_clip_argv(ff_path: str, raw: Path, dst: Path, fps: float, frames: int) -> list[str]:
    """A chunk's raw engine clip as exactly *frames* frames at *fps*, video
    only, losslessly encoded, ready to be concatenated."""
    import ffmpeg as ffm

    v = ffm.input(str(raw)).video.filter("fps", fps=frame_rate(fps)).filter("tpad", stop=-1, stop_mode="clone")
    v = v.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2")
    out = ffm.output(v, str(dst), vcodec="libx264", qp=0, preset="ultrafast", pix_fmt="yuv420p", **{"frames:v": frames}, an=None, f="mp4")
    return [ff_path, "-hide_banner", "-nostdin", "-y", *out.get_args()]


def concat_list(clips: list[Path], dst: Path) -> Path:
    """A concat-demuxer list of *clips*."""
    lines = ["ffconcat version 1.0"]
    for c in clips:
        escaped = str(c.absolute()).replace("'", "'\\''")
        lines.append(f"file '{escaped}'")
    dst.write_text("\n".join(lines) + "\n")
    return dst


def frame_rate(fps: float) -> str:
    """ffmpeg's spelling of a frame rate."""
    return str(int(fps)) if float(fps).is_integer() else f"{fps:.6f}"


_PROGRESS_TIME = re.compile(rb"out_time_us=(\d+)")


def run_ffmpeg_job(argv: list[str], *, what: str, total_seconds: float | None = None, on_progress: Callable[[float], None] | None = None) -> None:
    """Run a long ffmpeg job, reporting progress (0..1) from ``-progress``.

    It runs in its own process group tied to this process's life, and is
    known to :func:`process.kill_all_live`, so an interrupt stops it even when
    another thread started it.
    """
    from ..process import forget, kill_group, spawn

    full = [*argv[:1], "-progress", "pipe:1", "-nostats", *argv[1:]]
    log.debug("ffmpeg: %s", full)
    proc = spawn(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr_chunks: list[bytes] = []
    import threading

    def drain() -> None:
        assert proc.stderr is not None
        for chunk in iter(lambda: proc.stderr.read(65536), b""):
            stderr_chunks.append(chunk)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _PROGRESS_TIME.match(line)
            if m and total_seconds and on_progress:
                on_progress(min(1.0, int(m.group(1)) / 1e6 / total_seconds))
        rc = proc.wait()
    except BaseException:
        kill_group(proc)
        raise
    finally:
        forget(proc)
    t.join(timeout=5)
    if rc != 0:
        err = b"".join(stderr_chunks).decode("utf-8", "replace")
        raise FFmpegError(f"{what} failed (exit {rc})", argv=full, stderr_tail="\n".join(err.splitlines()[-15:]))
