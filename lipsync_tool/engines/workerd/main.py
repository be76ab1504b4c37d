"""The warm worker's entry point: ``python main.py ADAPTER WORKDIR`` (stdlib only).

It keeps a private copy of its stdout for the protocol (see :mod:`protocol`)
and points fd 1 at stderr, so upstream's prints go to the worker's log.  Then
it loads the adapter file, puts WORKDIR (the link farm of the pinned clone)
first on ``sys.path``, and renders jobs until its stdin closes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import sys
import time
import traceback
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
# Python put this folder first on sys.path; upstream's modules must not see it.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


protocol = _load("lipsync_worker_protocol", os.path.join(_HERE, "protocol.py"))
#: GPU sizing for adapters: ``lipsync_worker.gpu``.
gpu = _load("lipsync_worker_gpu", os.path.join(_HERE, "gpu.py"))
#: Helpers loaded on first use (``blend``: numpy, OpenCV; ``face_hint``: the chosen face, plain Python;
#: ``restore``: the face restorer of --wav2lip-quality enhanced, numpy and OpenCV, GFPGAN when asked).
HELPERS = ("blend", "face_hint", "restore")


def load_helper(name: str):
    """``lipsync_worker.load_helper("blend")``: a helper module of this folder, loaded once
    in the engine's interpreter (it may import what the engine has: numpy, OpenCV)."""
    if name not in HELPERS:
        raise ImportError(f"no worker helper named {name!r}")
    module = sys.modules.get(f"lipsync_worker_{name}")
    return module if module is not None else _load(f"lipsync_worker_{name}", os.path.join(_HERE, f"{name}.py"))


class JobFailed(Exception):
    """An adapter's failure with a *kind* the parent translates (``face_not_found``, …)."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


class JobContext:
    """What an adapter's ``render(ctx)`` gets: the job, and the channel back."""

    def __init__(self, channel: Channel, job_id: int, job: dict[str, Any]):
        self._ch = channel
        self.id = job_id
        self.job = job
        self.options: dict[str, Any] = job.get("options", {})
        #: {"dir": path, "hit": bool} or None: read the preprocessing from dir
        #: (hit), or write it there for the parent to keep (miss).
        self.preprocess: dict[str, Any] | None = job.get("preprocess")
        self.frames_sent = 0
        self._frame_bytes = 0
        self.info: dict[str, Any] = {}

    def seed(self) -> None:
        """Seed random, numpy and torch with the job's seed (adapters call it
        where upstream's own run would be seeded)."""
        seed = self.job.get("seed")
        if seed is None:
            return
        random.seed(seed)
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed(seed % 2**32)
        if "torch" in sys.modules:
            sys.modules["torch"].manual_seed(seed)

    def video(self, width: int, height: int, fps: float, pix_fmt: str = "bgr24") -> None:
        """The frames that follow: *width*×*height* ``pix_fmt`` at *fps*."""
        self._frame_bytes = width * height * 3
        self._ch.send({"type": "video", "width": width, "height": height, "fps": fps, "pix_fmt": pix_fmt})

    def frames(self, batch: Any) -> None:
        """Send frames: a uint8 array (N, H, W, 3) or (H, W, 3), or raw bytes."""
        if isinstance(batch, (bytes, bytearray, memoryview)):
            data = bytes(batch)
        else:
            data = batch.tobytes() if batch.flags["C_CONTIGUOUS"] else batch.copy(order="C").tobytes()
        if not self._frame_bytes:
            raise RuntimeError("ctx.video() must come before ctx.frames()")
        count, rest = divmod(len(data), self._frame_bytes)
        if rest:
            raise RuntimeError(f"{len(data)} bytes is not a whole number of {self._frame_bytes}-byte frames")
        self._ch.send({"type": "frames", "count": count, "bytes": len(data)}, data)
        self.frames_sent += count

    def progress(self, stage: str, done: int, total: int | None = None) -> None:
        self._ch.send({"type": "progress", "stage": stage, "done": done, "total": total})

    def note(self, key: str, value: Any) -> None:
        """A fact for the run report (e.g. the preprocessing cache's hit)."""
        self.info[key] = value
        self._ch.send({"type": "note", "key": key, "value": value})


class Channel:
    def __init__(self, out: io.BufferedWriter):
        self.out = out

    def send(self, message: dict[str, Any], payload: bytes | None = None) -> None:
        self.out.write(protocol.encode(message))
        if payload is not None:
            self.out.write(payload)
        self.out.flush()


def load_adapter(path: str, workdir: str):
    """The adapter file's ``Adapter(workdir)``; it may ``import lipsync_worker``
    for :class:`JobFailed` (this module, under that name)."""
    sys.modules.setdefault("lipsync_worker", sys.modules[__name__])
    return _load("lipsync_worker_adapter", path).Adapter(workdir)


def serve(channel: Channel, adapter, stdin) -> None:
    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "quit":
            return
        job_id = int(request.get("id", 0))
        ctx = JobContext(channel, job_id, request.get("job", {}))
        started = time.monotonic()
        print(f"{protocol.END_MARK} {job_id} starts", flush=True)
        try:
            os.chdir(ctx.job.get("cwd") or adapter.workdir)
            info = adapter.render(ctx) or {}
        except BaseException as exc:
            traceback.print_exc()
            # The last line of the job in the log: the parent reads the log up to it before it translates the error.
            print(f"{protocol.END_MARK} {job_id} failed", flush=True)
            channel.send({"type": "error", "id": job_id, "error": type(exc).__name__, "message": str(exc), "kind": getattr(exc, "kind", "error")})
            if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            continue
        finally:
            os.chdir(adapter.workdir)
        seconds = round(time.monotonic() - started, 3)
        print(f"{protocol.END_MARK} {job_id} done: {ctx.frames_sent} frames in {seconds} s", flush=True)
        channel.send({"type": "done", "id": job_id, "frames": ctx.frames_sent, "seconds": seconds, "info": {**ctx.info, **info}})


def main(argv: list[str]) -> int:
    adapter_path, workdir = argv[1], os.path.abspath(argv[2])
    channel = Channel(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # upstream's prints go to the log, never into the protocol
    sys.stdout = sys.stderr
    sys.path.insert(0, workdir)
    os.chdir(workdir)
    adapter = load_adapter(adapter_path, workdir)
    adapter.workdir = workdir
    channel.send({"type": "ready", "version": protocol.VERSION, "pid": os.getpid(), "python": sys.executable})
    serve(channel, adapter, sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
