"""Warm workers: :class:`WorkerRunner`, the :class:`EngineRunner` that keeps the models loaded.

One long-lived child per engine (``workerd/main.py`` in the engine's
interpreter, with the same environment as a subprocess run) renders job after
job.  Its log lines go to the worker's own log and to the job's
``engine.log``; its frames go to a *sink* (the outputs' encoders, or a
lossless intermediate clip).  A child that dies is started again for the next
job; a job that fails leaves the child up.  See docs/workers.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import DependencyError, EngineError, EngineTimeoutError, UsageError
from ..process import current_scope
from .base import Command, Engine, EngineRunner, Job, Workspace, tail_lines
from .runner import read_log
from .worker_process import WorkerDied, WorkerProcess

log = logging.getLogger(__name__)

#: Seconds a new worker may take to say "ready" (Python and the adapter's imports).
START_TIMEOUT = 300.0


class FrameSink(Protocol):
    """Where a job's frames go (``media.stream.FileSink``, the run's outputs)."""

    def open(self, video) -> None: ...

    def write(self, data: bytes, frames: int) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


@dataclass
class WorkerJobResult:
    """What one job in a worker made."""

    frames: int
    video: Any  # media.stream.VideoFormat
    seconds: float
    #: The adapter's notes (models loaded, preprocessing hit, …).
    info: dict[str, Any] = field(default_factory=dict)
    #: The worker: pid, log, jobs it has run, whether it was started for this job;
    #: and the adapter's facts about the job's frames (:data:`JOB_FACTS`), which
    #: the report keeps with the job.
    worker: dict[str, Any] = field(default_factory=dict)


class WorkerRunner(EngineRunner):
    """Warm workers, one per engine and environment, kept until :meth:`close`.

    ``batch`` and ``compare`` share one runner for the whole command, so each
    engine's models load once.  Thread-safe: each worker runs one job at a
    time (the scheduler gives each engine one lane per device).
    """

    kind = "worker"

    def __init__(self, log_dir: Path | None = None, *, fallback: EngineRunner | None = None):
        self._log_dir = log_dir
        #: Where engines without a worker adapter run (None: they are refused).
        self.fallback = fallback
        self._workers: dict[str, tuple[str, WorkerProcess]] = {}  # engine@device → (key, worker)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._tmp: Path | None = None
        self.started = 0
        #: Jobs that failed or killed their worker: their logs are kept at close().
        self.failures = 0

    def kind_for(self, engine: Engine) -> str:
        if engine.worker_adapter or self.fallback is None:
            return "worker"
        return self.fallback.kind_for(engine)

    def streams_for(self, engine: Engine) -> bool:
        return bool(engine.worker_adapter)

    # -- the worker for a job ----------------------------------------------------------------

    def _root(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="lipsync-tool-workers-"))
        return self._tmp

    def _worker(self, engine: Engine, command: Command, job: Job, ws: Workspace, env: dict[str, str], timeout: float) -> tuple[WorkerProcess, bool]:
        """The engine's worker for this environment, started (or restarted) if needed."""
        if not getattr(engine, "worker_adapter", None):
            raise UsageError(f"{engine.display_name} has no warm worker", subject="--runner", hint="Use --runner subprocess.")
        links = farm_links(command.cwd)
        stable_env = {k: v for k, v in env.items() if k not in VOLATILE_ENV and str(ws.root) not in v}
        key = json.dumps([job.python, links, stable_env], sort_keys=True)
        slot = _slot(engine, env)
        current = self._workers.get(slot)
        if current is not None:
            old_key, worker = current
            if old_key == key and worker.alive():
                return worker, False
            if worker.alive():
                log.info("restarting the %s worker: its environment changed", engine.display_name)
            else:
                log.warning("the %s worker (pid %s) has died; starting a new one", engine.display_name, worker.pid)
            worker.stop()
            del self._workers[slot]
        self.started += 1
        home = self._root() / f"{engine.name}-{self.started}"
        workdir = home / "work"
        copy_link_farm(command.cwd, workdir, links)
        worker_env = dict(env)
        bin_dir = ws.root / "bin"
        if bin_dir.is_dir():  # the run's ffmpeg shim, copied so it outlives the run
            shutil.copytree(bin_dir, home / "bin", symlinks=True)
            worker_env["PATH"] = worker_env.get("PATH", "").replace(str(bin_dir), str(home / "bin"))
        log_path = self._log_path(engine, home)
        log.info("starting a warm %s worker (%s, log %s)", engine.display_name, job.python, log_path)
        worker = WorkerProcess(engine, job.python, workdir, worker_env, log_path)
        try:
            worker.wait_ready(min(timeout, START_TIMEOUT))
        except (TimeoutError, WorkerDied) as exc:
            worker.kill()
            text = read_log(log_path)
            raise EngineError(
                f"the {engine.display_name} worker did not start ({exc or 'no answer in time'})",
                log_path=log_path,
                log_tail=tail_lines(text, 15),
                hint=f"The worker's log is {log_path}; --runner subprocess runs upstream's own CLI instead.",
            ) from None
        self._workers[slot] = (key, worker)
        return worker, True

    def _log_path(self, engine: Engine, home: Path) -> Path:
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            return self._log_dir / f"worker-{engine.name}-{os.getpid()}-{self.started}.log"
        return home / "worker.log"

    def _slot_lock(self, slot: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(slot, threading.Lock())

    # -- EngineRunner ------------------------------------------------------------------------------

    def run(self, engine, command, job, ws, *, env, timeout, log_path, on_line=None, extra: dict[str, Any] | None = None) -> Path:
        """The job's frames as a lossless clip in the run's results folder."""
        from ..media import find_ffmpeg

        if not engine.worker_adapter and self.fallback is not None:
            return self.fallback.run(engine, command, job, ws, env=env, timeout=timeout, log_path=log_path, on_line=on_line)
        from ..media.stream import FileSink

        ws.results.mkdir(parents=True, exist_ok=True)
        sink = FileSink(find_ffmpeg().path, ws.results / "worker.mp4")
        self.stream(engine, command, job, ws, env=env, timeout=timeout, log_path=log_path, on_line=on_line, sink=sink, extra=extra)
        return sink.path

    def stream(
        self,
        engine: Engine,
        command: Command,
        job: Job,
        ws: Workspace,
        *,
        env: dict[str, str],
        timeout: float,
        log_path: Path,
        sink: FrameSink,
        on_line: Callable[[str], None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> WorkerJobResult:
        """Render *command*'s job in the engine's worker, its frames into *sink*."""
        with self._slot_lock(_slot(engine, env)):
            deadline = time.monotonic() + timeout
            worker, fresh = self._worker(engine, command, job, ws, env, timeout)
            offset = log_path.stat().st_size if log_path.exists() else 0
            command.write_files()
            worker.attach(log_path, on_line)
            worker.jobs += 1
            request = {
                "op": "job",
                "id": worker.jobs,
                "job": {
                    "argv": command.argv[len(engine.entry_argv(job.python)) :],
                    "cwd": str(command.cwd),
                    "face": str(job.face),
                    "audio": str(job.audio),
                    "face_is_video": job.face_is_video,
                    "fps": job.fps,
                    # CUDA_VISIBLE_DEVICES confines the worker to the run's GPU: it is cuda:0 there.
                    "device": "cpu" if job.device.kind == "cpu" else "cuda",
                    "seed": _seed_of(env),
                    **(extra or {}),
                },
            }
            scope = current_scope()  # a service's cancel of this job stops this worker
            if scope is not None:
                scope.adopt(worker.proc)
            try:
                result = self._exchange(engine, worker, request, sink, deadline, timeout, ws, log_path, offset)
            finally:
                worker.attach(None, None)
                if scope is not None:
                    scope.release(worker.proc)
            result.worker = {"pid": worker.pid, "log": str(worker.log_path), "job": worker.jobs, "started_for_this_job": fresh}
            result.worker.update({k: result.info[k] for k in JOB_FACTS if k in result.info})
            _warn_faceless(engine, result.info.get("frames_without_face"))
            _warn_unrestored(result.info.get("restorer"))
            return result

    def _exchange(self, engine, worker: WorkerProcess, request, sink: FrameSink, deadline: float, timeout: float, ws, log_path: Path, offset: int) -> WorkerJobResult:
        from ..media.stream import VideoFormat

        video: VideoFormat | None = None
        frames, notes = 0, {}
        try:
            worker.send(request)
            while True:
                message, payload = worker.next_message(deadline)
                kind = message.get("type")
                if kind == "video":
                    video = VideoFormat(int(message["width"]), int(message["height"]), float(message["fps"]), str(message.get("pix_fmt", "bgr24")))
                    sink.open(video)
                elif kind == "frames":
                    assert payload is not None
                    sink.write(payload, int(message["count"]))
                    frames += int(message["count"])
                elif kind == "note":
                    notes[message["key"]] = message["value"]
                elif kind == "done":
                    break
                elif kind == "error":
                    break
                elif kind == "eof":
                    raise WorkerDied(message.get("reason", ""))
        except TimeoutError:
            sink.abort()
            worker.kill()
            self.failures += 1
            raise EngineTimeoutError(
                f"{engine.display_name} ran past the timeout of {timeout:.0f} s and its worker was stopped",
                log_path=log_path,
                log_tail=tail_lines(read_log(log_path, offset), 15),
                hint="Raise --timeout, shorten the audio (or use --chunk-seconds), or use a GPU.",
            ) from None
        except WorkerDied:
            sink.abort()
            self.failures += 1
            raise _died(engine, worker, ws, log_path, offset) from None
        except BaseException:
            sink.abort()
            worker.kill()  # Ctrl-C or a failed sink: this job's state in the worker is unknown
            raise
        worker.wait_logged(int(request["id"]))
        if message.get("type") == "error":
            sink.abort()
            worker.failed_jobs += 1
            self.failures += 1
            raise _job_error(engine, message, ws, log_path, offset, worker)
        if video is None or frames == 0:
            sink.abort()
            raise engine.missing_output(ws, "its worker sent no frames", tail_lines(read_log(log_path, offset)))
        sink.close()
        return WorkerJobResult(frames, video, float(message.get("seconds", 0.0)), {**notes, **message.get("info", {})})

    # -- the end ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every worker.  The logs of workers that had a failure stay (errors name them)."""
        for _, worker in list(self._workers.values()):
            worker.stop()
        self._workers.clear()
        keep = self.failures > 0
        if self.fallback is not None:
            self.fallback.close()
        if self._tmp is not None and self._log_dir is None:
            if keep:
                for sub in self._tmp.iterdir():
                    shutil.rmtree(sub / "work", ignore_errors=True)
                    shutil.rmtree(sub / "bin", ignore_errors=True)
            else:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> WorkerRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def workers(self) -> dict[str, int]:
        """engine@device → pid of its live worker (for tests and reports)."""
        return {slot: w.pid for slot, (_, w) in self._workers.items() if w.alive()}


#: Adapter notes that are facts about a job's frames: reported with the job
#: (``engine.worker_jobs``; the report sums ``frames_without_face``); ``restorer``:
#: --wav2lip-quality enhanced's frames restored, and those where it found no face.
JOB_FACTS = ("frames_without_face", "restorer")


def _warn_faceless(engine: Engine, faceless: dict[str, Any] | None) -> None:
    """Frames of a face video without a face passed through unchanged: say how many."""
    if not faceless or not faceless.get("count"):
        return
    count, first = int(faceless["count"]), [int(i) for i in faceless.get("first", [])]
    shown = ", ".join(map(str, first)) + (", …" if count > len(first) else "")
    log.warning(
        "%d frame%s of the face video had no face that %s could find and passed through unchanged (frame%s %s)",
        count, "" if count == 1 else "s", engine.display_name, "" if count == 1 else "s", shown,
    )  # fmt: skip


def _warn_unrestored(restorer: dict[str, Any] | None) -> None:
    """The face restorer found no face in some crops: those frames are pasted unrestored (as improved)."""
    if restorer and restorer.get("no_face_found"):
        log.warning(
            "%s found no face in the face crop of %d of %d frames; those frames were pasted without restoration",
            restorer.get("name", "the face restorer"), restorer["no_face_found"], restorer["no_face_found"] + restorer.get("restored", 0),
        )  # fmt: skip


#: Per-job variables: never a reason to start another worker.
VOLATILE_ENV = frozenset({"LIPSYNC_TOOL_SEED", "PATH"})

#: Per-job folders of a run's link farm, not part of the clone.
_JOB_DIRS = frozenset({"results", "temp", "lipsync_inputs"})


def farm_links(work: Path) -> list[tuple[str, str]]:
    """The (relative path, target) of every link in a run's link farm, sorted
    (the clone and checkpoints the job would run against)."""
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(work):
        rel_dir = Path(dirpath).relative_to(work)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in _JOB_DIRS]
        for name in [*filenames, *[d for d in dirnames if (Path(dirpath) / d).is_symlink()]]:
            path = Path(dirpath) / name
            if path.is_symlink():
                found.append((str(rel_dir / name), os.readlink(path)))
            elif path.is_file():
                found.append((str(rel_dir / name), "copy"))
    return sorted(found)


def copy_link_farm(src: Path, dst: Path, links: list[tuple[str, str]]) -> None:
    """A worker's own link farm: the same links as a run's, and copies of its
    copied files (the entry script), so it outlives the run."""
    for rel, target in links:
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if target == "copy":
            shutil.copyfile(src / rel, out)
        else:
            os.symlink(target, out)
    for name in _JOB_DIRS:
        (dst / name).mkdir(parents=True, exist_ok=True)


def _job_error(engine: Engine, message: dict[str, Any], ws, log_path: Path, offset: int, worker: WorkerProcess) -> Exception:
    text = read_log(log_path, offset)
    translated = engine.translate_error(text, 1, ws)
    if translated is not None:
        return translated
    if message.get("kind") == "usage":
        return UsageError(str(message.get("message")))
    if message.get("kind") == "dependency":
        return DependencyError(str(message.get("message")), hint="Add --install-deps, or install it into the engine's Python (--python).")
    return EngineError(
        f"{engine.display_name} failed ({message.get('error')}: {message.get('message')})",
        log_path=log_path,
        log_tail=tail_lines(text),
        hint=f"The job's log is {log_path}; the worker's own log is {worker.log_path}.",
    )

def _died(engine: Engine, worker: WorkerProcess, ws, log_path: Path, offset: int) -> Exception:
    try:
        rc = worker.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        worker.kill()
        rc = worker.proc.returncode
    worker.drain()
    text = read_log(log_path, offset)
    translated = engine.translate_error(text, rc if rc is not None else 1, ws)
    if translated is not None:
        return translated
    return EngineError(
        f"the {engine.display_name} worker (pid {worker.pid}) died during the job (exit {rc}); a new one starts for the next job",
        log_path=worker.log_path,
        log_tail=tail_lines(read_log(worker.log_path), 15),
        hint=f"The worker's log is {worker.log_path}.",
    )


def _slot(engine: Engine, env: dict[str, str]) -> str:
    """One worker per engine and device (the scheduler's lanes)."""
    return f"{engine.name}@{env.get('CUDA_VISIBLE_DEVICES', '')}"


def _seed_of(env: dict[str, str]) -> int | None:
    raw = env.get("LIPSYNC_TOOL_SEED")
    return int(raw) if raw and raw.strip().lstrip("-").isdigit() else None
