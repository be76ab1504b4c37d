"""One clip through the pipeline: :class:`Run`, in steps that batch runs interleave.

``stage()`` validates and stages the inputs (CPU), ``render()`` makes the
engine ready and renders the clip or its chunks (the GPU), ``finish()`` has
each output writer publish it (CPU); ``discard()`` drops a staged run that
will never render.  A step that fails records a :class:`RunFailure` (the
report, the temp dir kept for debugging, the outputs' notes) on the run and on
its pipeline, then raises; no raised error is altered afterwards (where the
caller's error must say more, a new one of the same class is raised *from*
the original).
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, naming
from .engines.base import Job, Workspace
from .errors import FaceNotFoundError, InputError, Interrupted, LipsyncError, UsageError, error_dict
from .outputs import HlsOutput, Output, PublishContext, Rendered, check_output_name, get_outputs
from .report import DeviceInfo, EngineInfo, FaceInfo, InputsInfo, OutputInfo, ReportFiles, RunReport, Timer, ToolInfo
from .streaming import check_gpu_options, resolve_encoder, runner_kind, runner_streams, stream_whole, worker_job
from .tts.speech import Speech, speak

if TYPE_CHECKING:
    from .chunking import Chunk, ChunkedRender
    from .workspace import TempWorkspace

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output: Path | None
    report: dict[str, Any]
    temp_dir: Path | None = None
    kept_files: list[str] = field(default_factory=list)
    hls: Path | None = None


@dataclass(frozen=True)
class RunFailure:
    """How a run that failed or was interrupted ended (``Run.failure``,
    ``LipSyncPipeline.last_failure``)."""

    #: The error raised to the caller.
    error: BaseException
    #: The run report as written at the failure.
    report: dict[str, Any]
    #: The run's temp dir, kept for debugging (a failure in the engine or
    #: later, or --keep-temp); None when it was deleted.
    temp_dir: Path | None = None
    #: What the outputs left behind (e.g. an HLS playlist marked as failed);
    #: already part of the error's message when it is a LipsyncError.
    notes: tuple[str, ...] = ()


def rebuilt(exc: LipsyncError, **changes: Any) -> LipsyncError:
    """A new error of *exc*'s class with *exc*'s fields and *changes*
    (``message``, ``subject``), to be raised ``from exc``: the caller's error
    says more while the raised one stays as it was."""
    new = type(exc).__new__(type(exc), *exc.args)
    new.__dict__.update(exc.__dict__)
    new.__dict__.update(changes)
    if "message" in changes:
        new.args = (changes["message"],)
    return new


class Run:
    """One clip through the pipeline (see the module doc)."""

    def __init__(self, pipeline, image: Path, audio: Path | Speech, output: Path | None):
        self.p = pipeline
        self.engine = pipeline.engine
        self.opts = opts = pipeline.options
        self.observer = pipeline.observer
        self.image, self.audio, self.output = image, audio, output  # audio: a file, or text to speak (its WAV once staged)
        self.seed = opts.seed if opts.seed is not None else random.randrange(2**31)
        self.run_report = new_report(pipeline, image, audio, output, self.seed)
        self.timer = Timer(self.run_report.timings)
        self.files = ReportFiles(Path(opts.report) if opts.report else None, overwrite=opts.overwrite)
        self.temp: TempWorkspace | None = None
        self.reached_engine = False
        self.plan: list[Chunk] | None = None  # None: the audio renders whole
        self.chunks: ChunkedRender | None = None
        self.outputs: list[Output] = []
        self.ctx: PublishContext | None = None
        self.rendered: Rendered | None = None
        self.failure: RunFailure | None = None
        self._versions = None
        self.face_hint = None  # the face the engine animates (advisor.prejob), in the staged face's pixels

    @property
    def ws(self) -> Workspace | None:
        return self.temp.ws if self.temp is not None else None

    @property
    def report(self) -> dict[str, Any]:
        """The run report so far, as JSON data."""
        return self.run_report.to_dict()

    # -- failures -------------------------------------------------------------------------------

    @contextmanager
    def _step(self):
        """Error handling shared by the steps: record, clean up, raise."""
        try:
            yield
        except KeyboardInterrupt:
            raise self._interrupted() from None
        except Exception as exc:
            failure = self._failed(exc)
            if failure.error is exc:
                raise
            raise failure.error from exc

    def _record(self, failure: RunFailure) -> RunFailure:
        self.failure = self.p.last_failure = failure
        return failure

    def _interrupted(self) -> Interrupted:
        self.run_report.status = "interrupted"
        try:
            self._release_chunks()
            if self.ctx is not None:
                for out in self.outputs:
                    out.interrupt(self.ctx)
            self._write_reports()
        finally:
            if self.temp is not None:
                self.temp.close()
        error = Interrupted("interrupted")
        self._record(RunFailure(error, self.report))
        return error

    def _failed(self, exc: Exception) -> RunFailure:
        self._release_chunks()  # the finished chunks stay for a rerun
        self.run_report.status = "failed"
        self.run_report.error = error_dict(exc)
        notes = tuple(note for out in self.outputs if self.ctx is not None and (note := out.fail(self.ctx, str(exc))))
        error: Exception = exc
        if notes and isinstance(exc, LipsyncError):
            error = rebuilt(exc, message="\n".join([exc.message, *notes]))
        self._write_reports()
        # A failure inside the engine or later is worth debugging from the temp dir.
        temp_dir = self.temp.close(debug=self.reached_engine) if self.temp is not None else None
        return self._record(RunFailure(error, self.report, temp_dir, notes))

    def discard(self) -> None:
        """Drop a staged run that will never render (its temp dir goes, unless --keep-temp)."""
        if self.temp is not None:
            self.temp.close()

    def _release_chunks(self) -> None:
        if self.chunks is not None:
            self.chunks.release()

    # -- step 1: validate and stage ----------------------------------------------------------

    def stage(self) -> None:
        from .media import find_ffmpeg
        from .workspace import TempWorkspace

        with self._step():
            self.observer.stage("validate")
            with self.timer("validate"):
                check_paths(self.engine, self.p.engine_options, self.opts, self.image, self.audio, self.output)
                self.files.checked = True
                self.ff = find_ffmpeg(self.p.settings.ffmpeg)
                self.run_report.tool.ffmpeg = {"path": self.ff.path, "version": self.ff.version, "source": self.ff.source}
                self.temp = TempWorkspace.create(keep=self.opts.keep_temp)
                self.audio = speak(self.audio, self.temp.root, self.run_report.inputs, self.p.settings) if isinstance(self.audio, Speech) else self.audio
                staged = stage_inputs(self.engine, self.p.engine_options, self.opts, self.image, self.audio, self.ff, self.temp.ws, self.run_report.inputs, self.p.settings)
                self.face_path, self.face, self.audio_check = staged.face_path, staged.face, staged.audio
                self.face_hint = staged.face_hint
                self.engine.validate(self.p.engine_options, face_is_video=self.face.is_video)
            if self.opts.install_deps:  # before the device check, which needs the engine's torch
                from .runtime import engine_python, install_deps

                self.observer.stage("install-deps")
                with self.timer("install_deps"):
                    self.run_report.installed = install_deps(
                        self.engine, engine_python(self.opts.python), options=self.p.engine_options, log_path=self.temp.root / "install.log"
                    )
            with self.timer("validate"):
                self._resolve_device()
                check_gpu_options(self.opts, self.device, runner_kind(self.p.runner, self.engine), self.engine, self.p.engine_options)
                settle_face_hint(self)
            face = self.face
            video_fps = face.info.video.fps if face.is_video and face.info and face.info.video else None
            self.fps = video_fps if (video_fps and "fps" not in self.opts.model_fields_set) else self.opts.fps

    def _resolve_device(self) -> None:
        from .runtime import package_versions, require_packages

        self.python, decision = self.p._device_and_python()
        require_packages(self.python, self.engine.option_packages(self.p.engine_options))
        self.device = decision.device
        for warning in self.engine.run_warnings(self.p.engine_options, self.device):
            log.warning("%s", warning)
        self.run_report.device = DeviceInfo(str(self.device), self.device.reason, list(decision.gpu_names))
        self.run_report.engine.python = self.python
        # Only for the report: look them up while the engine runs.
        self._versions = _background(package_versions, self.python, ["torch", "torchvision", "numpy", "librosa", "opencv-python", "opencv-python-headless"])

    # -- step 2: resources and the engine ---------------------------------------------------------

    def render(self) -> None:
        """Make the engine ready, then render the clip, or its chunks one by one."""
        from .chunking import chunk_plan
        from .workspace import build_link_farm

        ws, opts = self.ws, self.opts
        assert ws is not None
        with self._step():
            self.observer.stage("resources")
            with self.timer("resources"):
                self.prepared = prepared = self.p.resources.ensure(self.p.engine_options)
            engine = self.run_report.engine
            engine.repo, engine.commit = prepared.repo_url, prepared.commit
            engine.checkpoints = [{"name": f.name, "sha256": f.sha256, "source": f.source, "known": f.known, "dest": f.dest} for f in prepared.files]
            self.observer.stage("stage")
            with self.timer("stage"):
                build_link_farm(prepared.repo_dir, ws.work, self.engine.entry_script, prepared.links())
                self.plan = chunk_plan(self.engine, self.p.engine_options, self.opts.chunk_seconds, ws.inputs / "audio.wav", self.fps, face_is_video=self.face.is_video)
                self.run_report.chunks = [c.to_dict() for c in self.plan] if self.plan else None
            encoder, why = resolve_encoder(opts.encoder, self.device, self.ff)
            engine.encoder = {"name": encoder, "reason": why}
            upscale = opts.upscale().model_copy(update={"fps": self.fps, "encoder": encoder})
            self.ctx = PublishContext(self.ff, self.audio, upscale, opts.remove_audio, opts.overwrite, ws.root, self.observer, self.timer, self.run_report)
            self.outputs = get_outputs(self.output, hls=Path(opts.hls) if opts.hls is not None else None, hls_segment_seconds=opts.hls_segment_seconds)
            for out in self.outputs:
                out.begin(self.ctx)
            self.reached_engine = True
            engine.runner = runner_kind(self.p.runner, self.engine)
            if self.plan is None and runner_streams(self.p.runner, self.engine):
                stream_whole(self)
            elif self.plan is None:
                raw = self._render_one(ws.inputs / "audio.wav", self.audio_check.duration, label=None)
                engine.raw_output = str(raw)
                self.rendered = Rendered([raw], self.audio_check.duration)
            else:
                render_chunks(self, self.plan)

    def _render_one(self, audio_wav: Path, seconds: float, *, label: str | None, sink=None) -> Path | None:
        from .advisor.prejob import hint_error, with_face_hint
        from .engines.runner import engine_env
        from .runtime import default_timeout

        ws = self.ws
        assert ws is not None
        job = Job(self.face_path, audio_wav, self.face.is_video, self.fps, self.device, self.python, face_hint=self.face_hint)
        command = with_face_hint(self.engine.build_command(job, self.p.engine_options, ws), self.face_hint)
        env = engine_env(self.engine, self.ff, ws, self.prepared, seed=self.seed, extra=command.env)
        with open(ws.root / "engine_command.txt", "a") as f:
            f.write((f"# {label}\n" if label else "") + command.display() + "\n")
        self.run_report.commands.engine_runs.append(command.argv)
        self.run_report.commands.engine_cwd = str(command.cwd)
        self.observer.stage("engine", f"{self.engine.display_name} on {self.device}" + (f", {label}" if label else ""))
        timeout = self.opts.timeout or default_timeout(seconds, self.device)
        self.run_report.engine.timeout_s = round(timeout, 1)
        with self.timer("engine"):
            try:
                if runner_streams(self.p.runner, self.engine):
                    return worker_job(self, command, job, env, timeout, sink=sink)
                return self.p.runner.run(self.engine, command, job, ws, env=env, timeout=timeout, log_path=ws.log, on_line=self._engine_line)
            except LipsyncError as exc:
                if (missed := hint_error(exc, self.face_hint)) is not None:
                    raise missed from exc
                if not label:
                    raise
                # The chunk is what the user needs to know about.
                raise rebuilt(exc, subject=label if exc.subject in (None, "face") else f"{label}: {exc.subject}") from exc

    def _engine_line(self, line: str) -> None:
        log.debug("[%s] %s", self.engine.name, line)
        self.observer.engine_line(line)

    # -- step 3: publish ------------------------------------------------------------------------

    def finish(self) -> RunResult:
        """Have every output publish the rendered clip; write the report; clean up."""
        temp, ctx, rendered = self.temp, self.ctx, self.rendered
        assert temp is not None and ctx is not None and rendered is not None, "render() first"
        with self._step():
            for out in self.outputs:
                out.publish(ctx, rendered)
            self.run_report.status = "ok"
            self.run_report.temp_dir = str(temp.kept_dir) if temp.kept_dir else None
            self._write_reports()
        if self.chunks is not None:
            self.chunks.close(keep_copy=lambda chunks: temp.keep_copy(chunks, "chunks"))
        kept = temp.kept_files()
        hls = next((out.playlist_path for out in self.outputs if isinstance(out, HlsOutput)), None)
        return RunResult(output=self.output, report=self.report, temp_dir=temp.close(), kept_files=kept, hls=hls)

    def _write_reports(self) -> None:
        engine = self.run_report.engine
        if self._versions is not None and engine.packages is None:
            try:
                engine.packages = self._versions.result(timeout=5 if self.run_report.status != "ok" else 60)
            except Exception as exc:  # noqa: BLE001 - the versions are for the report only
                engine.packages = {"error": str(exc)}
        self.files.write(self.run_report, self.temp.root if self.temp is not None else None)


# -- helpers ------------------------------------------------------------------------------------


def render_chunks(run: Run, plan: list[Chunk]) -> None:
    """Render the chunks (see chunking.ChunkedRender); outputs see each as it is ready."""
    from .chunking import ChunkedRender, chunk_key
    from .media import normalize_clip_argv, run_ffmpeg_job

    ws, report = run.ws, run.run_report
    assert ws is not None and run.ctx is not None
    key = chunk_key(report, run.prepared, fps=run.fps, seed=run.opts.seed)
    run.chunks = ChunkedRender(run.p.settings.cache_dir, key, plan, run.seed)
    run.seed = report.seed = run.chunks.open(run.observer.waiting)

    def normalise(raw: Path, clip: Path, chunk: Chunk, label: str) -> None:
        with run.timer("normalize"):
            run_ffmpeg_job(normalize_clip_argv(run.ff.path, raw, clip, run.fps, chunk.frames), what=f"normalising {label}")

    def ready(chunk: Chunk, clip: Path, label: str) -> None:
        for out in run.outputs:
            out.add_chunk(run.ctx, chunk, clip, label, last=chunk.index == len(plan) - 1)

    report.chunks_reused = run.chunks.render(ws.inputs / "audio.wav", lambda wav, seconds, label: run._render_one(wav, seconds, label=label), normalise, ready)
    run.rendered = Rendered(run.chunks.clips, sum(c.duration for c in plan), chunked=True)


def settle_face_hint(run: Run) -> None:
    """The face hint the engine gets under this run's runner (advisor.prejob); the preprocessing cache keys on it."""
    from .advisor.prejob import settle_face_hint as settle

    kind, explicit = runner_kind(run.p.runner, run.engine), run.opts.face_index is not None
    run.face_hint = settle(run.engine, kind, run.face_hint, explicit=explicit, info=run.run_report.inputs.face)


