"""The engine contract.

An engine adapter is data plus two pure functions:

* ``repo`` and ``checkpoints`` say what upstream code and weights it needs;
* ``required_checkpoints(options, run)`` picks the few the chosen options need;
* ``build_command(job, options, ws)`` returns the exact upstream argv (no I/O);
* ``find_output(ws)`` finds upstream's result or raises with the log tail.

Everything that touches the disk, the network or a process lives elsewhere
(``resources``, ``process``, ``pipeline``), so adapters are tested by their
exact argv.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..errors import EngineError, EngineOutputMissingError, LipsyncError

#: Characters a path may hold and still survive upstream's ``shell=True`` and
#: ``split('.')`` handling.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9/_+-]+(\.[a-z0-9]+)?$")


def is_safe_path(p: str) -> bool:
    return bool(_SAFE_PATH.match(p))


@dataclass(frozen=True)
class RepoSpec:
    """An upstream repository pinned to a full commit (never a branch)."""

    url: str
    commit: str
    #: Paths left out of the checkout (some copies of SadTalker lack these blobs).
    sparse_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{40}", self.commit):
            raise ValueError(f"commit must be a full 40-character sha1, not {self.commit!r}")


@dataclass(frozen=True)
class CheckpointSpec:
    """One file an engine needs: where to get it, what it must be, where it goes."""

    name: str
    urls: tuple[str, ...]
    size: int
    sha256: str
    #: Path relative to the engine's working dir where upstream looks for it.
    dest: str
    licence: str = ""
    #: A URL upstream downloads at run time that this file stands in for.
    serves_url: str = ""


@dataclass(frozen=True)
class Device:
    """The device a run uses, resolved before the engine starts."""

    kind: str  # "cpu" or "cuda"
    index: int | None = None
    reason: str = ""
    #: The CUDA_VISIBLE_DEVICES entry of GPU *index* (under a scheduler that
    #: already restricts the visible GPUs, cuda:0 may be physical GPU 3).
    visible_id: str | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    def env(self) -> dict[str, str]:
        """Environment that confines the engine's process to this device."""
        if self.kind == "cpu":
            return {"CUDA_VISIBLE_DEVICES": ""}
        if self.index is not None:
            return {"CUDA_VISIBLE_DEVICES": self.visible_id if self.visible_id is not None else str(self.index)}
        return {}


@dataclass(frozen=True)
class Job:
    """The staged inputs of one engine run, as the engine must see them."""

    face: Path
    audio: Path
    face_is_video: bool
    fps: float
    resolution: int
    device: Device
    python: str


@dataclass(frozen=True)
class Workspace:
    """A run's private directory tree.

    ``root/``
        ``inputs/``  staged inputs (safe names)
        ``work/``    the engine's working dir: a link farm of the pinned
                     repository plus its checkpoints, so that upstream's
                     relative paths resolve and the cache is never written
        ``results/`` where the engine is told to write
        ``engine.log``
    """

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def results(self) -> Path:
        return self.work / "results"

    @property
    def log(self) -> Path:
        return self.root / "engine.log"

    @property
    def inputs_link(self) -> Path:
        """``work/lipsync_inputs`` → ``inputs/``: a safe relative spelling."""
        return self.work / "lipsync_inputs"

    def engine_path(self, p: Path) -> str:
        """The spelling of *p* to hand upstream: absolute when that is safe for
        upstream's string handling (no dots but the extension's, no spaces),
        otherwise through the working dir's ``lipsync_inputs`` link."""
        absolute = str(p.absolute())
        if is_safe_path(absolute):
            return absolute
        return f"{self.inputs_link.name}/{p.name}"


@dataclass(frozen=True)
class Command:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def display(self) -> str:
        import shlex

        return shlex.join(self.argv)


def format_number(x: float) -> str:
    """``25.0`` → ``"25"``, ``1.3`` → ``"1.3"`` (argv spelling)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def tail_lines(text: str, n: int = 25) -> str:
    return "\n".join(text.splitlines()[-n:])


def is_cuda_oom(text: str) -> bool:
    return "CUDA out of memory" in text or "OutOfMemoryError" in text


def field_cli(flag: str, *, help: str, metavar: str | None = None, aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    """Metadata for an engine option's CLI flag (``Field(json_schema_extra=...)``)."""
    return {"cli": {"flag": flag, "help": help, "metavar": metavar, "aliases": list(aliases)}}


class EngineOptions(BaseModel):
    """Base of every engine's options model: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def resolved(self) -> EngineOptions:
        """The options with presets applied and defaults filled in."""
        return self


class Engine(ABC):
    name: ClassVar[str]
    display_name: ClassVar[str]
    Options: ClassVar[type[EngineOptions]]
    repo: ClassVar[RepoSpec]
    checkpoints: ClassVar[tuple[CheckpointSpec, ...]]
    #: Shown once before the first download of this engine's weights.
    licence_notice: ClassVar[str] = ""
    #: The entry script, relative to the repository root.
    entry_script: ClassVar[str] = "inference.py"
    supports_video_face: ClassVar[bool] = False
    #: Requirement specifiers for ``--install-deps``, in install order.
    #: Each item is (pip arguments, requirement strings).
    requirements: ClassVar[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = ()
    #: Whether upstream's (--)resolution means anything for this engine.
    uses_resolution: ClassVar[bool] = False
    #: Whether upstream renders at --fps natively (otherwise the upscale converts).
    native_fps: ClassVar[bool] = False
    #: --chunk-seconds when the user gives none (None: long audio stays whole).
    default_chunk_seconds: ClassVar[float | None] = None
    #: The file (as upstream spells it) of upstream's final mux, which the
    #: tool's ffmpeg turns into a video stream copy (the tool encodes once).
    ffmpeg_copy_video_to: ClassVar[str | None] = None

    def checkpoint(self, name: str) -> CheckpointSpec:
        for spec in self.checkpoints:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @abstractmethod
    def required_checkpoints(self, options: EngineOptions, resolution: int) -> list[CheckpointSpec]:
        """The registry entries these options need (user-supplied files excluded)."""

    def user_files(self, options: EngineOptions) -> dict[str, Path]:
        """Files the user supplied instead of registry entries: dest → path."""
        return {}

    @abstractmethod
    def build_command(self, job: Job, options: EngineOptions, ws: Workspace) -> Command:
        """The upstream argv for *job*.  Pure: no I/O."""

    @abstractmethod
    def find_output(self, ws: Workspace, log_text: str) -> Path:
        """The video upstream wrote, or ``EngineOutputMissingError``."""

    def staged_refs(self, options: EngineOptions) -> dict[str, Path]:
        """Extra input videos to stage into ``inputs/<name>.mp4`` (name → source)."""
        return {}

    def translate_error(self, log_text: str, returncode: int, ws: Workspace) -> LipsyncError | None:
        """A typed error for a known upstream failure in *log_text*, else None."""
        return None

    def validate(self, options: EngineOptions, *, face_is_video: bool) -> None:
        """Reject option combinations upstream cannot honour (UsageError)."""

    # helpers shared by adapters -------------------------------------------------

    @staticmethod
    def missing_output(ws: Workspace, what: str, log_tail: str) -> EngineOutputMissingError:
        return EngineOutputMissingError(
            f"the engine exited without an error but {what}",
            log_path=ws.log,
            log_tail=log_tail,
            hint=f"Read {ws.log} for upstream's own messages.",
        )

    @staticmethod
    def failed(message: str, ws: Workspace, log_tail: str, hint: str | None = None) -> EngineError:
        return EngineError(message, log_path=ws.log, log_tail=log_tail, hint=hint)
