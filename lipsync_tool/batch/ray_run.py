"""``batch --executor ray``: a planned batch's jobs on Ray actors.

The driver (this process) plans and validates the batch exactly as the local
executor does, and records every job's result in the same
``batch_report.jsonl``.  Only the runs move:

* one actor per GPU (``num_gpus=1``; or one per unit of a custom resource,
  ``LIPSYNC_TOOL_RAY_RESOURCE``, which the tests use to stand in for GPUs)
  holds a warm worker for its engines.  It takes :data:`SEATS` jobs at a
  time: their CPU steps (staging, the upscale with ffmpeg) run on the actor's
  threads while the other job renders, and the renders take turns (one at a
  time on the GPU), so the GPU does not wait on ffmpeg.  The staged files stay
  on the node that renders them;
* inputs travel to the actor as bytes through Ray's object store, the MP4
  and the run report come back the same way: no shared file system is
  needed.  The driver publishes each output atomically in ``--out-dir`` and
  writes its report beside it, with the driver's paths;
* the longest jobs (by audio) go first;
* an actor that dies (a killed process, a lost node) is replaced and its job
  runs again elsewhere, at most :data:`MAX_ATTEMPTS` times in all; a job that
  fails on its own (bad input, an engine error) is recorded once;
* Ctrl-C kills the actors; nothing is published for a job that did not finish.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import DependencyError, UsageError, error_dict
from .job import BatchJob, JobResult, media_summary

log = logging.getLogger(__name__)

#: A custom Ray resource that stands in for GPUs (one actor per unit).
ENV_RESOURCE = "LIPSYNC_TOOL_RAY_RESOURCE"
#: How many units of it a local Ray started by the batch gets.
ENV_SLOTS = "LIPSYNC_TOOL_RAY_SLOTS"
#: Runs of one job at most when its actor keeps dying.
MAX_ATTEMPTS = 3
#: Jobs an actor holds at once: one renders while the other stages or upscales.
SEATS = 2
#: Options that name files on the driver's machine, which an actor elsewhere does not have.
_DRIVER_PATHS = ("hls", "python", "cache_dir", "registry", "report")


class EngineActor:
    """Runs whole jobs in its node's temp dir, with one warm runner kept between them."""

    def __init__(self) -> None:
        import threading

        self._runners: dict[Any, Any] = {}
        self._lock = threading.Lock()
        #: One render at a time on this actor's GPU; staging and the upscale overlap it.
        self._gpu = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        import shutil
        import tempfile

        from ..errors import LipsyncError
        from ..pipeline import LipSyncPipeline, make_runner

        tmp = Path(tempfile.mkdtemp(prefix="lipsync-ray-"))
        try:
            image, audio = tmp / payload["image_name"], tmp / payload["audio_name"]
            image.write_bytes(payload["image"])
            audio.write_bytes(payload["audio"])
            out = tmp / "out" / payload["output_name"]
            out.parent.mkdir()
            options = dict(payload["options"])
            choice = options.pop("runner", None)
            with self._lock:
                if choice not in self._runners:
                    self._runners[choice] = make_runner(choice)
            pipeline = LipSyncPipeline(payload["engine"], runner=self._runners[choice], **options)
            try:
                run = pipeline.start(image, audio, out)  # CPU: validate and stage
                with self._gpu:
                    run.render()
                result = run.finish()  # CPU: upscale and publish (into the temp dir)
            except LipsyncError as exc:
                failure = pipeline.last_failure
                return {"ok": False, "error": error_dict(exc), "report": failure.report if failure else None}
            except Exception as exc:  # noqa: BLE001 - the job's own failure, reported as such
                return {"ok": False, "error": error_dict(exc), "report": None}
            return {"ok": True, "video": out.read_bytes(), "report": result.report, "host": os.uname().nodename, "pid": os.getpid()}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def payload_for(job: BatchJob) -> dict[str, Any]:
    """What an actor needs for *job*: its options and its inputs' bytes."""
    options = {k: v for k, v in job.pipeline_kwargs().items() if k not in _DRIVER_PATHS}
    options["overwrite"] = False  # the actor writes into its own empty temp dir
    return {
        "engine": job.engine,
        "options": options,
        "image_name": "image" + job.image.suffix.lower(),
        "audio_name": "audio" + job.audio.suffix.lower(),
        "image": job.image.read_bytes(),
        "audio": job.audio.read_bytes(),
        "output_name": job.output.name,
    }


def check_ray_jobs(todo: list[BatchJob]) -> None:
    """What the Ray executor cannot do yet, refused before any work."""
    for job in todo:
        if job.options.get("hls") is not None:
            raise UsageError(f"line {job.line}: --hls is not supported with --executor ray yet", subject="--executor", hint="Use --executor local for HLS output.")


def driver_report(report: dict[str, Any] | None, job: BatchJob) -> dict[str, Any] | None:
    """The actor's run report with the driver's paths (the files it names are the driver's)."""
    if report is None:
        return None
    inputs = report.get("inputs") or {}
    inputs["image"], inputs["audio"] = str(job.image), str(job.audio)
    if isinstance(inputs.get("audio_info"), dict):
        inputs["audio_info"]["path"] = str(job.audio)
    output = report.get("output") or {}
    if output:
        output["path"] = str(job.output)
        if isinstance(output.get("media"), dict):
            output["media"]["path"] = str(job.output)
    report["executor"] = {"name": "ray"}
    return report


