"""Long audio in chunks: where to cut, and the resumable state of a chunked run.

Upstream engines drift and run out of memory on long audio, so a long track
is rendered in pieces of about ``--chunk-seconds``, cut at the quietest
moment near each target boundary (never mid-word) and on a frame boundary,
so the joined clips have exactly the audio's frame count.

The chunks of a run live in ``<cache>/v1/chunks/<key>/``, where the key
hashes everything that defines the result.  A rerun after a crash finds the
finished chunks there (with the seed they were rendered with) and renders
only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Energy is measured in windows of this length (seconds).
FRAME_SECONDS = 0.01
#: ...and smoothed over this span, so a single quiet window inside a word loses to a real pause.
SMOOTH_SECONDS = 0.12


@dataclass(frozen=True)
class Chunk:
    index: int
    start: float  # seconds, a multiple of 1/fps
    end: float
    frames: int

    @property
    def duration(self) -> float:
        return self.end - self.start

    def label(self, total: int) -> str:
        return f"chunk {self.index + 1}/{total} ({self.start:.2f}–{self.end:.2f} s)"


def read_wav(path: Path):
    """Mono 16-bit PCM samples as float32 in [-1, 1], and the sample rate."""
    import numpy as np

    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data.astype("float32") / 32768.0, rate


def smoothed_energy(samples, rate: int):
    """RMS per 10 ms window, averaged over ~120 ms."""
    import numpy as np

    hop = max(1, int(rate * FRAME_SECONDS))
    n = len(samples) // hop
    if n == 0:
        return np.zeros(0, dtype="float32")
    frames = samples[: n * hop].reshape(n, hop)
    rms = np.sqrt((frames.astype("float64") ** 2).mean(axis=1))
    k = max(1, int(SMOOTH_SECONDS / FRAME_SECONDS))
    return np.convolve(rms, np.ones(k) / k, mode="same")


def plan_chunks(samples, rate: int, fps: float, chunk_seconds: float, *, search_seconds: float | None = None) -> list[Chunk]:
    """Cut points near every *chunk_seconds*, at the quietest moment within
    ±*search_seconds* (default: a quarter chunk, at most 5 s), snapped to a
    frame boundary.  Audio shorter than 1.25 chunks stays whole."""
    import numpy as np

    total = len(samples) / rate
    total_frames = max(1, round(total * fps))
    if chunk_seconds <= 0 or total < chunk_seconds * 1.25:
        return [Chunk(0, 0.0, total_frames / fps, total_frames)]
    search = search_seconds if search_seconds is not None else min(5.0, chunk_seconds / 4)
    energy = smoothed_energy(samples, rate)
    cuts = [0]
    while True:
        prev = cuts[-1] / fps
        target = prev + chunk_seconds
        if total - prev < chunk_seconds * 1.25:
            break
        lo = max(prev + chunk_seconds / 2, target - search)
        hi = min(total - chunk_seconds / 4, target + search)
        i0, i1 = int(lo / FRAME_SECONDS), int(hi / FRAME_SECONDS)
        window = energy[i0:i1]
        if len(window) == 0:
            best = target
        else:
            # the quietest point; among equally quiet ones, the one nearest the target
            quiet = window.min()
            candidates = np.flatnonzero(window <= quiet * 1.05 + 1e-7)
            pick = candidates[np.argmin(np.abs((i0 + candidates) * FRAME_SECONDS + FRAME_SECONDS / 2 - target))]
            best = (i0 + pick) * FRAME_SECONDS + FRAME_SECONDS / 2
        frame = round(best * fps)
        if frame <= cuts[-1] or frame >= total_frames:
            break
        cuts.append(frame)
    cuts.append(total_frames)
    return [Chunk(i, a / fps, b / fps, b - a) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]


def write_wav_slice(samples_i16_path: Path, chunk: Chunk, dst: Path) -> None:
    """Write the chunk's samples of a 16-bit PCM WAV as a new WAV (exact, no re-decoding)."""
    with wave.open(str(samples_i16_path), "rb") as src:
        rate, width, channels = src.getframerate(), src.getsampwidth(), src.getnchannels()
        start = round(chunk.start * rate)
        end = min(src.getnframes(), round(chunk.end * rate))
        src.setpos(min(start, src.getnframes()))
        data = src.readframes(max(0, end - start))
    with wave.open(str(dst), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)


def run_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ChunkState:
    """Finished chunks of one chunked run, kept across crashes."""

    def __init__(self, root: Path, key: str, plan: list[Chunk], seed: int):
        self.dir = root / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.plan = plan
        meta = self.dir / "state.json"
        saved = None
        try:
            saved = json.loads(meta.read_text())
        except (OSError, ValueError):
            pass
        if saved and saved.get("plan") == [asdict(c) for c in plan]:
            self.seed = int(saved["seed"])
        else:
            for stale in self.dir.glob("chunk_*"):
                stale.unlink()
            self.seed = seed
            from .resources.cache import atomic_write_text

            atomic_write_text(meta, json.dumps({"seed": seed, "plan": [asdict(c) for c in plan]}))

    def clip(self, chunk: Chunk) -> Path:
        return self.dir / f"chunk_{chunk.index:03d}.mp4"

    def done(self, chunk: Chunk) -> bool:
        marker = self.dir / f"chunk_{chunk.index:03d}.done"
        return marker.is_file() and self.clip(chunk).is_file()

    def mark_done(self, chunk: Chunk) -> None:
        (self.dir / f"chunk_{chunk.index:03d}.done").write_text(json.dumps(asdict(chunk)))
