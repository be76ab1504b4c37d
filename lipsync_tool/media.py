"""ffmpeg, media probing, input staging and the upscale pass.

ffmpeg-python is used only here.  Probing works without ffprobe (the
imageio-ffmpeg wheel ships none): ``ffmpeg -i`` describes the streams, and a
stream-copy pass to the null muxer counts packets and measures durations.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import UpscaleOptions
from .errors import DependencyError, FFmpegError, InputError

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


# -- ffmpeg ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FFmpeg:
    path: str
    version: str
    source: str  # "LIPSYNC_TOOL_FFMPEG", "PATH" or "imageio-ffmpeg"

    def run(self, args: list[str], *, what: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        argv = [self.path, "-hide_banner", "-nostdin", *args]
        log.debug("ffmpeg: %s", argv)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise FFmpegError(f"{what} timed out after {timeout:.0f} s", argv=argv) from None
        return proc

    def engine_env(self, bin_dir: Path, *, copy_video_to: str | None = None) -> dict[str, str]:
        """Environment so that a child's bare ``ffmpeg`` is this one.

        Upstream scripts call ``ffmpeg`` by name (and imageio by its env var),
        so a directory holding an ``ffmpeg`` goes first on PATH.  With
        *copy_video_to*, that ``ffmpeg`` turns upstream's final mux into that
        file into a video stream copy: the tool encodes once, at the end, so
        upstream's own re-encode would only cost time and a generation of
        quality.
        """
        bin_dir.mkdir(parents=True, exist_ok=True)
        link = bin_dir / "ffmpeg"
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "IMAGEIO_FFMPEG_EXE": self.path}
        if link.exists() or link.is_symlink():
            link.unlink()
        python = sys.executable
        if copy_video_to and " " not in python and len(python) < 200:
            link.write_text(f"#!{python} -IS\n" + _FFMPEG_SHIM.format(real=self.path))
            link.chmod(0o755)
            env["LIPSYNC_TOOL_FFMPEG_COPY_VIDEO_TO"] = copy_video_to
        else:
            os.symlink(self.path, link)
        return env


#: The ``ffmpeg`` an engine sees when its final mux should copy the video.
_FFMPEG_SHIM = """import os, sys
real = {real!r}
target = os.environ.get("LIPSYNC_TOOL_FFMPEG_COPY_VIDEO_TO")
args = sys.argv[1:]
if target and args and args[-1] == target and not any(a in ("-c:v", "-vcodec", "-codec:v") for a in args):
    out = args.pop()
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("-q:v", "-qscale:v"):
            skip = True
        else:
            kept.append(a)
    args = kept + ["-c:v", "copy", out]
os.execv(real, [real] + args)
"""


@functools.lru_cache(maxsize=8)
def _ffmpeg_version(path: str) -> str:
    try:
        out = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DependencyError(f"cannot run {path}: {exc}", subject="ffmpeg") from None
    first = out.stdout.decode("utf-8", "replace").splitlines()[:1]
    if out.returncode != 0 or not first:
        raise DependencyError(f"{path} -version failed (exit {out.returncode})", subject="ffmpeg")
    m = re.match(r"ffmpeg version (\S+)", first[0])
    return m.group(1) if m else first[0]


def find_ffmpeg(override: str | None = None) -> FFmpeg:
    """``LIPSYNC_TOOL_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's binary."""
    if override:
        path = shutil.which(override) or override
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise DependencyError(
                f"LIPSYNC_TOOL_FFMPEG points at {override}, which is not an executable file",
                subject="ffmpeg",
                hint="Unset LIPSYNC_TOOL_FFMPEG or point it at an ffmpeg binary.",
            )
        return FFmpeg(path, _ffmpeg_version(path), "LIPSYNC_TOOL_FFMPEG")
    on_path = shutil.which("ffmpeg")
    if on_path:
        return FFmpeg(on_path, _ffmpeg_version(on_path), "PATH")
    try:
        import imageio_ffmpeg

        path = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # the wheel has no binary for this platform
        raise DependencyError(
            f"no ffmpeg found: none on PATH and imageio-ffmpeg has none ({exc})",
            subject="ffmpeg",
            hint="Install ffmpeg (e.g. apt-get install ffmpeg) or set LIPSYNC_TOOL_FFMPEG.",
        ) from None
    return FFmpeg(path, _ffmpeg_version(path), "imageio-ffmpeg")