def _init_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise DependencyError("--executor ray needs Ray", hint="pip install 'lipsync-tool[ray]'") from None
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        resource = os.environ.get(ENV_RESOURCE)
        if resource:
            kwargs["resources"] = {resource: float(os.environ.get(ENV_SLOTS) or 2)}
        ray.init(**kwargs)
    return ray, True


def _actor_count(ray, resource: str | None, jobs: int) -> tuple[int, dict[str, Any]]:
    """How many actors, and what each asks of Ray."""
    total = ray.cluster_resources()
    if resource:
        units, ask = int(total.get(resource, 0)), {"num_cpus": 0, "resources": {resource: 1}}
    else:
        units, ask = int(total.get("GPU", 0)), {"num_gpus": 1}
    if units < 1:
        what = f"no {resource!r} resource" if resource else "no GPU"
        raise UsageError(f"the Ray cluster has {what}, so no engine actor can start", subject="--executor", hint="Run on a cluster with GPUs, or use --executor local.")
    return min(units, max(1, jobs)), ask


def _longest_first(todo: list[BatchJob]) -> list[BatchJob]:
    return sorted(todo, key=lambda j: -(j.audio_seconds or 0.0))


def run_on_ray(work, todo: list[BatchJob], *, address: str | None) -> None:
    """Run *todo* on Ray actors, recording each result in *work* (a BatchWork)."""
    ray, started_here = _init_ray(address)
    resource = os.environ.get(ENV_RESOURCE) or None
    actors: list[Any] = []
    try:
        count, ask = _actor_count(ray, resource, len(todo))
        remote = ray.remote(max_restarts=0, max_concurrency=SEATS, **ask)(EngineActor)

        def new_actor() -> list[Any]:
            actor = remote.remote()
            actors.append(actor)
            return [actor] * SEATS

        seats = deque(seat for _ in range(count) for seat in new_actor())
        _drive(ray, work, deque(_longest_first(todo)), seats, new_actor)
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started_here:
            ray.shutdown()


def _drive(ray, work, pending: deque, seats: deque, new_actor) -> None:
    """Hand jobs to free seats; take results as they come; replace dead actors."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    inflight: dict[Any, tuple[BatchJob, Any, float]] = {}
    attempts: dict[int, int] = {}
    dead: set[Any] = set()
    while (pending and not work.stop) or inflight:
        while pending and seats and not work.stop:
            job, actor = pending.popleft(), seats.popleft()
            attempts[job.index] = attempts.get(job.index, 0) + 1
            work.obs.job_started(job)
            inflight[actor.run.remote(payload_for(job))] = (job, actor, time.monotonic())
        done, _ = ray.wait(list(inflight), num_returns=1)
        job, actor, t0 = inflight.pop(done[0])
        try:
            answer = ray.get(done[0])
        except (RayActorError, WorkerCrashedError) as exc:
            if actor not in dead:  # its other seat's job fails the same way: one replacement
                dead.add(actor)
                seats = deque(s for s in seats if s is not actor)
                seats.extend(new_actor())
            if attempts[job.index] < MAX_ATTEMPTS:
                log.warning("job %d (%s): its Ray actor died (%s); running it again", job.index, job.name, type(exc).__name__)
                pending.appendleft(job)
            else:
                error = {"type": "ActorDied", "message": f"its Ray actor died {attempts[job.index]} times: {exc}", "subject": None, "hint": "See the Ray logs of the node.", "temp_dir": None}
                work.record(JobResult(job, "failed", error, wall_s=time.monotonic() - t0))
            continue
        seats.append(actor)
        work.record(_result(job, answer, time.monotonic() - t0))
    for job in pending:
        work.record(JobResult(job, "not_run", note="stopped after a failure (--fail-fast)"), notify=False)


def _result(job: BatchJob, answer: dict[str, Any], wall: float) -> JobResult:
    """Publish what an actor sent back (the MP4, then its report, as a local run does), and the job's result."""
    from ..targets import publish_file, temp_path_beside

    report = driver_report(answer.get("report"), job)
    overwrite = bool(job.pipeline_kwargs().get("overwrite"))
    timings = dict((report or {}).get("timings") or {})
    if not answer["ok"]:
        _write_report(job, report, overwrite)
        return JobResult(job, "failed", {**answer["error"], "temp_dir": None}, timings, wall)
    tmp = temp_path_beside(job.output)
    try:
        tmp.write_bytes(answer["video"])
        publish_file(tmp, job.output, overwrite=overwrite)
    except Exception as exc:  # noqa: BLE001 - this job's publish failed, the batch goes on
        return JobResult(job, "failed", {**error_dict(exc), "temp_dir": None}, timings, wall)
    finally:
        tmp.unlink(missing_ok=True)
    _write_report(job, report, overwrite)
    return JobResult(job, "ok", None, timings, wall, media_summary((report or {}).get("output", {}).get("media")))


def _write_report(job: BatchJob, report: dict[str, Any] | None, overwrite: bool) -> None:
    """The job's run report beside its output; one that cannot be written is a warning, as in a local run."""
    import json

    from ..errors import OutputPathError
    from ..targets import write_text_file

    if report is None:
        return
    try:
        write_text_file(job.report_path, json.dumps(report, indent=2, default=str), overwrite=overwrite)
    except (OSError, OutputPathError) as exc:
        log.warning("could not write the report to %s: %s", job.report_path, exc)

__all__ = ["ENV_RESOURCE", "ENV_SLOTS", "MAX_ATTEMPTS", "EngineActor", "check_ray_jobs", "driver_report", "payload_for", "run_on_ray"]
