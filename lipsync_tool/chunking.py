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
import shutil
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .report import RunReport

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

    def to_dict(self) -> dict:
        """As the run report lists it (and as the chunks' cache key hashes it)."""
        return {"index": self.index, "start": round(self.start, 4), "end": round(self.end, 4), "frames": self.frames}


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


class ChunkedRender:
    """One chunked run's rendering: the chunks a crashed run finished are
    reused, the others rendered one by one and normalised to their exact
    frame count.

    Runs with the same key share the chunks in the cache, so a lock makes them
    take turns, from :meth:`open` to :meth:`close` (or :meth:`release` after a
    failure, which leaves the finished chunks for a rerun).
    """

    def __init__(self, cache_dir: Path, key_parts: dict, plan: list[Chunk], seed: int):
        from filelock import FileLock

        from .resources.cache import Cache

        self.cache = Cache(cache_dir)
        self.key = run_key(key_parts)
        self.plan = plan
        self.requested_seed = seed
        self.lock = FileLock(str(self.cache.lock_path("chunks", self.key)), thread_local=False)
        self.state: ChunkState | None = None

    def open(self, on_wait: Callable[[str], None]) -> int:
        """Take the lock (waiting for another run with the same chunks) and
        read their state; returns the seed to render with (a resumed run's)."""
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            log.warning("another run is rendering the same chunks; waiting for it")
            on_wait("the same chunks")
            self.lock.acquire()
        self.state = ChunkState(self.cache.base / "chunks", self.key, self.plan, self.requested_seed)
        if self.state.seed != self.requested_seed:
            log.info("resuming a chunked run: using its seed %d", self.state.seed)
        return self.state.seed

    def render(
        self,
        audio_wav: Path,
        render_one: Callable[[Path, float, str], Path],
        normalise: Callable[[Path, Path, Chunk, str], None],
        on_chunk: Callable[[Chunk, Path, str], None] | None = None,
    ) -> list[int]:
        """Render each chunk of *audio_wav* not done yet: ``render_one(wav,
        seconds, label)`` returns the engine's clip, ``normalise(raw, clip,
        chunk, label)`` writes the chunk's clip; *on_chunk* sees every chunk's
        clip as soon as it is ready.  Returns the indexes of the reused chunks."""
        state = self.state
        assert state is not None, "open() first"
        total = len(self.plan)
        reused = []
        for chunk in self.plan:
            label = chunk.label(total)
            if state.done(chunk):
                reused.append(chunk.index)
                log.info("%s: reusing the clip a previous run rendered", label)
            else:
                wav = audio_wav.with_name(f"audio_chunk_{chunk.index:03d}.wav")
                write_wav_slice(audio_wav, chunk, wav)
                raw = render_one(wav, chunk.duration, label)
                normalise(raw, state.clip(chunk), chunk, label)
                raw.unlink(missing_ok=True)
                state.mark_done(chunk)
            if on_chunk is not None:
                on_chunk(chunk, state.clip(chunk), label)
        return reused

    @property
    def clips(self) -> list[Path]:
        assert self.state is not None
        return [self.state.clip(c) for c in self.plan]

    def release(self) -> None:
        """Let other runs at the chunks (the finished ones stay for a rerun)."""
        if self.lock.is_locked:
            self.lock.release()

    def close(self, keep_copy: Callable[[Path], None] | None = None) -> None:
        """The run is done: hand the chunks to *keep_copy* (--keep-temp), delete them, release the lock."""
        if self.state is not None:
            if keep_copy is not None:
                keep_copy(self.state.dir)
            shutil.rmtree(self.state.dir, ignore_errors=True)
        self.release()


def chunk_plan(engine, engine_options, chunk_seconds: float | None, audio_wav: Path, fps: float, *, face_is_video: bool) -> list[Chunk] | None:
    """The chunks to render the staged audio in (None: it renders whole)."""
    seconds = chunk_seconds if chunk_seconds is not None else engine.default_chunk_seconds
    if not seconds:
        return None
    moving = ["the face video"] if face_is_video else []
    moving += [f"--{n.replace('_', '-')}" for n in engine.staged_refs(engine_options)]
    if moving:
        # Every chunk would start the video again from its first frame.
        if chunk_seconds:
            raise UsageError(f"chunks cannot be used with {' and '.join(moving)}: each chunk would restart it", subject="--chunk-seconds", hint="Drop --chunk-seconds (or set it to 0).")
        log.info("not rendering in chunks: %s would restart in every chunk", " and ".join(moving))
        return None
    samples, rate = read_wav(audio_wav)
    plan = plan_chunks(samples, rate, fps, seconds)
    return plan if len(plan) > 1 else None


def chunk_key(report: RunReport, prepared, *, fps: float, seed: int | None) -> dict[str, Any]:
    """Everything that defines a chunked run's clips (runs that agree share them)."""
    return {
        "engine": report.engine.name,
        "commit": prepared.commit,
        "checkpoints": sorted(f.sha256 for f in prepared.files),
        "options": report.engine_options_resolved,
        "fps": fps,
        "image": report.inputs.image_sha256,
        "audio": report.inputs.audio_sha256,
        "seed": seed,
        "plan": report.chunks,
    }