def check_paths(engine, engine_options, opts, image: Path, audio: Path | Speech, output: Path | None) -> None:
    """Every path the user gave, before any work: inputs readable, every
    file this run writes (OUTPUT, --report, --hls) safe to write.  *audio* may
    be text to speak, whose files (the text file, a voice model) are inputs too."""
    from .hls import hls_target
    from .targets import Target, check_input_file, check_path_name, check_targets

    if output is None and opts.hls is None:
        raise UsageError(f"give an {naming.option('output')} file, {naming.option('hls')} DIR, or both", subject=naming.option("output"))
    check_input_file(image, naming.option("image"), what="portrait")
    if isinstance(audio, Speech):
        audio_inputs = audio.check_inputs()
    else:
        check_input_file(audio, naming.option("audio"), what="speech audio")
        audio_inputs = [audio]
    refs = [Path(p).expanduser() for p in engine.staged_refs(engine_options).values()]
    user_files = [Path(p).expanduser() for p in engine.user_files(engine_options).values()]
    for path in refs:
        check_input_file(path, _option_holding(engine_options, path), what="video", expect="video")
    for path in user_files:
        check_input_file(path, _option_holding(engine_options, path), what="PyTorch checkpoint (.pth)", expect="checkpoint")
    inputs = [image, *audio_inputs, *refs, *user_files]
    for field_name in ("python", "cache_dir", "registry"):
        value = getattr(opts, field_name)
        if value is not None:
            check_path_name(Path(value), naming.option(field_name))
    if opts.registry is not None:
        inputs.append(Path(opts.registry))
    targets = []
    if output is not None:
        check_output_name(output)
        targets.append(Target(output, naming.option("output")))
    if opts.report is not None:
        targets.append(Target(Path(opts.report), naming.option("report")))
    if opts.hls is not None:
        targets.append(hls_target(Path(opts.hls), naming.option("hls")))
    check_targets(targets, inputs, overwrite=opts.overwrite)


