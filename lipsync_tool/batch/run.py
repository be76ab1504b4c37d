"""Running a planned batch through the :class:`~lipsync_tool.scheduler.Scheduler`.

:func:`run_batch` prepares each engine's resources once, then runs the jobs:
the engine step of a job (``Run.render()``) runs on the calling thread, one
job at a time, so the GPU holds one model at a time and Ctrl-C reaches the
engine exactly as in a single run.  With ``jobs=N`` a pool of N-1 threads
stages the next jobs (``start()``) and upscales the finished ones
(``finish()``) meanwhile.  ``batch_report.jsonl`` is rewritten after every
job, so a killed batch leaves a current picture.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Interrupted, LipsyncError, UsageError, error_dict
from ..scheduler import Event, Scheduler
from ..targets import write_text_file
from .job import REPORT_FILE, BatchJob, BatchObserver, JobResult, media_summary
from .plan import BatchPlan, load_report

log = logging.getLogger(__name__)



@dataclass
class BatchResult:
    plan: BatchPlan
    results: list[JobResult]
    wall_s: float
    report_path: Path
    setup_s: dict[str, float] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def exit_code(self) -> int:
        return 0 if all(r.status in ("ok", "skipped") for r in self.results) else 1


def _error_info(exc: BaseException, failure=None) -> dict[str, Any]:
    """*exc* as the batch report records it, with the temp dir its run kept (a ``RunFailure``'s)."""
    temp = failure.temp_dir if failure is not None and failure.error is exc else None
    return {**error_dict(exc), "temp_dir": str(temp) if temp else None}


class BatchWork:
    """A plan's jobs as the scheduler's :class:`~lipsync_tool.scheduler.Work`,
    and their results: ``batch_report.jsonl`` is rewritten after each one."""

    def __init__(self, plan: BatchPlan, *, fail_fast: bool, obs: BatchObserver, report_path: Path, scorer=None):
        self.plan = plan
        #: ``--score``: each published video is scored before its row is written (one clip at a time).
        self.scorer = scorer
        self._score_lock = threading.Lock()
        self.fail_fast = fail_fast
        self.obs = obs
        self.report_path = report_path
        self.results: dict[int, JobResult] = {}
        #: Set by a failure with fail_fast: no more jobs start.
        self.stop = False
        self._lock = threading.Lock()
        self._devices: dict[tuple, Any] = {}
        #: Each started job's pipeline, whose ``last_failure`` tells how a failed run ended.
        self._pipelines: dict[int, Any] = {}
        #: One runner per --runner choice for the whole batch: each engine's warm worker serves every job.
        self._runners: dict[Any, Any] = {}
        self._t0: dict[int, float] = {}

    # -- bookkeeping --------------------------------------------------------------------------

    def score(self, result: JobResult) -> None:
        """Fill *result*'s score columns (ok and skipped jobs: their published video)."""
        from ..scoring.fields import score_fields

        if self.scorer is None or result.status not in ("ok", "skipped") or result.scores is not None:
            return
        video = result.job.output if result.job.output.is_file() else None
        with self._score_lock:
            result.scores = score_fields(self.scorer, video, result.job.audio)

    def record(self, result: JobResult, *, notify: bool = True) -> None:
        self.score(result)
        with self._lock:
            self.results[result.job.index] = result
            if result.status == "failed" and self.fail_fast:
                self.stop = True
            self.write_report()
        if notify:
            level = logging.WARNING if result.status == "failed" else logging.INFO
            log.log(level, "job %d (%s, line %d): %s%s", result.job.index, result.job.name, result.job.line, result.status, f": {result.error['message']}" if result.error else "")
            self.obs.job_finished(result)

    def write_report(self) -> None:
        lines = []
        for job in self.plan.jobs:
            r = self.results.get(job.index) or JobResult(job, "pending")
            lines.append(json.dumps(r.to_json(), default=str))
        try:
            # Atomic; the batch's own file, rewritten every time (plan_batch checked it is no input).
            write_text_file(self.report_path, "\n".join(lines) + "\n", overwrite=True)
        except OSError as exc:
            log.warning("could not write %s: %s", self.report_path, exc)

    def failed(self, job: BatchJob, exc: BaseException, run=None) -> JobResult:
        pipeline = self._pipelines.pop(job.index, None)
        failure = pipeline.last_failure if pipeline is not None else None
        report = run.report if run is not None else (failure.report if failure is not None and failure.error is exc else None)
        timings = dict(report.get("timings") or {}) if report else {}
        return JobResult(job, "failed", _error_info(exc, failure), timings, self.elapsed(job))

    def elapsed(self, job: BatchJob) -> float:
        return time.monotonic() - self._t0[job.index] if job.index in self._t0 else 0.0

    def on_event(self, event: Event) -> None:
        """The scheduler's events → the jobs' results (and the batch report)."""
        job: BatchJob = event.item
        if event.kind == "failed":
            assert event.error is not None
            log.debug("job %d failed in %s()", job.index, event.stage, exc_info=event.error)
            self.record(self.failed(job, event.error, event.state))
        elif event.kind == "finished":
            self.record(event.result)
        elif event.kind == "interrupted":
            run = event.state
            timings = dict(run.report.get("timings") or {}) if run is not None else {}
            self.record(JobResult(job, "interrupted", {"type": "Interrupted", "message": "interrupted"}, timings, self.elapsed(job)))
        elif event.kind == "not_run" and job.index not in self.results:
            note = "interrupted" if event.reason == "interrupted" else "stopped after a failure (--fail-fast)"
            self.record(JobResult(job, "not_run", note=note), notify=False)

    # -- the steps (the scheduler's Work) -------------------------------------------------------

    def start(self, job: BatchJob):
        """Build the job's pipeline and stage its inputs (any thread)."""
        from ..pipeline import LipSyncPipeline

        self._t0[job.index] = time.monotonic()
        self.obs.job_started(job)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(job.options.get("hls"), Path):  # the pipeline makes the folder, not its parents
            job.options["hls"].parent.mkdir(parents=True, exist_ok=True)
        assert job.group is not None
        kwargs = job.pipeline_kwargs()
        # Resolving the device probes torch in a subprocess: do it once per (device, interpreter).
        key = (kwargs.get("device", "auto"), str(kwargs.get("python")))
        runner = self.runner_for(job, kwargs.pop("runner", None))  # the shared one (the report says which kind ran)
        pipeline = LipSyncPipeline(job.engine, resources=job.group.resources, observer=self.obs.job_observer(job), device_decision=self._devices.get(key), runner=runner, **kwargs)
        self._pipelines[job.index] = pipeline
        run = pipeline.start(job.image, job.audio, job.output)
        if pipeline.device_decision is not None:
            self._devices.setdefault(key, pipeline.device_decision)
        return run

    def runner_for(self, job: BatchJob, choice: str | None):
        from ..engines import get_engine
        from ..pipeline import make_runner

        with self._lock:
            if choice not in self._runners:
                self._runners[choice] = make_runner(choice, get_engine(job.engine))
            return self._runners[choice]

    def close(self) -> None:
        """Stop the warm workers."""
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()

    def render(self, job: BatchJob, run) -> None:
        run.render()

    def finish(self, job: BatchJob, run) -> JobResult:
        result = run.finish()
        self._pipelines.pop(job.index, None)
        return JobResult(job, "ok", None, dict(result.report.get("timings") or {}), self.elapsed(job), media_summary(result.report["output"].get("media")))

    def discard(self, job: BatchJob, run) -> None:
        run.discard()

    # -- the batch ----------------------------------------------------------------------------

    def prepare(self, todo: list[BatchJob]) -> None:
        """Make each engine's resources ready once, before its first job."""
        needs: dict[tuple, list[BatchJob]] = {}
        for job in todo:
            assert job.group is not None and job.run_options is not None
            needed = tuple(sorted(c.name for c in job.group.resources.needed(job.engine_options)))
            needed += tuple(sorted(job.group.resources.engine.user_files(job.engine_options)))
            needs.setdefault((job.group.key, needed), []).append(job)
        for (gkey, _), jobs in needs.items():
            if self.stop:
                return
            group = self.plan.groups[gkey]
            first = jobs[0]
            assert first.run_options is not None
            started = time.monotonic()
            try:
                group.resources.ensure(first.engine_options)
            except LipsyncError as exc:
                # Its jobs fail without being staged (record() stops a --fail-fast batch).
                log.warning("could not prepare %s: %s", group.engine, exc)
                for job in jobs:
                    self.record(JobResult(job, "failed", _error_info(exc), note="engine setup failed"))
            finally:
                group.seconds += time.monotonic() - started

    def run(self, todo: list[BatchJob], *, jobs: int) -> None:
        """Run the jobs of *todo* not failed yet (see the module doc)."""
        scheduler = Scheduler(self, jobs=jobs, fail_fast=self.fail_fast, on_event=self.on_event)
        if self.stop:
            scheduler.cancel()
        scheduler.run([j for j in todo if j.index not in self.results])


def run_batch(
    plan: BatchPlan,
    *,
    jobs: int = 1,
    fail_fast: bool = False,
    observer: BatchObserver | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    scorer=None,
) -> BatchResult:
    """Run *plan*: skipped jobs are recorded, the others run (see the module doc).

    Writes ``<out_dir>/batch_report.jsonl`` after every job (one line per job,
    ``pending`` until it ran), so a killed batch leaves a current picture.
    With a *scorer* (``--score``) every ok or skipped job's video is scored
    and its row gets the score columns; the scorer's weights and interpreter
    are made ready before any job runs.
    Raises :class:`~lipsync_tool.errors.Interrupted` after recording a Ctrl-C.
    """
    if jobs < 1:
        raise UsageError(f"must be at least 1, not {jobs}", subject="--jobs")
    if executor not in ("local", "ray"):
        raise UsageError(f"must be local or ray, not {executor!r}", subject="--executor")
    if executor == "ray":
        from .ray_run import check_ray_jobs

        check_ray_jobs(plan.to_run)
    obs = observer or BatchObserver()
    if scorer is not None and hasattr(scorer, "prepare"):
        scorer.prepare()
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    work = BatchWork(plan, fail_fast=fail_fast, obs=obs, report_path=plan.out_dir / REPORT_FILE, scorer=scorer)
    started = time.monotonic()
    for job in plan.to_skip:
        old = load_report(job.report_path) or {}
        work.results[job.index] = JobResult(job, "skipped", note=job.decision.reason, output_info=media_summary((old.get("output") or {}).get("media")))
        work.score(work.results[job.index])
    work.write_report()
    todo = plan.to_run
    obs.started(len(todo), len(plan.to_skip))
    try:
        work.prepare(todo)
        if executor == "ray":
            from .ray_run import run_on_ray

            run_on_ray(work, [j for j in todo if j.index not in work.results], address=ray_address)
        else:
            work.run(todo, jobs=jobs)
    except KeyboardInterrupt:
        raise Interrupted("interrupted") from None
    finally:
        work.close()
        work.write_report()
    results = [work.results[j.index] for j in plan.jobs]
    setup = {g.engine: round(g.seconds, 3) for g in plan.groups.values() if g.seconds}
    return BatchResult(plan, results, time.monotonic() - started, work.report_path, setup)


__all__ = ["BatchResult", "BatchWork", "JobResult", "run_batch"]