# -- probing --------------------------------------------------------------------------------


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


def _probe_text(ff: FFmpeg, path: Path) -> str:
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
    info = parse_probe(_probe_text(ff, path), str(path))
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


def _open_image(src: Path):
    """*src* opened and loaded by Pillow, or None when Pillow does not know its format."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(src)
        im.load()
        return im
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise InputError(f"is too large to decode safely ({exc})", subject=src, hint="Downscale it first.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot be decoded as an image ({exc})", subject=src, hint="Re-save it as PNG or JPEG.") from None


def _decode_with_ffmpeg(src: Path, ff: FFmpeg, tmp: Path):
    """The first frame of an image Pillow cannot read, decoded by ffmpeg into 8-bit RGBA.

    ffmpeg converts any bit depth and pixel format (16-bit gray with alpha,
    float, planar) correctly; *tmp* is a scratch PNG, removed afterwards.
    """
    from PIL import Image

    proc = ff.run(
        ["-y", "-i", str(src), "-map", "0:v:0", "-frames:v", "1", "-pix_fmt", "rgba", "-c:v", "png", "-f", "image2", str(tmp)],
        what=f"decoding {src}",
        timeout=120,
    )
    try:
        if proc.returncode != 0 or not tmp.exists():
            raise InputError(
                f"is not an image that can be decoded (ffmpeg: {read_error(proc.stderr.decode('utf-8', 'replace'))})",
                subject=src,
                hint="Give a PNG, JPEG, WebP, BMP or TIFF portrait.",
            )
        with Image.open(tmp) as im:
            im.load()
            return im.copy()
    finally:
        tmp.unlink(missing_ok=True)


def _check_geometry(src: Path, w: int, h: int) -> None:
    if min(w, h) < MIN_IMAGE_SIDE:
        raise InputError(f"is {w}x{h}; each side must be at least {MIN_IMAGE_SIDE} px", subject=src, hint="Use a larger portrait.")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise InputError(f"is {w}x{h}, an aspect ratio over {MAX_ASPECT:g}:1", subject=src, hint="Crop it around the face.")


def stage_face(src: Path, dst_stem: Path, ff: FFmpeg, *, allow_video: bool) -> tuple[Path, FaceInput]:
    """Validate the face input and stage it beside *dst_stem*.

    An image is decoded with Pillow (EXIF orientation applied, any bit depth
    or mode converted to 8-bit RGB, transparency on white, huge images
    downscaled) and re-encoded as ``<stem>.png``; an image Pillow cannot read
    is decoded by ffmpeg.  A video (engines that take one) is copied as
    ``<stem>.<ext>`` with a lower-case extension.
    """
    from PIL import Image, ImageOps

    _check_readable(src, "image")
    im = _open_image(src)
    if im is None:
        info = parse_probe(_probe_text(ff, src), str(src))
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
            if not allow_video:
                raise InputError("is a video; this engine animates a still image", subject=src, hint="Give an image, or use --engine wav2lip for a face video.")
            _check_geometry(src, info.video.width, info.video.height)
            ext = src.suffix.lower().lstrip(".")
            if not re.fullmatch(r"[a-z0-9]{1,5}", ext) or ext in ("jpg", "jpeg", "png"):
                ext = "mp4"  # upstream tells images from videos by this extension
            dst = dst_stem.with_suffix("." + ext)
            _link_or_copy(src, dst)
            return dst, FaceInput(is_video=True, width=info.video.width, height=info.video.height, info=info)
        # A still image in a format (or pixel format) Pillow does not read.
        im = _decode_with_ffmpeg(src, ff, dst_stem.with_name(dst_stem.name + ".ffmpeg.png"))
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
            im = _flatten(im)
        except ValueError:  # a mode Pillow cannot convert (e.g. LAB): let ffmpeg decode it
            im = _flatten(_decode_with_ffmpeg(src, ff, dst_stem.with_name(dst_stem.name + ".ffmpeg.png")))
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


#: Pillow modes of one high-precision channel: 16-bit, 32-bit integer, 32-bit float.
_DEEP_GRAY = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS")


def _deep_gray_to_l(im):
    """An 8-bit "L" image of a 16-bit, 32-bit integer or float grayscale one.

    Pillow's own ``convert`` clips these values to 0..255 (a 16-bit image
    turns almost white), so the samples are rescaled from their real range:
    16 bits (a 16-bit mode, or "I" read from a PNG, which only has 16-bit
    gray) map 0..65535 to 0..255; floats in 0..1 map to 0..255; otherwise the
    values are taken as 8-bit when they fit, as 16-bit when they fit that, and
    stretched from their minimum to their maximum beyond.
    """
    import numpy as np
    from PIL import Image

    try:
        a = np.asarray(im)
    except (TypeError, ValueError):  # a raw mode numpy has no type for
        a = np.asarray(im.convert("I"))
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        lo, scale = 0.0, 255 / 65535
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        lo, scale = 0.0, 255.0
    elif lo >= 0 and hi <= 255:
        lo, scale = 0.0, 1.0
    elif lo >= 0 and hi <= 65535:
        lo, scale = 0.0, 255 / 65535
    else:
        scale = 255 / (hi - lo) if hi > lo else 1.0
    out = np.clip(np.rint((a - lo) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _flatten(im):
    """8-bit RGB of an image of any Pillow mode: deep gray rescaled (not
    clipped), palettes expanded, CMYK/YCbCr converted, and any transparency
    composited on white.  Raises ValueError for a mode Pillow cannot convert."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in _DEEP_GRAY:
        return _deep_gray_to_l(im).convert("RGB")
    if "A" in im.getbands() or "a" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def stage_video(src: Path, dst: Path, ff: FFmpeg) -> MediaInfo:
    """Stage a reference video (SadTalker's --ref-pose / --ref-eyeblink)."""
    _check_readable(src, "video")
    info = parse_probe(_probe_text(ff, src), str(src))
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


