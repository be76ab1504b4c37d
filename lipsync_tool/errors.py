"""The error tree of lipsync-tool.

Library code raises these; only the CLI turns them into messages and exit
codes, reading each error's ``category`` and ``exit_code`` (see :data:`CATEGORIES`).  Every error can carry a ``hint`` that
tells the user what to do next, and ``subject`` names the file or option that
the problem is about, so the CLI can print ``Error: <subject>: <problem>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

#: Who has to act, and so how a front end reports it.  The CLI's exit code and
#: (later) the HTTP status are read from the error's class, never from a table
#: of types: ``input`` (the user's files or options; exit 2), ``environment``
#: (this machine, network, cache or dependencies; exit 1, or 2 where the user
#: chose it, as with --offline), ``engine`` (the upstream run or ffmpeg
#: failed; exit 1), ``interrupted`` (Ctrl-C or SIGTERM; exit 130), ``busy``
#: (a service's queue is full: come back later; HTTP 429), ``forbidden`` (a
#: service's client named a path outside its root; HTTP 403; exit 2) and
#: ``cancelled`` (a service's client cancelled the job; exit 130).
CATEGORIES = ("input", "environment", "engine", "interrupted", "busy", "forbidden", "cancelled")


class LipsyncError(Exception):
    """Base class of every error lipsync-tool raises on purpose."""

    category: ClassVar[str] = "engine"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, subject: str | Path | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.subject = str(subject) if subject is not None else None
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}" if self.subject else self.message

    def to_dict(self) -> dict[str, str | None]:
        """The error as a report entry (run reports, batch and compare results)."""
        return {"type": type(self).__name__, "message": self.message, "subject": self.subject, "hint": self.hint}


# -- the user's side: bad usage, bad input (exit 2) ---------------------------------------


class UsageError(LipsyncError):
    """An option or a combination of options that cannot work."""

    category: ClassVar[str] = "input"
    exit_code: ClassVar[int] = 2


class RegistryFileError(UsageError):
    """A registry override file that is malformed or names something unknown."""


class InputError(LipsyncError):
    """An input file that is missing, unreadable, or unsuitable."""

    category: ClassVar[str] = "input"
    exit_code: ClassVar[int] = 2


class ForbiddenPathError(InputError):
    """A path that a service's client named leaves the service's root."""

    category: ClassVar[str] = "forbidden"


class FaceNotFoundError(InputError):
    """No face in the image (found by the pre-check or by the engine)."""


class OutputPathError(InputError):
    """The output path cannot be written."""


class OfflineError(LipsyncError):
    """Offline mode, and something that must be downloaded is missing."""

    category: ClassVar[str] = "environment"
    exit_code: ClassVar[int] = 2

    def __init__(self, missing: list[str], *, hint: str | None = None):
        listing = "\n".join(f"  - {m}" for m in missing)
        super().__init__(f"offline mode, and {len(missing)} file(s) are not in the cache:\n{listing}", hint=hint)
        self.missing = missing


class DeviceError(UsageError):
    """The requested device is not usable."""


# -- failures while running (exit 1) ------------------------------------------------------


class RunError(LipsyncError):
    """Something failed while running (an engine, a download, ffmpeg)."""

    category: ClassVar[str] = "engine"
    exit_code: ClassVar[int] = 1


class DependencyError(RunError):
    """A required program or Python package is missing."""

    category: ClassVar[str] = "environment"
    exit_code: ClassVar[int] = 1


class FFmpegError(RunError):
    """ffmpeg failed."""

    def __init__(self, message: str, *, argv: list[str] | None = None, stderr_tail: str = "", hint: str | None = None):
        detail = f"{message}\n{stderr_tail.rstrip()}" if stderr_tail.strip() else message
        super().__init__(detail, subject="ffmpeg", hint=hint)
        self.argv = argv or []
        self.stderr_tail = stderr_tail


class ResourceError(RunError):
    """The engine's repository or checkpoints could not be made ready."""

    category: ClassVar[str] = "environment"
    exit_code: ClassVar[int] = 1


class RepoError(ResourceError):
    """Cloning or checking out the pinned upstream repository failed."""


class DownloadError(ResourceError):
    """Every mirror of a checkpoint failed."""

    def __init__(self, name: str, attempts: list[tuple[str, str]], *, hint: str | None = None):
        tried = "\n".join(f"  - {url}: {why}" for url, why in attempts)
        super().__init__(f"could not download from any mirror; tried:\n{tried}", subject=name, hint=hint)
        self.name = name
        self.attempts = attempts


class ChecksumError(ResourceError):
    """A file whose size or sha256 does not match the registry."""


class EngineError(RunError):
    """The engine's process failed."""

    def __init__(self, message: str, *, log_path: Path | None = None, log_tail: str = "", hint: str | None = None, subject: str | None = None):
        detail = message
        if log_tail.strip():
            detail += "\n--- last lines of " + (str(log_path) if log_path else "the engine log") + " ---\n" + log_tail.rstrip()
        super().__init__(detail, subject=subject, hint=hint)
        self.log_path = log_path
        self.log_tail = log_tail


class EngineOutputMissingError(EngineError):
    """The engine exited 0 but left no (or an empty) output."""


class EngineTimeoutError(EngineError):
    """The engine ran past its timeout and was killed."""


class EngineOOMError(EngineError):
    """The engine ran out of GPU memory."""


class Interrupted(LipsyncError):
    """The run was interrupted (Ctrl-C or SIGTERM)."""

    category: ClassVar[str] = "interrupted"
    exit_code: ClassVar[int] = 130


class Cancelled(LipsyncError):
    """A job its client cancelled (a service's ``DELETE``): it ends that job
    alone, where :class:`Interrupted` ends the whole run."""

    category: ClassVar[str] = "cancelled"
    exit_code: ClassVar[int] = 130


class NetworkUnavailableError(DownloadError):
    """Every mirror failed because no host name could be resolved: there seems to be no network."""

    def __init__(self, name: str, attempts: list[tuple[str, str]], hosts: list[str], *, hint: str | None = None):
        super().__init__(name, attempts, hint=hint)
        self.hosts = list(hosts)
        names = ", ".join(self.hosts) or "the mirrors' hosts"
        self.message = f"could not download: there seems to be no network (could not resolve {names}; tried {len(attempts)} mirror(s), each once)"
        self.args = (self.message,)


def error_dict(exc: BaseException) -> dict[str, str | None]:
    """Any exception as a report entry: a :class:`LipsyncError`'s
    :meth:`~LipsyncError.to_dict`, else its type and message."""
    if isinstance(exc, LipsyncError):
        return exc.to_dict()
    return {"type": type(exc).__name__, "message": str(exc)}


class QueueFullError(LipsyncError):
    """A service's job queue is full; the client should retry after ``retry_after`` seconds."""

    category: ClassVar[str] = "busy"

    def __init__(self, message: str, *, retry_after: int = 5, hint: str | None = None):
        super().__init__(message, hint=hint or f"Try again in {retry_after} s.")
        self.retry_after = retry_after