@dataclass(frozen=True)
class StagedInputs:
    face_path: Path
    face: Any  # media.FaceInput
    audio: Any  # media.AudioCheck
    face_hint: Any = None  # workerd.face_hint.FaceHint: the face to animate, see advisor.prejob


def stage_inputs(engine, engine_options, opts, image: Path, audio: Path, ff, ws: Workspace, report: InputsInfo, settings=None) -> StagedInputs:
    """Validate the inputs and stage them in *ws*, as the engine reads them; *report* records what was found."""
    from .engines import engines_accepting
    from .media import stage_audio, stage_face, stage_video
    from .resources.cache import sha256_file

    face_path, face = stage_face(image, ws.inputs / "face", ff, allow_video=engine.supports_video_face, video_engines=engines_accepting(video=True))
    if not face.is_video and not engine.supports_image_face:
        raise InputError(f"is a still image; {engine.display_name} needs a face video", subject=image, hint="Give a video of the face.")
    report.face = FaceInfo(str(face_path), face.is_video, face.width, face.height, face.downscaled_from, face.frames, list(face.warnings))
    from .advisor.prejob import advise_before_run, check_face_index

    check_face_index(engine, engine_options, opts, face.is_video)
    hint = None
    if not opts.skip_face_check and engine.face_check_wanted(engine_options):
        check_face(engine, engine_options, image, face_path, face, ff, ws, report.face)
        if (engine.portrait_advice or opts.face_index is not None) and not face.is_video and settings is not None:
            hint = advise_before_run(image, face_path, python=opts.python, settings=settings, info=report.face, face_index=opts.face_index)
    report.image_sha256 = sha256_file(image)
    report.audio_sha256 = sha256_file(audio)
    a = stage_audio(audio, ws.inputs / "audio.wav", ff)
    for name, src in engine.staged_refs(engine_options).items():
        stage_video(Path(src).expanduser(), ws.inputs / f"{name}.mp4", ff)
    # "duration" is what decodes (the clip's length), "declared_duration" what the file's header says.
    report.audio_info = {
        **a.info.to_dict(),
        "duration": round(a.duration, 4),
        "declared_duration": a.declared_duration,
        "max_volume_db": a.max_volume_db,
        "warnings": list(a.warnings),
    }
    if a.silent:
        log.warning("%s is digital silence (peak %s dB); the lips will not move", audio, a.max_volume_db)
    return StagedInputs(face_path, face, a, hint)


