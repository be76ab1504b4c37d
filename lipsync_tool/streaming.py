"""A run's engine jobs in a warm worker: the preprocessing cache, the GPU
options, and the frames streamed into the outputs' encoders.

:class:`~lipsync_tool.run.Run` calls :func:`worker_job` for each engine job
when its runner is a warm worker.  A whole (unchunked) clip streams into every
output's encoder at once (:class:`OutputsSink`), so the upscale and HLS
segments happen while the frames are made; a chunk of a long run is encoded
losslessly and joins the chunk pipeline as a subprocess's clip would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engines.base import Command, Job
    from .media.stream import VideoFormat
    from .outputs import Output, PublishContext
    from .resources.preprocess import PreprocessSlot

log = logging.getLogger(__name__)


class OutputsSink:
    """Tees a worker's frames into one encoder per output (the file, HLS)."""

    def __init__(self, outputs: list[Output], ctx: PublishContext, duration: float, *, raw_copy: Path | None = None):
        self.outputs, self.ctx, self.duration = outputs, ctx, duration
        self.encoders: list[Any] = []
        self.frames = 0
        self._total = 0
        #: --keep-temp: the engine's frames, also kept losslessly for debugging.
        self.raw_copy = raw_copy

    def open(self, video: VideoFormat) -> None:
        from .media.stream import FileSink

        self._total = max(1, round(self.duration * video.fps))
        for out in self.outputs:
            self.encoders.append(out.stream(self.ctx, video, self.duration))
        if self.raw_copy is not None:
            self.raw_copy.parent.mkdir(parents=True, exist_ok=True)
            copy = FileSink(self.ctx.ff.path, self.raw_copy)
            copy.open(video)
            self.encoders.append(copy)

    def write(self, data: bytes, frames: int) -> None:
        for enc in self.encoders:
            enc.write(data, frames)
        self.frames += frames
        self.ctx.observer.progress("engine", min(1.0, self.frames / self._total))

    def close(self) -> None:
        errors = []
        # What the encoders still had to do after the last frame (the rest overlapped the engine).
        self.ctx.observer.stage("upscale")
        with self.ctx.timer("upscale"):
            for enc in self.encoders:
                try:
                    enc.close()
                except Exception as exc:  # noqa: BLE001 - every encoder is closed; the first error is raised
                    errors.append(exc)
        if errors:
            self.abort()
            raise errors[0]

    def abort(self) -> None:
        for enc in self.encoders:
            enc.abort()


def stream_whole(run) -> None:
    """Render the whole clip with its frames streamed into every output's encoder."""
    from .outputs import Rendered

    ws = run.ws
    raw_copy = ws.results / "worker.mp4" if run.opts.keep_temp else None
    sink = OutputsSink(run.outputs, run.ctx, run.audio_check.duration, raw_copy=raw_copy)
    run._render_one(ws.inputs / "audio.wav", run.audio_check.duration, label=None, sink=sink)
    if raw_copy is not None:
        run.run_report.engine.raw_output = str(raw_copy)
    run.rendered = Rendered([], run.audio_check.duration, streamed=True)


def runner_kind(runner, engine) -> str:
    """"worker" or "subprocess" (a duck-typed runner without ``kind_for`` is the latter)."""
    kind_for = getattr(runner, "kind_for", None)
    return kind_for(engine) if kind_for is not None else "subprocess"


def runner_streams(runner, engine) -> bool:
    streams_for = getattr(runner, "streams_for", None)
    return bool(streams_for is not None and streams_for(engine))


def preprocess_slot(run) -> PreprocessSlot | None:
    """This job's entry in the preprocessing cache (None: off, or nothing to cache)."""
    from .resources.cache import sha256_file
    from .resources.preprocess import PreprocessCache, face_key

    if not run.opts.preprocess_cache:
        return None
    options = run.engine.preprocess_key(run.p.engine_options)
    if options is None:
        return None
    if getattr(run, "_face_digest", None) is None:
        run._face_digest = sha256_file(run.face_path)
    parts = {
        "engine": run.engine.name,
        "commit": run.prepared.commit,
        "checkpoints": sorted(f.sha256 for f in run.prepared.files),
        "face": face_key(run._face_digest, getattr(run, "face_hint", None)),  # with --face-index: which face, too
        "options": options,
    }
    cache = PreprocessCache(run.p.settings.cache_dir)
    return cache.slot(run.engine.name, cache.key(parts))


