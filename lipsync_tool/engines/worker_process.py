"""One warm worker's child process: started, fed jobs, its log pumped, stopped.

:class:`WorkerProcess` is what :class:`~lipsync_tool.engines.worker.WorkerRunner`
keeps per engine and device (see docs/workers.md).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Engine
from .workerd import protocol

WORKERD = Path(__file__).with_name("workerd")


class WorkerDied(Exception):
    pass


class WorkerProcess:
    """One child: started, fed jobs, stopped."""

    def __init__(self, engine: Engine, python: str, workdir: Path, env: dict[str, str], log_path: Path):
        from ..process import spawn

        self.engine, self.workdir, self.log_path = engine, workdir, log_path
        self.jobs = 0
        self.failed_jobs = 0
        self._job_log = None  # the current job's engine.log (a file object)
        self._on_line: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        #: The ids of jobs whose last log line ("done"/"failed") the pump has written.
        self._ended: set[int] = set()
        self._ended_cv = threading.Condition()
        self._log = open(log_path, "ab")
        argv = [python, str(WORKERD / "main.py"), str(engine.worker_adapter), str(workdir)]
        self.proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.messages: queue.Queue = queue.Queue()
        self._stderr_pump = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_pump.start()
        threading.Thread(target=self._pump_messages, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- the child's output ------------------------------------------------------------

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            ended = _ended_job(raw)
            with self._lock:
                self._log.write(raw)
                self._log.flush()
                if self._job_log is not None:
                    self._job_log.write(raw)
                    self._job_log.flush()
                on_line = self._on_line
            if ended is not None:
                with self._ended_cv:
                    self._ended.add(ended)
                    self._ended_cv.notify_all()
            if on_line is not None:
                for line in raw.decode("utf-8", "replace").replace("\r", "\n").splitlines():
                    if line.strip():
                        on_line(line)

    def _pump_messages(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                self.messages.put(protocol.read_message(self.proc.stdout))
        except (EOFError, protocol.ProtocolError, OSError, ValueError) as exc:
            self.messages.put(({"type": "eof", "reason": str(exc)}, None))

    def drain(self, timeout: float = 10.0) -> None:
        """After the child ended: until its last log lines are written."""
        self._stderr_pump.join(timeout)

    def wait_logged(self, job_id: int, timeout: float = 10.0) -> None:
        """Until the job's last log line is in the log (the log and the channel are separate pipes)."""
        with self._ended_cv:
            self._ended_cv.wait_for(lambda: job_id in self._ended, timeout=timeout)

    def next_message(self, deadline: float) -> tuple[dict[str, Any], bytes | None]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            return self.messages.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        message, _ = self.next_message(time.monotonic() + timeout)
        if message.get("type") != "ready":
            raise WorkerDied(message.get("reason") or f"the worker said {message!r} before it was ready")
        return message

    # -- jobs ------------------------------------------------------------------------------

    def attach(self, job_log: Path | None, on_line: Callable[[str], None] | None) -> None:
        with self._lock:
            if self._job_log is not None:
                self._job_log.close()
            self._job_log = open(job_log, "ab") if job_log is not None else None
            self._on_line = on_line

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message, default=str) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerDied(f"cannot send to the worker: {exc}") from None

    def stop(self, grace: float = 10.0) -> int | None:
        from ..process import forget, kill_group

        try:
            if self.alive():
                self.send({"op": "quit"})
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=grace)
        except (WorkerDied, OSError, subprocess.TimeoutExpired):
            pass
        kill_group(self.proc, grace=2.0)
        forget(self.proc)
        self.attach(None, None)
        with self._lock:
            self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        from ..process import forget, kill_group

        kill_group(self.proc, grace=1.0)
        forget(self.proc)


def _ended_job(raw: bytes) -> int | None:
    """The job id of a ``<END_MARK> <id> done: …`` or ``… failed`` log line."""
    mark = protocol.END_MARK.encode()
    if not raw.startswith(mark):
        return None
    words = raw[len(mark) :].split()
    if len(words) >= 2 and words[1].rstrip(b":") in (b"done", b"failed") and words[0].isdigit():
        return int(words[0])
    return None
