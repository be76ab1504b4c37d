"""Validating the user's inputs and staging them in the forms the engines read:
16 kHz mono WAV audio, an 8-bit RGB PNG portrait (or a face video), and
reference videos."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .binary import FFmpeg
from .images import decode_with_ffmpeg, flatten, open_image
from .probe import MediaInfo, parse_probe, probe_text, read_error

log = logging.getLogger(__name__)

#: Below this an audio track is too short to lip-sync.
MIN_AUDIO_SECONDS = 0.2
#: Images smaller than this on either side are rejected.
MIN_IMAGE_SIDE = 64
#: Images larger than this on the longest side are downscaled when staged.
MAX_IMAGE_SIDE = 2048
#: Aspect ratios beyond this are rejected as degenerate.
MAX_ASPECT = 4.0
#: ``volumedetect``'s max_volume at or below this means digital silence.
SILENCE_DB = -90.0
ENGINE_SAMPLE_RATE = 16000


# -- audio ----------------------------------------------------------------------------------


#: The decoded audio may fall short of the duration the file declares by this
#: much (both must be exceeded) before it is reported as probably truncated.
TRUNCATION_MIN_SECONDS = 0.5
TRUNCATION_MIN_FRACTION = 0.10


@dataclass
class AudioCheck:
    duration: float  # what decodes, in seconds
    max_volume_db: float | None
    info: MediaInfo
    #: The duration the file declares (its header), when it declares one
    #: rather than ffmpeg estimating it from the bitrate.
    declared_duration: float | None = None
    #: Problems worth a warning (each already logged), for the run report.
    warnings: list[str] = field(default_factory=list)

    @property
    def silent(self) -> bool:
        return self.max_volume_db is not None and self.max_volume_db <= SILENCE_DB


def _check_readable(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError("no such file", subject=path, hint=f"Check the {what} path.")
    if path.is_dir():
        raise InputError("is a folder, not a file", subject=path)
    if not os.access(path, os.R_OK):
        raise InputError("is not readable (permission denied)", subject=path)
    if path.stat().st_size == 0:
        raise InputError("is empty (0 bytes)", subject=path)


def stage_audio(src: Path, dst: Path, ff: FFmpeg) -> AudioCheck:
    """Validate *src* and write it as 16 kHz mono PCM WAV at *dst*, in one pass.

    The same ffmpeg run describes the input (its stderr header) and measures
    the peak level, so digital silence is caught without reading the file twice.
    """
    _check_readable(src, "audio")
    args = ["-y", "-i", str(src), "-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(ENGINE_SAMPLE_RATE), "-c:a", "pcm_s16le", "-af", "volumedetect", "-f", "wav", str(dst)]
    proc = ff.run(args, what="converting the audio", timeout=600)
    err = proc.stderr.decode("utf-8", "replace")
    info = parse_probe(err.split("\nOutput #0", 1)[0], str(src))
    if proc.returncode != 0:
        dst.unlink(missing_ok=True)
        if info.audio is None and (info.video is not None or info.container):
            what = "an image" if info.video is not None and (info.duration is None or info.container.endswith("_pipe")) else "a file"
            raise InputError(f"has no audio stream (it looks like {what})", subject=src, hint="Check the order: IMAGE AUDIO OUTPUT.")
        raise InputError(
            f"cannot be decoded as audio ({read_error(err)})", subject=src, hint="Give a wav, mp3, m4a/aac, flac, ogg/opus file or a video with sound."
        )
    max_db = None
    if m := re.search(r"max_volume:\s*(-?[\d.]+|-inf) dB", err):
        max_db = float("-inf") if m.group(1) == "-inf" else float(m.group(1))
    import wave

    try:
        with wave.open(str(dst), "rb") as w:
            seconds = w.getnframes() / w.getframerate()
    except (wave.Error, EOFError, OSError) as exc:
        dst.unlink(missing_ok=True)
        raise InputError(f"cannot be decoded as audio ({exc})", subject=src) from None
    if seconds <= MIN_AUDIO_SECONDS:
        raise InputError(
            f"lasts {seconds:.2f} s; lip-sync needs at least {MIN_AUDIO_SECONDS} s of speech",
            subject=src,
            hint="Give a longer recording (a word or more); if the file should be longer, it may be truncated or damaged.",
        )
    check = AudioCheck(duration=seconds, max_volume_db=max_db, info=info)
    # Without a header that states the length (an MP3 without a Xing/Info
    # frame, raw AAC), ffmpeg estimates it from the bitrate: nothing to compare.
    # A truncated WAV makes ffmpeg estimate too, but its header still tells.
    declared = _wav_declared_duration(src) if info.container == "wav" else None
    if declared is None and "Estimating duration from bitrate" not in err:
        declared = info.duration
    if declared is not None:
        check.declared_duration = declared
        if (msg := _short_audio_message(src, seconds, declared, has_video=_has_moving_video(err))) is not None:
            log.warning("%s", msg)
            check.warnings.append(msg)
    return check


def _wav_declared_duration(path: Path) -> float | None:
    """Seconds a RIFF WAVE header declares (data chunk size / byte rate), or
    None when it does not say (a streaming header's 0 or 0xFFFFFFFF size, RF64)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = None
            for _ in range(64):  # chunks before "data": fmt, LIST, fact, ...
                hdr = f.read(8)
                if len(hdr) < 8:
                    return None
                cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
                if cid == b"fmt ":
                    body = f.read(size)
                    if len(body) < 12:
                        return None
                    byte_rate = struct.unpack("<I", body[8:12])[0]
                    if size % 2:
                        f.seek(1, os.SEEK_CUR)
                elif cid == b"data":
                    if not byte_rate or size in (0, 0xFFFFFFFF):
                        return None
                    return size / byte_rate
                else:
                    f.seek(size + (size % 2), os.SEEK_CUR)
    except OSError:
        return None
    return None


def _has_moving_video(header: str) -> bool:
    """Whether ffmpeg's description of an input shows a video stream that is
    not just cover art."""
    return any(": Video: " in ln and "(attached pic)" not in ln for ln in header.split("\nOutput #0", 1)[0].splitlines())


def _short_audio_message(src: Path, decoded: float, declared: float, *, has_video: bool) -> str | None:
    """A warning when far less audio decodes than *src* declares, else None."""
    missing = declared - decoded
    if missing <= TRUNCATION_MIN_SECONDS or missing <= TRUNCATION_MIN_FRACTION * declared:
        return None
    hint = (
        "its audio track may end before its video does, or the file may be truncated or damaged"
        if has_video
        else "the file may be truncated or damaged (an interrupted download or copy?)"
    )
    return f"{src}: only {decoded:.2f} s of audio decodes, but the file declares {declared:.2f} s; {hint}. The clip will last {decoded:.2f} s."


# -- images and face videos -------------------------------------------------------------


# -- images and face videos -------------------------------------------------------------


@dataclass
class FaceInput:
    is_video: bool
    width: int
    height: int
    downscaled_from: tuple[int, int] | None = None
    info: MediaInfo | None = None
    #: Frames (or pages) in an image file; only the first is used.
    frames: int = 1
    #: Problems worth a warning (each already logged), for the run report.
    warnings: list[str] = field(default_factory=list)


def _check_geometry(src: Path, w: int, h: int) -> None:
    if min(w, h) < MIN_IMAGE_SIDE:
        raise InputError(f"is {w}x{h}; each side must be at least {MIN_IMAGE_SIDE} px", subject=src, hint="Use a larger portrait.")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise InputError(f"is {w}x{h}, an aspect ratio over {MAX_ASPECT:g}:1", subject=src, hint="Crop it around the face.")


def stage_face(src: Path, dst_stem: Path, ff: FFmpeg, *, allow_video: bool, video_engines: Sequence[str] = ()) -> tuple[Path, FaceInput]:
    """Validate the face input and stage it beside *dst_stem*.

    An image is decoded with Pillow (EXIF orientation applied, any bit depth
    or mode converted to 8-bit RGB, transparency on white, huge images
    downscaled) and re-encoded as ``<stem>.png``; an image Pillow cannot read
    is decoded by ffmpeg.  A video (engines that take one) is copied as
    ``<stem>.<ext>`` with a lower-case extension.
    """
    _check_readable(src, "image")
    im = open_image(src)
    if im is None:
        info = parse_probe(probe_text(ff, src), str(src))
        is_video = info.video is not None and info.duration is not None and not info.container.endswith("_pipe") and info.video.codec not in ("png", "mjpeg", "webp")
        still = (
            info.video is not None
            and info.video.width > 0  # ffmpeg's image2 demuxer "opens" any file named .png, without a size
            and info.audio is None
            and (info.duration is None or info.container.endswith("_pipe") or info.container.startswith("image2"))
        )
        if not (is_video or still):
            raise InputError("is not an image that can be decoded", subject=src, hint="Give a PNG, JPEG, WebP, BMP or TIFF portrait.")
        if is_video:
            return _stage_face_video(src, dst_stem, info, allow_video=allow_video, video_engines=video_engines)
        # A still image in a format (or pixel format) Pillow does not read.
        im = decode_with_ffmpeg(src, ff, dst_stem.with_name(dst_stem.name + ".ffmpeg.png"))
    return _stage_face_image(src, im, dst_stem, ff, allow_video=allow_video)


def _stage_face_video(src: Path, dst_stem: Path, info: MediaInfo, *, allow_video: bool, video_engines: Sequence[str] = ()) -> tuple[Path, FaceInput]:
    """Link or copy a face video beside *dst_stem*, with an extension upstream reads as a video."""
    if not allow_video:
        other = f", or use --engine {' or '.join(video_engines)} for a face video" if video_engines else ""
        raise InputError("is a video; this engine animates a still image", subject=src, hint=f"Give an image{other}.")
    _check_geometry(src, info.video.width, info.video.height)
    ext = src.suffix.lower().lstrip(".")
    if not re.fullmatch(r"[a-z0-9]{1,5}", ext) or ext in ("jpg", "jpeg", "png"):
        ext = "mp4"  # upstream tells images from videos by this extension
    dst = dst_stem.with_suffix("." + ext)
    _link_or_copy(src, dst)
    return dst, FaceInput(is_video=True, width=info.video.width, height=info.video.height, info=info)


def _stage_face_image(src: Path, im, dst_stem: Path, ff: FFmpeg, *, allow_video: bool) -> tuple[Path, FaceInput]:
    """Write the decoded image *im* (closed afterwards) as ``<stem>.png``: its
    first frame, upright, 8-bit RGB, no larger than :data:`MAX_IMAGE_SIDE`."""
    from PIL import Image, ImageOps

    warnings: list[str] = []
    frames = getattr(im, "n_frames", 1) or 1
    with im:
        if frames > 1:
            msg = f"{src} has {frames} frames (an animation or a multi-page file); only the first frame is used as the portrait"
            if allow_video:
                msg += ". To lip-sync every frame, convert it to a video (e.g. MP4) first"
            log.warning("%s", msg)
            warnings.append(msg)
        im = ImageOps.exif_transpose(im)
        try:
            im = flatten(im)
        except ValueError:  # a mode Pillow cannot convert (e.g. LAB): let ffmpeg decode it
            im = flatten(decode_with_ffmpeg(src, ff, dst_stem.with_name(dst_stem.name + ".ffmpeg.png")))
        w, h = im.size
        _check_geometry(src, w, h)
        downscaled = None
        if max(w, h) > MAX_IMAGE_SIDE:
            scale = MAX_IMAGE_SIDE / max(w, h)
            new = (max(2, round(w * scale)), max(2, round(h * scale)))
            msg = f"{src} is {w}x{h}; downscaling it to {new[0]}x{new[1]} for the engine"
            log.warning("%s", msg)
            warnings.append(msg)
            im = im.resize(new, Image.Resampling.LANCZOS)
            downscaled = (w, h)
            w, h = new
        dst = dst_stem.with_suffix(".png")
        im.save(dst, format="PNG", compress_level=1)  # a temp file: speed over size
    return dst, FaceInput(is_video=False, width=w, height=h, downscaled_from=downscaled, frames=frames, warnings=warnings)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def stage_video(src: Path, dst: Path, ff: FFmpeg) -> MediaInfo:
    """Stage a reference video (SadTalker's --ref-pose / --ref-eyeblink)."""
    _check_readable(src, "video")
    info = parse_probe(probe_text(ff, src), str(src))
    if info.video is None or info.duration is None:
        raise InputError("is not a video that can be decoded", subject=src)
    proc = ff.run(["-y", "-i", str(src), "-map", "0:v:0", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12", "-preset", "veryfast", str(dst)], what="staging a video", timeout=600)
    if proc.returncode != 0:
        dst.unlink(missing_ok=True)
        raise InputError(f"cannot be decoded as a video ({read_error(proc.stderr.decode('utf-8', 'replace'))})", subject=src)
    return info


def first_frame(src: Path, ff: FFmpeg, dst: Path) -> Path:
    proc = ff.run(["-y", "-i", str(src), "-map", "0:v:0", "-frames:v", "1", str(dst)], what="reading the first frame", timeout=120)
    if proc.returncode != 0 or not dst.exists():
        raise InputError(f"cannot read its first frame ({read_error(proc.stderr.decode('utf-8', 'replace'))})", subject=src)
    return dst

