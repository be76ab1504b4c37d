"""Progressive HLS output: an m3u8 playlist whose segments appear chunk by chunk.

Each rendered chunk is upscaled straight into MPEG-TS segments that ffmpeg's
HLS muxer appends to the playlist (segments are written to temp files and
renamed, so a player never sees half a segment).  ``#EXT-X-ENDLIST`` is added
only when the whole run succeeded; a failed run leaves a playlist without it,
and a comment saying why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from .config import UpscaleOptions
from .media import AudioSource, FFmpeg, encode_aac_argv, hls_argv, run_ffmpeg_job, slice_adts
from .resources.cache import atomic_write_text
from .targets import Target, check_targets, temp_path_beside

log = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"


SEGMENTS = "segment_*.ts"


def hls_target(directory: Path, label: str = "--hls") -> Target:
    """The HLS folder as a write target: the playlist and segments it gets."""
    return Target(directory, label, kind="dir", contents=(PLAYLIST, SEGMENTS))


def check_hls_dir(directory: Path, *, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    check_targets([hls_target(directory)], inputs, overwrite=overwrite)


class HlsPlaylist:
    """The playlist and segments in the --hls folder (the run's writer is
    :class:`lipsync_tool.outputs.HlsOutput`)."""

    def __init__(self, ff: FFmpeg, directory: Path, segment_seconds: float, *, overwrite: bool):
        check_hls_dir(directory, overwrite=overwrite)
        self.ff = ff
        self.dir = directory
        self.segment_seconds = segment_seconds
        self.dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for old in [*self.dir.glob(SEGMENTS), self.dir / PLAYLIST]:
                old.unlink(missing_ok=True)
        self.playlist = self.dir / PLAYLIST
        self.commands: list[list[str]] = []
        self.published_seconds = 0.0

    def segments(self) -> int:
        if not self.playlist.exists():
            return 0
        return sum(1 for ln in self.playlist.read_text().splitlines() if ln and not ln.startswith("#"))

    def prepare_audio(self, original: Path, bitrate: str) -> None:
        """Encode the whole audio once; each piece then copies its own frames,
        so the audio runs on across pieces without priming gaps or overlaps."""
        # Process-unique names beside the folder, so no file of the user's is ever replaced.
        self.aac = temp_path_beside(self.dir, ".audio.aac")
        self._piece = temp_path_beside(self.dir, ".piece.aac")
        run_ffmpeg_job(encode_aac_argv(self.ff.path, original, self.aac, bitrate), what="encoding the audio for HLS")
        self._aac_bytes = self.aac.read_bytes()

    def piece_audio(self, start: float, end: float | None) -> AudioSource:
        """The pre-encoded frames of ``start … end`` as a copyable source."""
        data, first = slice_adts(self._aac_bytes, start, end)
        self._piece.write_bytes(data)
        return AudioSource(self._piece, copy_offset=first - start)

    def cleanup_audio(self) -> None:
        for p in (getattr(self, "aac", None), getattr(self, "_piece", None)):
            if p is not None:
                Path(p).unlink(missing_ok=True)

    def publish(self, clip: Path, audio: AudioSource | None, opts: UpscaleOptions, duration: float, *, start: float, on_progress: Callable[[float], None] | None = None) -> None:
        """Upscale *clip* (covering ``start … start+duration`` of the audio) and append its segments."""
        argv = hls_argv(self.ff.path, clip, audio, self.playlist, opts, duration, segment_seconds=self.segment_seconds, ts_offset=start)
        self.commands.append(argv)
        run_ffmpeg_job(argv, what=f"HLS segments for {start:.2f}–{start + duration:.2f} s", total_seconds=duration, on_progress=on_progress)
        self.published_seconds = start + duration
        log.info("published %s up to %.2f s", self.playlist, self.published_seconds)

    def end(self) -> None:
        self.cleanup_audio()
        text = self.playlist.read_text()
        if "#EXT-X-ENDLIST" not in text:
            atomic_write_text(self.playlist, text.rstrip("\n") + "\n#EXT-X-ENDLIST\n")

    def fail(self, message: str) -> None:
        """Leave the playlist without ENDLIST, saying why (a comment players ignore)."""
        self.cleanup_audio()
        for partial in self.dir.glob("segment_*.ts.tmp"):  # a streamed encode that was stopped
            partial.unlink(missing_ok=True)
        text = self.playlist.read_text() if self.playlist.exists() else "#EXTM3U\n#EXT-X-VERSION:3\n"
        one_line = re.sub(r"\s+", " ", message).strip()[:300]
        atomic_write_text(self.playlist, text.rstrip("\n") + f"\n# lipsync-tool: FAILED after {self.published_seconds:.2f} s: {one_line}\n")


def playlist_durations(playlist: Path) -> list[float]:
    """The EXTINF durations of a playlist (for tests and reports)."""
    return [float(m.group(1)) for m in re.finditer(r"#EXTINF:([\d.]+)", playlist.read_text())]
