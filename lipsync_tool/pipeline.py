"""LipSyncPipeline: validate → resources → stage → engine → upscale → publish → report.

Usable from Python::

    result = LipSyncPipeline(engine="wav2lip", wav2lip_box=(90, 40, 300, 330)).run("face.png", "speech.mp3", "out.mp4")
    result.output, result.report["timings"]

The pipeline never prints: it reports to an :class:`Observer` (the CLI draws
progress from it) and raises :mod:`lipsync_tool.errors`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, naming
from .config import OUTPUT_EXTENSIONS, RunOptions, Settings
from .engines import get_engine, make_options, validation_to_usage
from .engines.base import Engine, EngineOptions, Job, Workspace
from .errors import (
    EngineError,
    EngineTimeoutError,
    FaceNotFoundError,
    FFmpegError,
    Interrupted,
    LipsyncError,
    OutputPathError,
    UsageError,
)

log = logging.getLogger(__name__)

STAGES = ("validate", "resources", "stage", "engine", "upscale", "publish")


class Observer:
    """Callbacks for progress.  Every method is optional to override."""

    def stage(self, name: str, detail: str = "") -> None: ...

    def engine_line(self, line: str) -> None: ...

    def progress(self, stage: str, fraction: float) -> None: ...

    def notice(self, title: str, text: str) -> None: ...

    def download_bar(self, label: str, total: int, initial: int):
        from .resources.download import no_progress

        return no_progress(label, total, initial)

    def waiting(self, what: str) -> None: ...


@dataclass
class RunResult:
    output: Path | None
    report: dict[str, Any]
    temp_dir: Path | None = None
    kept_files: list[str] = field(default_factory=list)
    hls: Path | None = None


def split_options(engine: Engine, values: dict[str, Any]) -> tuple[RunOptions, EngineOptions]:
    """Common options and the engine's own, each validated by its model."""
    from pydantic import ValidationError

    common = {k: v for k, v in values.items() if k in RunOptions.model_fields and v is not None}
    rest = {k: v for k, v in values.items() if k not in RunOptions.model_fields and v is not None}
    common["engine"] = engine.name
    try:
        run = RunOptions(**common)
    except ValidationError as exc:
        raise validation_to_usage(exc) from None
    return run, make_options(engine, rest)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


@dataclass(frozen=True)
class OptionInfo:
    """One keyword of :class:`LipSyncPipeline` (see :meth:`LipSyncPipeline.options`)."""

    #: The Python keyword (the CLI flag with ``-`` → ``_``, e.g. ``wav2lip_pads``).
    name: str
    #: The accepted type, as written in the model (``float``, ``Literal['pad', 'crop']``, …).
    type: str
    #: The default (None: decided at run time, see ``help``).
    default: Any
    help: str
    #: The engine that has this option, or None for an option of every engine.
    engine: str | None
    #: The CLI spelling.
    flag: str


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return text or str(annotation).replace("typing.", "").replace("pathlib.", "")


def list_options(engine: str | None = None) -> list[OptionInfo]:
    """Every keyword a pipeline takes: the common ones, then each engine's
    (only *engine*'s when given)."""
    from .constants import OPTION_HELP
    from .engines import engine_classes, flag_of

    found = [
        OptionInfo(name, _type_name(info.annotation), info.default, OPTION_HELP.get(name, ""), None, "--" + name.replace("_", "-"))
        for name, info in RunOptions.model_fields.items()
        if name != "engine"
    ]
    for ename, cls in engine_classes().items():
        if engine is not None and ename != engine:
            continue
        for name, info in cls.Options.model_fields.items():
            cli = (info.json_schema_extra or {}).get("cli") if isinstance(info.json_schema_extra, dict) else None
            if cli:
                found.append(OptionInfo(name, _type_name(info.annotation), info.default, cli.get("help") or "", ename, flag_of(name)))
    return found