# -- face pre-check -----------------------------------------------------------------------


#: Detections scoring below this do not count as a second face for the
#: several-faces warning (they still pass the pre-check).
FACE_NOTICE_MIN_SCORE = 0.3


@dataclass(frozen=True)
class FaceBox:
    """A face the pre-check found, in pixels of the image it looked at."""

    x: int
    y: int
    width: int
    height: int
    score: float = 0.0

    @property
    def area(self) -> int:
        return self.width * self.height

    def scaled(self, factor: float) -> FaceBox:
        return FaceBox(round(self.x * factor), round(self.y * factor), round(self.width * factor), round(self.height * factor), self.score)


def find_faces(image: Path) -> list[FaceBox]:
    """Frontal faces dlib's HOG detector finds (its model is built into dlib),
    most confident first, in pixels of *image* (upright, EXIF applied).

    Any bit depth or mode is read as :func:`stage_face` reads it (a 16-bit
    grayscale image is rescaled, not clipped).
    """
    import dlib
    import numpy as np
    from PIL import ImageOps

    im = _open_image(image)
    if im is None:
        raise InputError("is not an image that can be decoded", subject=image)
    with im:
        gray = _flatten(ImageOps.exif_transpose(im)).convert("L")
    w, h = gray.size
    scale = 1.0
    if max(w, h) > 800:
        scale = 800 / max(w, h)
        gray = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))))
    arr = np.asarray(gray)
    detector = dlib.get_frontal_face_detector()
    # Most portraits have a face well above the detector's 80 px minimum: try
    # without upsampling first (about 15x faster), then look for small faces.
    rects, scores, _ = detector.run(arr, 0, 0)
    if len(rects) == 0 and max(arr.shape) < 1000:
        rects, scores, _ = detector.run(arr, 1, 0)
    boxes = []
    for r, score in sorted(zip(rects, scores), key=lambda rs: -rs[1]):
        x0, y0 = max(0, r.left()) / scale, max(0, r.top()) / scale
        x1, y1 = min(arr.shape[1], r.right() + 1) / scale, min(arr.shape[0], r.bottom() + 1) / scale
        boxes.append(FaceBox(round(x0), round(y0), round(x1 - x0), round(y1 - y0), float(score)))
    return boxes


