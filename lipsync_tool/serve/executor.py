"""The service's engine side: the job store fed through the shared Scheduler.

:class:`Executor` is a :class:`~lipsync_tool.scheduler.JobSource` for one
long-lived :meth:`Scheduler.run <lipsync_tool.scheduler.Scheduler.run>` on a
thread of its own: one lane per device, each with its own warm-worker runner
(so a GPU holds one engine job at a time and its models stay loaded), and a
CPU thread that stages the next job and publishes the last one while a lane
renders.  Every step of a job runs inside the job's
:class:`~lipsync_tool.process.CancelScope`, so ``DELETE`` stops that job's
processes alone.

The store is the truth: a job is claimed (``running``) when a lane takes it,
and ends ``done``, ``failed`` or ``cancelled`` there.  When the server stops in
good order, what was running goes back to the queue; when it dies, the store's
:meth:`~lipsync_tool.serve.store.JobStore.recover` re-queues it once at the
next start.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Cancelled, error_dict
from ..process import CancelScope
from ..scheduler import Event, RunWork, Scheduler
from .jobs import Defaults, JobSpec, build_spec
from .paths import Root
from .store import JobStore, StoredJob, new_id

log = logging.getLogger(__name__)

#: Overall progress at the start of each stage (the engine's own fraction fills its span).
_STAGE_SPAN = {"validate": (0.0, 0.02), "resources": (0.02, 0.05), "stage": (0.05, 0.08), "engine": (0.08, 0.85), "upscale": (0.85, 0.97), "hls": (0.85, 0.97), "publish": (0.97, 1.0)}


@dataclass
class ActiveJob:
    """A job a lane has taken (in memory while it runs)."""

    spec: JobSpec
    scope: CancelScope = field(default_factory=CancelScope)
    ended: threading.Event = field(default_factory=threading.Event)
    pipeline: Any = None
    #: Where the scheduler has it: "start", "staged" (waiting for its lane), "render", "finish".
    phase: str = "start"
    stage: str = "validate"
    last_write: float = 0.0

    @property
    def id(self) -> str:
        return self.spec.id


class JobObserver:
    """A job's pipeline observer: progress into the store, and the cancel check."""

    def __init__(self, store: JobStore, job: ActiveJob):
        self.store, self.job = store, job

    def _check(self) -> None:
        if self.job.scope.cancelled:
            raise Cancelled("cancelled")

    def stage(self, name: str, detail: str = "") -> None:
        self._check()
        self.job.stage = name
        start = _STAGE_SPAN.get(name, (None, None))[0]
        self.store.progress(self.job.id, start if start is not None else self._current(), name)
        self.job.last_write = time.monotonic()

    def progress(self, stage: str, fraction: float) -> None:
        self._check()
        now = time.monotonic()
        if now - self.job.last_write < 0.25:
            return
        lo, hi = _STAGE_SPAN.get(stage, _STAGE_SPAN.get(self.job.stage, (0.0, 1.0)))
        self.store.progress(self.job.id, lo + (hi - lo) * max(0.0, min(1.0, fraction)))
        self.job.last_write = now

    def _current(self) -> float:
        stored = self.store.get(self.job.id)
        return stored.progress if stored is not None else 0.0

    def engine_line(self, line: str) -> None: ...

    def notice(self, title: str, text: str) -> None:
        log.info("job %s: %s: %s", self.job.id, title, text)

    def download_bar(self, label: str, total: int, initial: int):
        from ..resources.download import no_progress

        return no_progress(label, total, initial)

    def waiting(self, what: str) -> None:
        log.info("job %s waits for %s", self.job.id, what)