def _options_doc() -> str:
    lines = ["", "Keywords (``LipSyncPipeline.options()`` returns them as :class:`OptionInfo`):", ""]
    for o in list_options():
        owner = f" [{o.engine}]" if o.engine else ""
        lines.append(f"    {o.name}: {o.type} = {o.default!r}{owner}\n        {o.help}")
    return "\n".join(lines)


class LipSyncPipeline:
    """One configured engine plus options; ``run()`` may be called many times.

    ``LipSyncPipeline(engine="wav2lip", fps=30, wav2lip_pads=(0, 20, 0, 0))``: the
    keywords are the CLI's options with ``_`` (listed below, and by
    :meth:`options`).  A bad value raises :class:`~lipsync_tool.errors.UsageError`
    naming the keyword.
    """

    @staticmethod
    def options(engine: str | None = None) -> list[OptionInfo]:
        """The keywords this class takes, typed and documented (one engine's with *engine*)."""
        return list_options(engine)

    def __init__(self, engine: str = "sadtalker", *, observer: Observer | None = None, downloader=None, resources=None, device_decision=None, **options: Any):
        self.engine: Engine = get_engine(engine)
        self.options, self.engine_options = split_options(self.engine, options)
        self.observer = observer or Observer()
        self._downloader = downloader
        self.settings = Settings.from_env(cache_dir=self.options.cache_dir, offline=self.options.offline, registry=self.options.registry)
        #: An EngineResources to share between pipelines (batch runs pass one).
        self._resources = resources
        #: A runtime.DeviceDecision to share between pipelines with the same
        #: --device and --python (resolving it probes torch in a subprocess).
        self._device = device_decision

    @property
    def device_decision(self):
        """The resolved device (None until a run has started)."""
        return self._device

    # -- resources (shared across runs: batch and compare reuse them) --------------------

    @property
    def resources(self):
        if self._resources is None:
            from .resources.download import Downloader
            from .resources.managers import resources_for

            downloader = self._downloader or Downloader(progress=self.observer.download_bar, on_wait=self.observer.waiting, offline=self.settings.offline)
            self._resources = resources_for(
                self.engine, self.settings.cache_dir, registry_file=self.settings.registry, offline=self.settings.offline, downloader=downloader, notice=self.observer.notice
            )
        return self._resources

    def prepare(self):
        """Clone and download what the options need (``setup`` and warm-up)."""
        self.observer.stage("resources")
        return self.resources.ensure(self.engine_options, self.options.resolution)

    # -- the run -------------------------------------------------------------------------

    def run(self, image: str | os.PathLike, audio: str | os.PathLike, output: str | os.PathLike | None) -> RunResult:
        """Validate, stage, render, upscale and publish one clip (OUTPUT may be
        None when the options ask for ``hls`` only)."""
        job = self.start(image, audio, output)
        job.render()
        return job.finish()

    def start(self, image: str | os.PathLike, audio: str | os.PathLike, output: str | os.PathLike | None) -> Run:
        """Validate and stage the inputs (CPU only).  Then ``render()`` and ``finish()``."""
        run = Run(self, Path(image), Path(audio), Path(output) if output is not None else None)
        run.stage()
        return run

    def _device_and_python(self):
        from .runtime import engine_python, resolve_device

        python = engine_python(self.options.python)
        if self._device is None:
            self._device = resolve_device(self.options.device, python)
            dev = self._device.device
            if dev.kind == "cpu" and self.options.device == "auto":
                log.warning("running %s on the CPU (%s); this is much slower than a GPU", self.engine.display_name, dev.reason)
            log.info("device: %s (%s)", dev, dev.reason)
        return python, self._device


