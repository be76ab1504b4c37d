"""The error tree of lipsync-tool.

Library code raises these; only ``cli.py`` turns them into messages and exit
codes (one table, ``cli.EXIT_CODES``).  Every error can carry a ``hint`` that
tells the user what to do next, and ``subject`` names the file or option that
the problem is about, so the CLI can print ``Error: <subject>: <problem>``.
"""

from __future__ import annotations

from pathlib import Path


class LipsyncError(Exception):
    """Base class of every error lipsync-tool raises on purpose."""

    def __init__(self, message: str, *, subject: str | Path | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.subject = str(subject) if subject is not None else None
        self.hint = hint
        #: The run's temp dir, kept for debugging, when the failure left one.
        self.temp_dir: Path | None = None
        #: The run report at the time of the failure (set by the pipeline).
        self.report: dict | None = None

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}" if self.subject else self.message


# -- the user's side: bad usage, bad input (exit 2) ---------------------------------------


class UsageError(LipsyncError):
    """An option or a combination of options that cannot work."""


class RegistryFileError(UsageError):
    """A registry override file that is malformed or names something unknown."""


class InputError(LipsyncError):
    """An input file that is missing, unreadable, or unsuitable."""


class FaceNotFoundError(InputError):
    """No face in the image (found by the pre-check or by the engine)."""


class OutputPathError(InputError):
    """The output path cannot be written."""


class OfflineError(LipsyncError):
    """Offline mode, and something that must be downloaded is missing."""

    def __init__(self, missing: list[str], *, hint: str | None = None):
        listing = "\n".join(f"  - {m}" for m in missing)
        super().__init__(f"offline mode, and {len(missing)} file(s) are not in the cache:\n{listing}", hint=hint)
        self.missing = missing


class DeviceError(UsageError):
    """The requested device is not usable."""


# -- failures while running (exit 1) ------------------------------------------------------


class RunError(LipsyncError):
    """Something failed while running (an engine, a download, ffmpeg)."""


class DependencyError(RunError):
    """A required program or Python package is missing."""


class FFmpegError(RunError):
    """ffmpeg failed."""

    def __init__(self, message: str, *, argv: list[str] | None = None, stderr_tail: str = "", hint: str | None = None):
        detail = f"{message}\n{stderr_tail.rstrip()}" if stderr_tail.strip() else message
        super().__init__(detail, subject="ffmpeg", hint=hint)
        self.argv = argv or []
        self.stderr_tail = stderr_tail


class ResourceError(RunError):
    """The engine's repository or checkpoints could not be made ready."""


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


class NetworkUnavailableError(DownloadError):
    """Every mirror failed because no host name could be resolved: there seems to be no network."""

    def __init__(self, name: str, attempts: list[tuple[str, str]], hosts: list[str], *, hint: str | None = None):
        super().__init__(name, attempts, hint=hint)
        self.hosts = list(hosts)
        names = ", ".join(self.hosts) or "the mirrors' hosts"
        self.message = f"could not download: there seems to be no network (could not resolve {names}; tried {len(attempts)} mirror(s), each once)"
        self.args = (self.message,)
