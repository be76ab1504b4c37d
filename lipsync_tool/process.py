"""Run a subprocess the way an engine needs it run.

* an argv list, never a shell;
* its own working dir and environment;
* stdout and stderr merged, streamed line by line to a log file and to a
  callback (the pipeline forwards them to ``logging`` at DEBUG and to the
  progress display);
* a new process group, so a timeout or Ctrl-C kills the whole tree: SIGTERM,
  a grace period, then SIGKILL;
* on Linux, tied to this process's life (the parent-death signal), so a
  lipsync-tool that is SIGKILLed does not leave an engine holding the GPU.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: How long a killed process group gets to exit after SIGTERM.
KILL_GRACE_SECONDS = 5.0


@dataclass
class ProcessResult:
    returncode: int
    seconds: float


class ProcessTimeout(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"timed out after {seconds:.0f} s")
        self.seconds = seconds


def _split_lines(buffer: bytes) -> tuple[list[str], bytes]:
    """Complete lines (ended by \\n or tqdm's \\r) and the unfinished rest."""
    lines: list[str] = []
    start = 0
    for i, b in enumerate(buffer):
        if b in (0x0A, 0x0D):
            if i > start:
                lines.append(buffer[start:i].decode("utf-8", "replace"))
            start = i + 1
    return lines, buffer[start:]


#: Child processes running now (engines, ffmpeg), so that an interrupt seen
#: on one thread can stop those that other threads started.
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


class CancelScope:
    """The processes of one job, so that the job alone can be stopped (a
    service's ``DELETE``): :func:`spawn` adds what it starts on a thread inside
    ``with scope:``; :meth:`cancel` kills them and every one started later."""

    def __init__(self) -> None:
        self.cancelled = False
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def adopt(self, proc: subprocess.Popen) -> None:
        """Count *proc* as this job's (killed on cancel, also when already cancelled)."""
        with self._lock:
            self._procs.add(proc)
            cancelled = self.cancelled
        if cancelled:
            kill_group(proc, grace=1.0)

    def release(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            procs = list(self._procs)
        for proc in procs:
            kill_group(proc, grace=1.0)

    def __enter__(self) -> CancelScope:
        _SCOPE.stack = [*getattr(_SCOPE, "stack", []), self]
        return self

    def __exit__(self, *exc: object) -> None:
        _SCOPE.stack = getattr(_SCOPE, "stack", [])[:-1]


_SCOPE = threading.local()


def current_scope() -> CancelScope | None:
    """The :class:`CancelScope` this thread works in, if any."""
    stack = getattr(_SCOPE, "stack", None)
    return stack[-1] if stack else None


def spawn(argv: Sequence[str], **kwargs) -> subprocess.Popen:
    """Start *argv* in its own process group, tied to this process's life, and
    remember it until :func:`forget` (see :func:`kill_all_live`, and
    :class:`CancelScope`)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(tied_to_parent(argv), start_new_session=True, **kwargs)
    with _LIVE_LOCK:
        _LIVE.add(proc)
    scope = current_scope()
    if scope is not None:
        scope.adopt(proc)
    return proc


def forget(proc: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


def kill_all_live(grace: float = 2.0) -> None:
    """Stop every child still running (Ctrl-C in a batch with worker threads)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        kill_group(proc, grace=grace)


def kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the process group, wait up to *grace*, then SIGKILL it."""
    if proc.poll() is not None:
        _reap_group(proc.pid)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    _reap_group(proc.pid)


def _reap_group(pgid: int) -> None:
    # Children that outlived the leader (e.g. an ffmpeg upstream started) die too.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


#: Sets the parent-death signal, then becomes the real command (execvp keeps it).
_TIE_TO_PARENT = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:  # the parent died before the signal was armed
    sys.exit(137)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def tied_to_parent(argv: Sequence[str]) -> list[str]:
    """*argv*, started so that it is killed when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    # -I -S: the launcher needs nothing from the engine's PYTHONPATH or site.
    return [sys.executable, "-I", "-S", "-c", _TIE_TO_PARENT, str(os.getpid()), *argv]


def _pump(proc: subprocess.Popen, logfile, log_path: Path, on_line: Callable[[str], None] | None) -> None:
    """Copy *proc*'s output to *logfile* and, line by line, to *on_line*.
    Whatever happens here, keep draining the pipe: a child blocked on a full
    pipe would hang until the timeout."""
    assert proc.stdout is not None
    rest = b""
    writing, calling = True, on_line is not None
    while True:
        chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(65536)
        if not chunk:
            break
        if writing:
            try:
                logfile.write(chunk)
                logfile.flush()
            except (OSError, ValueError) as exc:  # a full disk, or the log closed: the run goes on, the log stops
                log.warning("cannot write %s any more: %s", log_path, exc)
                writing = False
        if calling:
            lines, rest = _split_lines(rest + chunk)
            try:
                for line in lines:
                    on_line(line)  # type: ignore[misc]
            except Exception:  # a progress callback must not stop the drain (logged)
                log.exception("the engine output callback failed; output goes to the log only")
                calling = False
    if rest and calling:
        try:
            on_line(rest.decode("utf-8", "replace"))  # type: ignore[misc]
        except Exception:  # noqa: BLE001
            pass


def run_logged(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ProcessResult:
    """Run *argv*, appending its output to *log_path*.  Raises ProcessTimeout."""
    started = time.monotonic()
    with open(log_path, "ab") as logfile:
        proc = spawn(argv, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log.debug("started pid %d: %s", proc.pid, list(argv))
        reader = threading.Thread(target=_pump, args=(proc, logfile, log_path, on_line), name="engine-log", daemon=True)
        reader.start()
        try:
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                reader.join(timeout=5)
                raise ProcessTimeout(timeout or 0) from None
        except BaseException:
            # Ctrl-C, SIGTERM turned into an exception, or the timeout above.
            kill_group(proc)
            raise
        finally:
            forget(proc)
        _reap_group(proc.pid)
        reader.join(timeout=30)  # the pipe is at EOF once the group is gone
    return ProcessResult(returncode=returncode, seconds=time.monotonic() - started)