def count_faces(image: Path) -> int:
    """How many faces :func:`find_faces` finds."""
    return len(find_faces(image))


def several_faces_message(src: Path, boxes: list[FaceBox], *, scale: float = 1.0, first_frame: bool = False) -> str | None:
    """A warning for an input with more than one face, naming the largest; else None.

    Neither engine lets one choose: SadTalker's cropper and Wav2Lip's
    ``face_detect`` take their own detector's first, most confident,
    detection, which is usually the largest face but not always.  *scale*
    maps the boxes to the user's image (when the staged copy was downscaled).
    """
    # dlib's weakest detections (scores near 0) are often a fold of cloth or
    # a hand; a second face worth a warning scores well above that.
    boxes = [b for b in boxes if b.score >= FACE_NOTICE_MIN_SCORE]
    if len(boxes) < 2:
        return None
    big = max(boxes, key=lambda b: b.area).scaled(scale)
    where = f"the first frame of {src}" if first_frame else str(src)
    return (
        f"{len(boxes)} faces found in {where}; the engine lip-syncs only one of them, the one its own detector is most "
        f"confident of (usually the largest or clearest; here likely the {big.width}x{big.height} px face at x={big.x}, y={big.y}). "
        "Crop the input to one face to choose."
    )


# -- upscale ------------------------------------------------------------------------------


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
    if opts.enabled:
        if opts.canvas:
            cw, ch = opts.canvas
            if opts.fit == "pad":
                v = v.filter("scale", cw, ch, force_original_aspect_ratio="decrease", force_divisible_by=2, flags="bicubic")
                v = v.filter("pad", cw, ch, "(ow-iw)/2", "(oh-ih)/2", color="black")
            else:
                v = v.filter("scale", cw, ch, force_original_aspect_ratio="increase", force_divisible_by=2, flags="bicubic")
                v = v.filter("crop", cw, ch)
        else:
            v = v.filter("scale", -2, opts.target_height, flags="bicubic")
    else:
        v = v.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2")
    v = v.filter("setsar", 1)
    streams = [v]
    kwargs: dict[str, Any] = {
        "vcodec": "libx264",
        "pix_fmt": "yuv420p",
        "crf": opts.crf,
        "preset": opts.x264_preset,
        "t": f"{duration:.6f}",
    }
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


def upscale_argv(ff_path: str, raw: Path, audio: AudioSource | None, out: Path, opts: UpscaleOptions, duration: float, **kw: Any) -> list[str]:
    # Global options go first: ffmpeg may ignore options after the last output.
    return [ff_path, "-hide_banner", "-nostdin", "-y", *upscale_graph(raw, audio, out, opts, duration, **kw).get_args()]


def hls_argv(
    ff_path: str, clip: Path, audio: AudioSource | None, playlist: Path, opts: UpscaleOptions, duration: float, *, segment_seconds: float, ts_offset: float
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
    return upscale_argv(ff_path, clip, audio, playlist, opts, duration, fmt="hls", extra_output=extra)


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
    from .process import forget, kill_group, spawn

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