def check_face(engine, engine_options, image: Path, face_path: Path, face, ff, ws: Workspace, info: FaceInfo) -> None:
    """The face pre-check: one face, found before any engine starts."""
    from .media import find_faces, first_frame, several_faces_message

    still = face_path if not face.is_video else first_frame(face_path, ff, ws.inputs / "first_frame.png")
    boxes = find_faces(still)
    # Boxes in pixels of the user's image (the staged copy may be downscaled).
    scale = face.downscaled_from[0] / face.width if face.downscaled_from else 1.0
    info.faces_found = len(boxes)
    info.face_boxes = [{"x": b.x, "y": b.y, "width": b.width, "height": b.height, "score": round(b.score, 3)} for b in (box.scaled(scale) for box in boxes)]
    if msg := several_faces_message(image, boxes, scale=scale, first_frame=face.is_video):
        log.warning("%s", msg)
        info.warnings.append(msg)
    if not boxes:
        raise FaceNotFoundError(
            "no face found by the pre-check",
            subject=image,
            hint="Use a clear, frontal portrait, crop the image closer to the face, "
            + "".join(f"{h}, " for h in engine.face_hints(engine_options))
            + "or --skip-face-check if you are sure there is one.",
        )


def new_report(pipeline, image: Path, audio: Path | Speech, output: Path | None, seed: int) -> RunReport:
    """The report of a run that is about to start."""
    return RunReport(
        tool=ToolInfo(__version__),
        engine=EngineInfo(pipeline.engine.name),
        inputs=InputsInfo(str(image), str(audio)),
        output=OutputInfo(str(output) if output is not None else None),
        options=pipeline.options.model_dump(mode="json"),
        seed=seed,
        engine_options=pipeline.engine_options.model_dump(mode="json", exclude_none=True),
        engine_options_resolved=pipeline.engine_options.resolved().model_dump(mode="json", exclude_none=True),
    )


def _option_holding(engine_options, path: Path) -> str:
    """The engine option that names *path* (or a folder holding it), for messages."""
    from .engines import option_label

    for name, value in engine_options:
        if isinstance(value, (str, Path)) and value:
            given = Path(value).expanduser()
            if given == path or given in path.parents:
                return option_label(name)
    return "an engine option"


def _background(fn, *args):
    """Run *fn* on a daemon thread; returns a Future."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the Future's reader
            fut.set_exception(exc)

    threading.Thread(target=work, daemon=True).start()
    return fut