def batch_size(run) -> int | str | None:
    """The batch size the worker uses: the engine option when the user set
    it, ``auto`` (from free VRAM, in the worker) on a GPU, else upstream's default."""
    name = run.engine.batch_size_option
    if name is None:
        return None
    if name in run.p.engine_options.model_fields_set:
        return getattr(run.p.engine_options, name)
    return "auto" if run.device.kind == "cuda" else None


def check_gpu_options(opts, device, runner_kind: str, engine=None, engine_options=None) -> None:
    """--fp16 needs a GPU and the warm worker, and an engine may refuse options its upstream CLI cannot
    honour under ``--runner subprocess`` (``Engine.check_runner``): refused, never ignored."""
    from . import naming
    from .errors import UsageError

    if engine is not None:
        engine.check_runner(engine_options, runner_kind)
    if opts.fp16 and device.kind != "cuda":
        raise UsageError(f"needs a CUDA GPU; this run is on {device}", subject=naming.option("fp16"), hint="Drop --fp16, or run on a GPU (--device cuda).")
    if opts.fp16 and runner_kind != "worker":
        raise UsageError("needs the warm worker (upstream's own CLI has no half precision)", subject=naming.option("fp16"), hint="Drop --runner subprocess, or drop --fp16.")


def resolve_encoder(choice: str, device, ff) -> tuple[str, str]:
    """The H.264 encoder of the published file, and why."""
    from . import naming
    from .errors import UsageError

    if choice == "h264_nvenc":
        if not ff.has_encoder("h264_nvenc"):
            raise UsageError(f"{ff.path} was built without h264_nvenc", subject=naming.option("encoder"), hint="Use --encoder libx264, or an ffmpeg built with NVENC.")
        return "h264_nvenc", "asked for"
    if choice == "libx264":
        return "libx264", "asked for"
    if device.kind != "cuda":
        return "libx264", "auto: the run is on the CPU"
    if not ff.has_encoder("h264_nvenc"):
        return "libx264", f"auto: {ff.path} has no h264_nvenc"
    return "h264_nvenc", "auto: a GPU run, and ffmpeg has NVENC"


def worker_job(run, command: Command, job: Job, env: dict[str, str], timeout: float, *, sink=None) -> Path | None:
    """Run one engine job in the run's warm worker.  With *sink* (the outputs)
    the frames stream there and None is returned; without, they become a
    lossless clip whose path is returned."""
    from .media.stream import FileSink
    from .resources.preprocess import PreprocessCache

    ws = run.ws
    slot = preprocess_slot(run)
    extra: dict[str, Any] = {
        "options": run.p.engine_options.resolved().model_dump(mode="json", exclude_none=True),
        "preprocess": slot.to_job() if slot is not None else None,
        "batch_size": batch_size(run),
        "fp16": run.opts.fp16,
    }
    clip = None
    if sink is None:
        ws.results.mkdir(parents=True, exist_ok=True)
        clip = ws.results / "worker.mp4"
        sink = FileSink(run.ff.path, clip)
    try:
        result = run.p.runner.stream(run.engine, command, job, ws, env=env, timeout=timeout, log_path=ws.log, on_line=run._engine_line, sink=sink, extra=extra)
    except BaseException:
        if slot is not None:
            PreprocessCache(run.p.settings.cache_dir).discard(slot)
        raise
    stored = PreprocessCache(run.p.settings.cache_dir).commit(slot, {"engine": run.engine.name, "face_sha256": run._face_digest}) if slot else None
    _record(run, result, slot, stored)
    return clip


def _record(run, result, slot, stored) -> None:
    engine = run.run_report.engine
    info = dict(result.info)
    engine.worker_jobs = (engine.worker_jobs or []) + [
        {**result.worker, "frames": result.frames, "video": result.video.to_dict(), "seconds": result.seconds, "fp16": run.opts.fp16, **{k: info[k] for k in ("models", "batch_size") if k in info}}
    ]
    if slot is not None:
        entry = {"key": slot.key, "hit": slot.hit, "stored": stored is not None and not slot.hit, "path": str(stored or slot.dir)}
        if "preprocess" in info:
            entry["worker"] = info["preprocess"]
        engine.preprocess = (engine.preprocess or []) + [entry]
        log.info("preprocessing cache %s: %s", "hit" if slot.hit else "miss", slot.key[:12])
