"""The ffmpeg binary: finding it, its version, running it, and the ``ffmpeg``
an engine's child process finds by name."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DependencyError, FFmpegError

log = logging.getLogger(__name__)


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

    def has_encoder(self, name: str) -> bool:
        """Whether this ffmpeg was built with encoder *name* (e.g. ``h264_nvenc``)."""
        return name in _encoders(self.path)

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


@functools.lru_cache(maxsize=8)
def _encoders(path: str) -> frozenset[str]:
    try:
        proc = subprocess.run([path, "-hide_banner", "-encoders"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    names = re.findall(r"^\s*[VAS][A-Z.]{5}\s+(\S+)", proc.stdout.decode("utf-8", "replace"), re.MULTILINE)
    return frozenset(names)


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
    except Exception as exc:  # noqa: BLE001 - the wheel has no binary for this platform (or is missing)
        raise DependencyError(
            f"no ffmpeg found: none on PATH and imageio-ffmpeg has none ({exc})",
            subject="ffmpeg",
            hint="Install ffmpeg (e.g. apt-get install ffmpeg) or set LIPSYNC_TOOL_FFMPEG.",
        ) from None
    return FFmpeg(path, _ffmpeg_version(path), "imageio-ffmpeg")
