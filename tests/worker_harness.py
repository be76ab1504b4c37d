"""Drive a warm worker's child side directly (tests only): start
``workerd/main.py`` with an adapter, send jobs, collect what comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync_tool.engines.compat import compat_env
from lipsync_tool.engines.workerd import protocol

WORKERD = Path(__file__).resolve().parents[1] / "lipsync_tool" / "engines" / "workerd"


@dataclass
class JobResult:
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    video: dict[str, Any] | None = None
    frames: bytes = b""
    notes: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def array(self):
        """The frames as a uint8 array (N, H, W, 3)."""
        import numpy as np

        assert self.video is not None
        w, h = self.video["width"], self.video["height"]
        return np.frombuffer(self.frames, dtype=np.uint8).reshape(-1, h, w, 3)


class Worker:
    def __init__(self, adapter: Path, workdir: Path, *, python: str = sys.executable, log: Path, seed: int | None = 0, trusted: list[str] = (), extra_env: dict[str, str] | None = None):
        env = dict(os.environ)
        env.update(compat_env(env.get("PYTHONPATH", ""), seed=seed, trusted=list(trusted), url_map={}))
        env.update({"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
        env.update(extra_env or {})
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([python, str(WORKERD / "main.py"), str(adapter), str(workdir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.ready, _ = protocol.read_message(self.proc.stdout)
        self.next_id = 1

    def job(self, job: dict[str, Any], *, timeout: float = 900.0) -> JobResult:
        """Run *job*; past *timeout* seconds the child is killed (the read then ends)."""
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            return self._job(job)
        finally:
            timer.cancel()

    def _job(self, job: dict[str, Any]) -> JobResult:
        job_id, self.next_id = self.next_id, self.next_id + 1
        self.proc.stdin.write((json.dumps({"op": "job", "id": job_id, "job": job}) + "\n").encode())
        self.proc.stdin.flush()
        result = JobResult()
        parts = []
        while True:
            message, payload = protocol.read_message(self.proc.stdout)
            result.messages.append(message)
            kind = message["type"]
            if kind == "video":
                result.video = message
            elif kind == "frames":
                parts.append(payload)
            elif kind == "note":
                result.notes[message["key"]] = message["value"]
            elif kind == "done":
                result.done = message
                break
            elif kind == "error":
                result.error = message
                break
        result.frames = b"".join(parts)
        return result

    def close(self) -> int:
        try:
            self.proc.stdin.write(b'{"op": "quit"}\n')
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait(timeout=60)
        self.log.close()
        return rc