class Run:
    """One clip through the pipeline, in three steps that batch runs can
    interleave: ``stage()`` (CPU), ``render()`` (the engine: GPU) and
    ``finish()`` (CPU).  Any step that fails cleans up and raises."""

    def __init__(self, pipeline: LipSyncPipeline, image: Path, audio: Path, output: Path | None):
        self.p = pipeline
        self.engine = pipeline.engine
        self.opts = pipeline.options
        self.observer = pipeline.observer
        self.image, self.audio, self.output = image, audio, output
        self.timer = _Timer()
        self.seed = self.opts.seed if self.opts.seed is not None else random.randrange(2**31)
        self.ws: Workspace | None = None
        self.reached_engine = False
        self._report_written = False
        #: Whether the files this run writes passed check_targets (nothing user-chosen is written before).
        self._targets_checked = False
        self.hls = None  # HlsOutput, with --hls
        self.clips: list[Path] | None = None  # normalised chunk clips, when chunked
        self.chunk_state = None
        self.plan: list = [None]
        self.report: dict[str, Any] = {
            "tool": {"name": "lipsync-tool", "version": __version__, "python": sys.version.split()[0]},
            "engine": {"name": self.engine.name},
            "inputs": {"image": str(image), "audio": str(audio)},
            "output": {"path": str(output) if output is not None else None},
            "options": {
                **self.opts.model_dump(mode="json"),
                "seed": self.seed,
                "engine_options": pipeline.engine_options.model_dump(mode="json", exclude_none=True),
                "engine_options_resolved": pipeline.engine_options.resolved().model_dump(mode="json", exclude_none=True),
            },
            "timings": self.timer.timings,
        }

    @contextmanager
    def _step(self):
        """Error handling shared by the steps: report, clean up, re-raise typed."""
        try:
            yield
        except KeyboardInterrupt:
            self.report["status"] = "interrupted"
            try:
                self._release_chunks()
                if self.hls is not None:
                    self.hls.fail("interrupted")
                self._write_reports()
            finally:
                self._cleanup()
            raise Interrupted("interrupted") from None
        except LipsyncError as exc:
            self._failed(exc, {"type": type(exc).__name__, "message": exc.message, "subject": exc.subject, "hint": exc.hint})
            raise
        except Exception as exc:
            self._failed(exc, {"type": type(exc).__name__, "message": str(exc)})
            raise

    def discard(self) -> None:
        """Drop a staged run that will never render (its temp dir goes, unless --keep-temp)."""
        self._cleanup()

    def _release_chunks(self) -> None:
        lock = getattr(self, "_chunk_lock", None)
        if lock is not None and lock.is_locked:
            lock.release()

    def _failed(self, exc: BaseException, info: dict) -> None:
        self._release_chunks()  # the finished chunks stay for a rerun
        self.report["status"] = "failed"
        self.report["error"] = info
        exc.report = self.report  # type: ignore[attr-defined]
        if self.hls is not None:
            self.hls.fail(str(exc))
            note = f"The HLS playlist {self.hls.playlist} stops after {self.hls.published_seconds:.2f} s and is marked as failed (no #EXT-X-ENDLIST)."
            if isinstance(exc, LipsyncError):
                exc.message += "\n" + note
            self.report["hls"]["failed"] = note
        self._write_reports()
        # A failure inside the engine or later is worth debugging from the temp dir.
        if self.ws is not None and (self.reached_engine or self.opts.keep_temp):
            exc.temp_dir = self.ws.root  # type: ignore[attr-defined]
        else:
            self._cleanup()

    # -- step 1: validate and stage ----------------------------------------------------------

    def stage(self) -> None:
        from .media import find_ffmpeg
        from .workspace import create_workspace

        with self._step():
            self.observer.stage("validate")
            with self.timer("validate"):
                self._check_paths()
                self.ff = find_ffmpeg(self.p.settings.ffmpeg)
                self.report["tool"]["ffmpeg"] = {"path": self.ff.path, "version": self.ff.version, "source": self.ff.source}
                self.ws = create_workspace()
                self._stage_inputs()
                self.engine.validate(self.p.engine_options, face_is_video=self.face.is_video)
                if not self.engine.uses_resolution and "resolution" in self.opts.model_fields_set:
                    log.warning("--resolution applies to SadTalker only; %s ignores it", self.engine.display_name)
            if self.opts.install_deps:  # before the device check, which needs the engine's torch
                from .runtime import engine_python, install_deps

                self.observer.stage("install-deps")
                with self.timer("install_deps"):
                    self.report["installed"] = install_deps(self.engine, engine_python(self.opts.python), log_path=self.ws.root / "install.log")
            with self.timer("validate"):
                self.python, decision = self.p._device_and_python()
                self.device = decision.device
                if self.device.kind == "cpu" and getattr(self.p.engine_options, "background_enhancer", None):
                    log.warning("--background-enhancer runs on a GPU only; upstream skips it on the CPU")
                from .runtime import package_versions

                self.report["device"] = {"device": str(self.device), "reason": self.device.reason, "gpus": list(decision.gpu_names)}
                self.report["engine"]["python"] = self.python
                # Only for the report: look them up while the engine runs.
                self._versions = _background(package_versions, self.python, ["torch", "torchvision", "numpy", "librosa", "opencv-python", "opencv-python-headless"])
            face = self.face
            video_fps = face.info.video.fps if face.is_video and face.info and face.info.video else None
            self.fps = video_fps if (video_fps and "fps" not in self.opts.model_fields_set) else self.opts.fps

    def _check_paths(self) -> None:
        """Every path the user gave, before any work: inputs readable, every
        file this run writes (OUTPUT, --report, --hls) safe to write."""
        from .hls import hls_target
        from .targets import Target, check_input_file, check_path_name, check_targets

        o = self.opts
        if self.output is None and o.hls is None:
            raise UsageError(f"give an {naming.option('output')} file, {naming.option('hls')} DIR, or both", subject=naming.option("output"))
        check_input_file(self.image, naming.option("image"), what="portrait")
        check_input_file(self.audio, naming.option("audio"), what="speech audio")
        refs = [Path(p).expanduser() for p in self.engine.staged_refs(self.p.engine_options).values()]
        user_files = [Path(p).expanduser() for p in self.engine.user_files(self.p.engine_options).values()]
        for path in refs:
            check_input_file(path, self._option_holding(path), what="video", expect="video")
        for path in user_files:
            check_input_file(path, self._option_holding(path), what="PyTorch checkpoint (.pth)", expect="checkpoint")
        inputs = [self.image, self.audio, *refs, *user_files]
        for field_name in ("python", "cache_dir", "registry"):
            value = getattr(o, field_name)
            if value is not None:
                check_path_name(Path(value), naming.option(field_name))
        if o.registry is not None:
            inputs.append(Path(o.registry))
        targets = []
        if self.output is not None:
            check_output_name(self.output)
            targets.append(Target(self.output, naming.option("output")))
        if o.report is not None:
            targets.append(Target(Path(o.report), naming.option("report")))
        if o.hls is not None:
            targets.append(hls_target(Path(o.hls), naming.option("hls")))
        check_targets(targets, inputs, overwrite=o.overwrite)
        self._targets_checked = True

    def _option_holding(self, path: Path) -> str:
        """The engine option that names *path* (or a folder holding it), for messages."""
        from .engines import option_label

        for name, value in self.p.engine_options:
            if isinstance(value, (str, Path)) and value:
                given = Path(value).expanduser()
                if given == path or given in path.parents:
                    return option_label(name)
        return "an engine option"

    def _stage_inputs(self) -> None:
        from .media import find_faces, first_frame, several_faces_message, stage_audio, stage_face

        ws, ff, report = self.ws, self.ff, self.report
        assert ws is not None
        self.face_path, self.face = stage_face(self.image, ws.inputs / "face", ff, allow_video=self.engine.supports_video_face)
        face = self.face
        report["inputs"]["face"] = {
            "staged": str(self.face_path),
            "is_video": face.is_video,
            "width": face.width,
            "height": face.height,
            "downscaled_from": face.downscaled_from,
            "frames": face.frames,
            "warnings": list(face.warnings),
        }
        # A fixed face box (--wav2lip-box) means the user placed the face; the detector would be ignored.
        if not self.opts.skip_face_check and getattr(self.p.engine_options, "wav2lip_box", None) is None:
            still = self.face_path if not face.is_video else first_frame(self.face_path, ff, ws.inputs / "first_frame.png")
            boxes = find_faces(still)
            faces = len(boxes)
            # Boxes in pixels of the user's image (the staged copy may be downscaled).
            scale = face.downscaled_from[0] / face.width if face.downscaled_from else 1.0
            report["inputs"]["face"]["faces_found"] = faces
            report["inputs"]["face"]["face_boxes"] = [
                {"x": b.x, "y": b.y, "width": b.width, "height": b.height, "score": round(b.score, 3)} for b in (box.scaled(scale) for box in boxes)
            ]
            if msg := several_faces_message(self.image, boxes, scale=scale, first_frame=face.is_video):
                log.warning("%s", msg)
                report["inputs"]["face"]["warnings"].append(msg)
            if faces == 0:
                raise FaceNotFoundError(
                    "no face found by the pre-check",
                    subject=self.image,
                    hint="Use a clear, frontal portrait, crop the image closer to the face, "
                    + ("pass --wav2lip-box, " if self.engine.name == "wav2lip" else "")
                    + "or --skip-face-check if you are sure there is one.",
                )
        from .resources.cache import sha256_file

        report["inputs"]["image_sha256"] = sha256_file(self.image)
        report["inputs"]["audio_sha256"] = sha256_file(self.audio)
        self.audio_check = stage_audio(self.audio, ws.inputs / "audio.wav", ff)
        for name, src in self.engine.staged_refs(self.p.engine_options).items():
            from .media import stage_video

            stage_video(Path(src).expanduser(), ws.inputs / f"{name}.mp4", ff)
        a = self.audio_check
        # "duration" is what decodes (the clip's length), "declared_duration" what the file's header says.
        report["inputs"]["audio_info"] = {
            **a.info.to_dict(),
            "duration": round(a.duration, 4),
            "declared_duration": a.declared_duration,
            "max_volume_db": a.max_volume_db,
            "warnings": list(a.warnings),
        }
        if a.silent:
            log.warning("%s is digital silence (peak %s dB); the lips will not move", self.audio, a.max_volume_db)

    # -- step 2: resources and the engine ---------------------------------------------------------

    def render(self) -> None:
        """Make the engine ready, then render the clip, or its chunks one by one."""
        from .workspace import build_link_farm

        assert self.ws is not None
        ws, opts = self.ws, self.opts
        with self._step():
            self.observer.stage("resources")
            with self.timer("resources"):
                self.prepared = prepared = self.p.resources.ensure(self.p.engine_options, opts.resolution)
            self.report["engine"].update(
                {
                    "repo": prepared.repo_url,
                    "commit": prepared.commit,
                    "checkpoints": [{"name": f.name, "sha256": f.sha256, "source": f.source, "known": f.known, "dest": f.dest} for f in prepared.files],
                }
            )
            self.observer.stage("stage")
            with self.timer("stage"):
                build_link_farm(prepared.repo_dir, ws.work, self.engine.entry_script, prepared.links())
                self.plan = self._plan()
            if self.opts.hls is not None:
                from .hls import HlsOutput

                self.hls = HlsOutput(self.ff, Path(self.opts.hls), self.opts.hls_segment_seconds, overwrite=self.opts.overwrite)
                self.report["hls"] = {"playlist": str(self.hls.playlist)}
                if not self.opts.remove_audio:
                    self.hls.prepare_audio(self.audio, self.opts.upscale().audio_bitrate)
            self.reached_engine = True
            if len(self.plan) == 1:
                self.raw = self._render_one(ws.inputs / "audio.wav", self.audio_check.duration, label=None)
                self.report["engine"]["raw_output"] = str(self.raw)
            else:
                self._render_chunks()

    def _plan(self):
        from .chunking import plan_chunks, read_wav

        seconds = self.opts.chunk_seconds if self.opts.chunk_seconds is not None else self.engine.default_chunk_seconds
        if not seconds:
            return [None]
        moving = ["the face video"] if self.face.is_video else []
        moving += [f"--{n.replace('_', '-')}" for n in self.engine.staged_refs(self.p.engine_options)]
        if moving:
            # Every chunk would start the video again from its first frame.
            if self.opts.chunk_seconds:
                raise UsageError(f"chunks cannot be used with {' and '.join(moving)}: each chunk would restart it", subject="--chunk-seconds", hint="Drop --chunk-seconds (or set it to 0).")
            log.info("not rendering in chunks: %s would restart in every chunk", " and ".join(moving))
            return [None]
        samples, rate = read_wav(self.ws.inputs / "audio.wav")  # type: ignore[union-attr]
        plan = plan_chunks(samples, rate, self.fps, seconds)
        if len(plan) > 1:
            self.report["chunks"] = [{"index": c.index, "start": round(c.start, 4), "end": round(c.end, 4), "frames": c.frames} for c in plan]
        return plan if len(plan) > 1 else [None]

    def _render_one(self, audio_wav: Path, seconds: float, *, label: str | None) -> Path:
        assert self.ws is not None
        ws = self.ws
        job = Job(face=self.face_path, audio=audio_wav, face_is_video=self.face.is_video, fps=self.fps, resolution=self.opts.resolution, device=self.device, python=self.python)
        command = self.engine.build_command(job, self.p.engine_options, ws)
        env = self._engine_env(command.env, self.prepared)
        with open(ws.root / "engine_command.txt", "a") as f:
            f.write((f"# {label}\n" if label else "") + command.display() + "\n")
        self.report.setdefault("commands", {}).setdefault("engine_runs", []).append(command.argv)
        self.report["commands"]["engine"] = command.argv
        self.report["commands"]["engine_cwd"] = str(command.cwd)
        self.observer.stage("engine", f"{self.engine.display_name} on {self.device}" + (f", {label}" if label else ""))
        from .runtime import default_timeout

        timeout = self.opts.timeout or default_timeout(seconds, self.device)
        self.report["engine"]["timeout_s"] = round(timeout, 1)
        with self.timer("engine"):
            try:
                return self._run_engine(command, env, timeout)
            except LipsyncError as exc:
                if label:
                    exc.subject = label if exc.subject in (None, "face") else f"{label}: {exc.subject}"
                raise

    def _render_chunks(self) -> None:
        """Render each chunk (reusing those a crashed run finished), normalise it
        to its exact frame count, and publish its HLS segments right away."""
        from .chunking import ChunkState, run_key, write_wav_slice
        from .media import normalize_clip_argv, run_ffmpeg_job
        from .resources.cache import Cache

        assert self.ws is not None
        ws = self.ws
        key = run_key(
            {
                "engine": self.engine.name,
                "commit": self.prepared.commit,
                "checkpoints": sorted(f.sha256 for f in self.prepared.files),
                "options": self.report["options"]["engine_options_resolved"],
                "resolution": self.opts.resolution,
                "fps": self.fps,
                "image": self.report["inputs"]["image_sha256"],
                "audio": self.report["inputs"]["audio_sha256"],
                "seed": self.opts.seed,
                "plan": self.report["chunks"],
            }
        )
        cache = Cache(self.p.settings.cache_dir)
        # Runs with the same key share these chunks: one at a time, from first render to last use.
        from filelock import FileLock, Timeout

        self._chunk_lock = FileLock(str(cache.lock_path("chunks", key)), thread_local=False)
        try:
            self._chunk_lock.acquire(timeout=0)
        except Timeout:
            log.warning("another run is rendering the same chunks; waiting for it")
            self.observer.waiting("the same chunks")
            self._chunk_lock.acquire()
        state = ChunkState(cache.base / "chunks", key, self.plan, self.seed)
        self.chunk_state = state
        if state.seed != self.seed:
            log.info("resuming a chunked run: using its seed %d", state.seed)
            self.seed = state.seed
            self.report["options"]["seed"] = state.seed
        total = len(self.plan)
        reused = []
        for chunk in self.plan:
            label = chunk.label(total)
            if state.done(chunk):
                reused.append(chunk.index)
                log.info("%s: reusing the clip a previous run rendered", label)
            else:
                wav = ws.inputs / f"audio_chunk_{chunk.index:03d}.wav"
                write_wav_slice(ws.inputs / "audio.wav", chunk, wav)
                raw = self._render_one(wav, chunk.duration, label=label)
                with self.timer("normalize"):
                    run_ffmpeg_job(normalize_clip_argv(self.ff.path, raw, state.clip(chunk), self.fps, chunk.frames), what=f"normalising {label}")
                raw.unlink(missing_ok=True)
                state.mark_done(chunk)
            if self.hls is not None:
                self.observer.stage("hls", label)
                with self.timer("hls"):
                    up = self.opts.upscale().model_copy(update={"fps": self.fps})
                    last = chunk.index == total - 1
                    audio = self.hls.piece_audio(chunk.start, None if last else chunk.end) if not self.opts.remove_audio else None
                    self.hls.publish(state.clip(chunk), audio, up, chunk.duration, start=chunk.start, on_progress=lambda f: self.observer.progress("hls", f))
        self.report["chunks_reused"] = reused
        self.clips = [state.clip(c) for c in self.plan]

    def _engine_env(self, extra: dict[str, str], prepared) -> dict[str, str]:
        from .engines.compat import compat_env

        assert self.ws is not None
        env = dict(os.environ)
        env.update(self.ff.engine_env(self.ws.root / "bin", copy_video_to=self.engine.ffmpeg_copy_video_to))
        url_map = {f.serves_url: str(f.path) for f in prepared.files if f.serves_url}
        env.update(compat_env(env.get("PYTHONPATH", ""), seed=self.seed, trusted=prepared.trusted(), url_map=url_map))
        # No PYTHONPYCACHEPREFIX: a fresh prefix makes the engine recompile torch & co.
        # on every run.  Upstream's own .pyc land in the link farm's real (per-run) dirs.
        env.pop("PYTHONPYCACHEPREFIX", None)
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "MPLBACKEND": "Agg"})
        env.update(extra)
        return env

    def _run_engine(self, command, env: dict[str, str], timeout: float) -> Path:
        from .engines.base import tail_lines
        from .process import ProcessTimeout, run_logged

        ws = self.ws
        assert ws is not None
        offset = ws.log.stat().st_size if ws.log.exists() else 0

        def on_line(line: str) -> None:
            log.debug("[%s] %s", self.engine.name, line)
            self.observer.engine_line(line)

        try:
            result = run_logged(command.argv, cwd=command.cwd, env=env, log_path=ws.log, timeout=timeout, on_line=on_line)
        except ProcessTimeout:
            raise EngineTimeoutError(
                f"{self.engine.display_name} ran past the timeout of {timeout:.0f} s and was stopped",
                log_path=ws.log,
                log_tail=tail_lines(_read_log(ws.log, offset), 15),
                hint="Raise --timeout, shorten the audio (or use --chunk-seconds), or use a GPU.",
            ) from None
        text = _read_log(ws.log, offset)
        translated = self.engine.translate_error(text, result.returncode, ws)
        if result.returncode != 0:
            if translated is not None:
                raise translated
            raise EngineError(f"{self.engine.display_name} failed (exit {result.returncode})", log_path=ws.log, log_tail=tail_lines(text), hint=f"The full log is {ws.log}.")
        try:
            return self.engine.find_output(ws, text)
        except EngineError:
            if translated is not None:
                raise translated from None
            raise

    # -- step 3: upscale and publish ------------------------------------------------------------

    def finish(self) -> RunResult:
        from .media import AudioSource, concat_list, probe, run_ffmpeg_job, upscale_argv

        assert self.ws is not None
        ws, opts = self.ws, self.opts
        up = opts.upscale().model_copy(update={"fps": self.fps})
        duration = self.audio_check.duration if self.clips is None else sum(c.duration for c in self.plan)
        tmp_out = temp_output_path(self.output) if self.output is not None else None
        try:
            with self._step():
                if self.output is not None:
                    assert tmp_out is not None
                    self.observer.stage("upscale")
                    with self.timer("upscale"):
                        if self.clips is None:
                            source, raw_input = self.raw, None
                        else:
                            source, raw_input = concat_list(self.clips, ws.root / "chunks.ffconcat"), {"f": "concat", "safe": 0}
                        argv = upscale_argv(self.ff.path, source, AudioSource(self.audio), tmp_out, up, duration, fmt=output_format(self.output), raw_input=raw_input)
                        (ws.root / "upscale_command.txt").write_text(_shell_join(argv) + "\n")
                        self.report.setdefault("commands", {})["ffmpeg"] = argv
                        run_ffmpeg_job(argv, what="the upscale", total_seconds=duration, on_progress=lambda f: self.observer.progress("upscale", f))
                    self.observer.stage("publish")
                    with self.timer("publish"):
                        info = probe(tmp_out, ff=self.ff, measure=True)
                        check_published(info, duration, remove_audio=opts.remove_audio, fps=self.fps)
                        from .targets import publish_file

                        publish_file(tmp_out, self.output, overwrite=opts.overwrite)
                        self.report["output"]["media"] = {**info.to_dict(), "path": str(self.output)}
                if self.hls is not None:
                    if self.clips is None:
                        self.observer.stage("hls")
                        with self.timer("hls"):
                            audio = self.hls.piece_audio(0.0, None) if not opts.remove_audio else None
                            self.hls.publish(self.raw, audio, up, duration, start=0.0, on_progress=lambda f: self.observer.progress("hls", f))
                    self.hls.end()
                    self.report["hls"]["commands"] = self.hls.commands
                self.report["status"] = "ok"
                self.report["temp_dir"] = str(ws.root) if opts.keep_temp else None
                self._write_reports()
        finally:
            if tmp_out is not None:
                tmp_out.unlink(missing_ok=True)
        if self.chunk_state is not None:
            if opts.keep_temp:
                shutil.copytree(self.chunk_state.dir, ws.root / "chunks", dirs_exist_ok=True)
            shutil.rmtree(self.chunk_state.dir, ignore_errors=True)
        self._release_chunks()
        kept: list[str] = []
        if opts.keep_temp:
            from .workspace import listing

            kept = listing(ws.root)
        else:
            self._cleanup()
        return RunResult(output=self.output, report=self.report, temp_dir=ws.root if opts.keep_temp else None, kept_files=kept, hls=self.hls.playlist if self.hls else None)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _write_reports(self) -> None:
        versions = getattr(self, "_versions", None)
        if versions is not None and "packages" not in self.report["engine"]:
            try:
                self.report["engine"]["packages"] = versions.result(timeout=5 if self.report.get("status") != "ok" else 60)
            except Exception as exc:
                self.report["engine"]["packages"] = {"error": str(exc)}
        text = json.dumps(self.report, indent=2, default=str)
        if self.ws is not None and self.ws.root.exists():
            (self.ws.root / "report.json").write_text(text)
        if self.opts.report and self._targets_checked:
            from .targets import write_text_file

            try:
                # Checked before the run; written once without --overwrite, then replaced by this run alone.
                write_text_file(Path(self.opts.report), text, overwrite=self.opts.overwrite or self._report_written)
                self._report_written = True
            except (OSError, OutputPathError) as exc:
                log.warning("could not write the report to %s: %s", self.opts.report, exc)

    def _cleanup(self) -> None:
        if self.ws is not None and not self.opts.keep_temp:
            shutil.rmtree(self.ws.root, ignore_errors=True)


# -- helpers (pure where possible) ---------------------------------------------------------


def _background(fn, *args):
    """Run *fn* on a daemon thread; returns a Future."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=work, daemon=True).start()
    return fut


def _read_log(path: Path, offset: int = 0) -> str:
    """The engine log from *offset* on (one engine run's part of it)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


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


try:
    LipSyncPipeline.__init__.__doc__ = "Configure *engine* with keyword options.\n" + _options_doc()
except Exception:
    log.debug("could not list the options for the docstring", exc_info=True)