class Executor(RunWork):
    """The job store as a Scheduler's source and work (see the module doc)."""

    def __init__(self, store: JobStore, root: Root, defaults: Defaults, *, runner: str | None = None, max_queue: int = 64, expire_seconds: float = 86400.0):
        self.store, self.root, self.defaults = store, root, defaults
        self.runner_choice = runner
        self.max_queue = max_queue
        self.expire_seconds = expire_seconds
        self._cond = threading.Condition()
        self._closed = False
        self._active: dict[str, ActiveJob] = {}
        self._runners: dict[str, Any] = {}
        self._resources: dict[str, Any] = {}
        self._devices: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._janitor: threading.Thread | None = None
        self.scheduler = Scheduler(self, jobs=2, on_event=self.on_event, device=lambda job: job.spec.lane, on_interrupt=self._interrupt_all)

    # -- life -------------------------------------------------------------------------------------

    def open(self) -> None:
        """Recover from an unclean stop, then start the scheduler and the expiry thread."""
        requeued, failed = self.store.recover()
        if requeued or failed:
            log.warning("after an unclean stop: %d job(s) queued again, %d failed", len(requeued), len(failed))
        for job_id in requeued + failed:
            stored = self.store.get(job_id)
            if stored is not None:
                reset_outputs(JobSpec.from_request(job_id, stored.request, stored.dedupe_key))
        for stored in self.store.jobs("queued"):  # queued for a device this server no longer runs on
            if stored.lane not in self.defaults.lanes:
                message = f"it was queued for device {stored.lane}, and this server now runs on {', '.join(self.defaults.lanes)}"
                self.store.fail(stored.id, {"type": "UsageError", "category": "input", "message": message, "subject": "device", "hint": "Submit it again."})
        self._thread = threading.Thread(target=self.scheduler.run, args=(self,), name="serve-scheduler", daemon=True)
        self._thread.start()
        self._janitor = threading.Thread(target=self._expire_loop, name="serve-expire", daemon=True)
        self._janitor.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop in good order: no new jobs; running ones stop and go back to the queue."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for job in list(self._active.values()):
            job.scope.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self.store.close()

    # -- submitting -----------------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], *, job_id: str | None = None, uploaded: dict[str, Path] | None = None) -> tuple[StoredJob, bool]:
        """Check and queue a request: (the job, whether it is new)."""
        job_id = job_id or new_id()
        try:
            spec = build_spec(self.root, job_id, body, self.defaults, uploaded=uploaded)
            job, new = self.store.submit(spec.to_request(), max_queue=self.max_queue, dedupe_key=spec.dedupe_key, job_id=job_id, lane=spec.lane)
        except BaseException:
            self._remove_owned([str(self.root.path / "jobs" / job_id)])
            raise
        if not new:
            self._remove_owned(spec.owned)
        else:
            self.store.add_files(job.id, spec.owned)
            with self._cond:
                self._cond.notify_all()
        return job, new

    def cancel(self, job_id: str, wait: float = 30.0) -> StoredJob | None:
        """Cancel a queued or running job and remove what it wrote.  None: it had already ended."""
        with self._cond:
            ended = not self.store.cancel(job_id)
            active = self._active.get(job_id)
        if ended:
            return None
        if active is not None:
            active.scope.cancel()
            if active.phase == "staged":  # waiting for its lane, which will drop it: nothing of it runs
                self._remove_owned(active.spec.owned)
            elif not active.ended.wait(wait):
                log.warning("job %s did not stop within %.0f s of its cancel", job_id, wait)
        else:
            stored = self.store.get(job_id)
            if stored is not None:
                self._remove_owned(stored.files)
        return self.store.get(job_id)

    # -- JobSource ----------------------------------------------------------------------------------

    def lanes(self) -> list[Hashable]:
        return list(self.defaults.lanes)

    def take(self, device: Hashable, *, wait: bool) -> ActiveJob | None:
        while True:
            with self._cond:
                if self._closed:
                    return None
                stored = self.store.claim(lane=str(device))
                if stored is not None:
                    job = ActiveJob(JobSpec.from_request(stored.id, stored.request, stored.dedupe_key))
                    self._active[job.id] = job
                    return job
                if not wait:
                    return None
                self._cond.wait(timeout=1.0)

    # -- Work -----------------------------------------------------------------------------------------

    def start(self, job: ActiveJob):
        from ..pipeline import LipSyncPipeline

        with job.scope:
            if job.scope.cancelled:
                raise Cancelled("cancelled")
            spec = job.spec
            key = spec.lane
            pipeline = LipSyncPipeline(
                spec.engine,
                observer=JobObserver(self.store, job),
                resources=self._resources.get(spec.engine),
                device_decision=self._devices.get(key),
                runner=self._runner(spec.lane),
                **spec.options,
                **({"hls": spec.hls} if spec.hls else {}),
            )
            job.pipeline = pipeline
            run = pipeline.start(spec.image, spec.audio, spec.output)
            self._resources.setdefault(spec.engine, pipeline.resources)
            if pipeline.device_decision is not None:
                self._devices.setdefault(key, pipeline.device_decision)
            job.phase = "staged"
            return run

    def render(self, job: ActiveJob, run) -> None:
        with job.scope:
            if job.scope.cancelled:  # cancelled while it waited for the lane
                run.discard()
                raise Cancelled("cancelled")
            job.phase = "render"
            run.render()

    def finish(self, job: ActiveJob, run) -> dict[str, Any]:
        with job.scope:
            job.phase = "finish"
            result = run.finish()
        return {
            "output": self.root.relative(result.output) if result.output else None,
            "hls": self.root.relative(result.hls) if result.hls else None,
            "report": result.report,
        }

    def discard(self, job: ActiveJob, run) -> None:
        run.discard()

    def _runner(self, lane: str):
        from ..pipeline import make_runner

        with self._cond:
            if lane not in self._runners:
                self._runners[lane] = make_runner(self.runner_choice)
            return self._runners[lane]

    # -- the jobs' ends -----------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        job: ActiveJob = event.item
        if event.kind in ("started", "stage"):
            return
        try:
            if event.kind == "finished":
                self.store.finish(job.id, event.result)
            elif job.scope.cancelled and not self._closed:
                self._cleanup_cancelled(job)
            elif event.kind in ("interrupted", "not_run") or self._closed:
                self._cleanup_attempt(job)
                reset_outputs(job.spec)
                self.store.requeue(job.id)
            else:
                assert event.error is not None
                log.info("job %s failed in %s: %s", job.id, event.stage, event.error)
                self._record_failure(job, event.error)
        finally:
            with self._cond:
                self._active.pop(job.id, None)
            job.ended.set()

    def _record_failure(self, job: ActiveJob, error: BaseException) -> None:
        failure = job.pipeline.last_failure if job.pipeline is not None else None
        if failure is not None and failure.temp_dir is not None:
            self.store.add_files(job.id, [str(failure.temp_dir)])
        self.store.fail(job.id, error_dict(error) | {"category": getattr(error, "category", "engine")})

    def _cleanup_attempt(self, job: ActiveJob) -> None:
        failure = job.pipeline.last_failure if job.pipeline is not None else None
        if failure is not None and failure.temp_dir is not None:
            shutil.rmtree(failure.temp_dir, ignore_errors=True)

    def _cleanup_cancelled(self, job: ActiveJob) -> None:
        """A cancelled job's partial files go: its temp dir, its folder, its HLS segments."""
        self._cleanup_attempt(job)
        reset_outputs(job.spec)
        self._remove_owned(job.spec.owned)

    def _remove_owned(self, paths: list[str]) -> None:
        for path in paths:
            p = Path(path)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def _interrupt_all(self) -> None:
        for job in list(self._active.values()):
            job.scope.cancel()

    # -- expiry ------------------------------------------------------------------------------------

    def expire_now(self) -> int:
        expired = self.store.expire(self.expire_seconds)
        for job in expired:
            self._remove_owned(job.files)
        return len(expired)

    def _expire_loop(self) -> None:
        interval = max(1.0, min(60.0, self.expire_seconds / 4))
        while True:
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(timeout=interval)
                if self._closed:
                    return
            try:
                n = self.expire_now()
                if n:
                    log.info("expired %d finished job(s)", n)
            except Exception:
                log.exception("expiring old jobs failed")


def reset_outputs(spec: JobSpec) -> None:
    """What an attempt that never finished left at the job's outputs: its HLS
    playlist and segments (the folder too, when that leaves it empty), and a
    half-written MP4 beside the output (a crash leaves it; the next attempt
    then starts clean)."""
    if spec.hls:
        from ..hls import PLAYLIST, SEGMENTS

        hls = Path(spec.hls)
        # The segments, the playlist, and the audio the HLS writer stages beside its folder.
        for part in [*hls.glob(SEGMENTS), hls / PLAYLIST, *hls.glob(".*.partial*"), *hls.parent.glob(f".{hls.name}.*.partial*")]:
            part.unlink(missing_ok=True)
        try:
            hls.rmdir()
        except OSError:
            pass
    if spec.output:
        out = Path(spec.output)
        for part in out.parent.glob(f".{out.stem}.*.partial{out.suffix.lower()}"):
            part.unlink(missing_ok=True)


__all__ = ["ActiveJob", "Executor", "JobObserver", "reset_outputs"]
