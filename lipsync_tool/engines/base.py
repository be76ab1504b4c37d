"""The engine contract.

An engine adapter is data plus a few pure functions:

* ``repo`` and ``checkpoints`` say what upstream code and weights it needs;
* ``required_checkpoints(options)`` picks the few the chosen options need;
* ``build_command(job, options, ws)`` returns the exact upstream argv, plus
  any small files to write into the working dir (no I/O);
* ``find_output(ws)`` finds upstream's result or raises with the log tail;
* ``face_input``, ``entry_script``/``entry_module`` and the hooks
  (``face_check_wanted``, ``face_hints``, ``run_warnings``) say what the
  shared code must do differently for this engine, so that it never has to
  name one.

Everything that touches the disk, the network or a process lives elsewhere
(``resources``, ``process``, ``pipeline``), so adapters are tested by their
exact argv.  A new engine is one module in this package plus its tests.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr
from pydantic.fields import FieldInfo

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
    device: Device
    python: str
    #: The face to animate (``--face-index``, the advisor's choice): a ``workerd.face_hint.FaceHint``; None: the engine's detector picks.
    face_hint: Any = None


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
    """One engine run: the argv, where it runs, its extra environment, and the
    files to write first.

    ``files`` maps a path relative to ``cwd`` to its content (text or bytes):
    small per-job inputs such as a config file, which a runner writes with
    :meth:`write_files` just before it starts the command.
    """

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str | bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rel in self.files:
            parts = Path(rel).parts
            if not parts or Path(rel).is_absolute() or ".." in parts:
                raise ValueError(f"Command.files paths must be relative and inside the working dir, not {rel!r}")

    def display(self) -> str:
        import shlex

        return shlex.join(self.argv)

    def write_files(self) -> list[Path]:
        """Write ``files`` under ``cwd``; returns the paths written.

        The working dir is a link farm into the cache, so a link in the way is
        replaced, never written through, and a linked directory is refused.
        """
        written = []
        for rel, content in self.files.items():
            target = self.cwd / rel
            for parent in list(reversed(Path(rel).parents))[1:]:
                if (self.cwd / parent).is_symlink():
                    raise EngineError(f"cannot write {rel}: {parent} is a link into the cache", subject=target)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():
                target.unlink()
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
            written.append(target)
        return written


def format_number(x: float) -> str:
    """``25.0`` → ``"25"``, ``1.3`` → ``"1.3"`` (argv spelling)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def tail_lines(text: str, n: int = 25) -> str:
    return "\n".join(text.splitlines()[-n:])


def is_cuda_oom(text: str) -> bool:
    return "CUDA out of memory" in text or "OutOfMemoryError" in text


#: What another engine does with this option: refuse it (the default), or
#: accept it and warn that it ignores it (for a flag that once was common).
Elsewhere = Literal["reject", "warn"]


def field_cli(flag: str, *, help: str, metavar: str | None = None, aliases: tuple[str, ...] = (), elsewhere: Elsewhere = "reject") -> dict[str, Any]:
    """Metadata for an engine option's CLI flag (``Field(json_schema_extra=...)``);
    read it back with :func:`option_meta`."""
    return {"cli": {"flag": flag, "help": help, "metavar": metavar, "aliases": list(aliases), "elsewhere": elsewhere}}


@dataclass(frozen=True)
class OptionMeta:
    """An engine option's CLI metadata, as :func:`field_cli` wrote it."""

    #: As Typer takes it, e.g. ``--still/--no-still``.
    flag: str
    help: str = ""
    metavar: str | None = None
    #: Extra values a ``Literal`` option accepts on the command line.
    aliases: tuple[str, ...] = ()
    elsewhere: Elsewhere = "reject"

    @property
    def name(self) -> str:
        """The flag that names the option in messages, e.g. ``--still``."""
        return self.flag.split("/")[0]


def option_meta(info: FieldInfo) -> OptionMeta | None:
    """The CLI metadata of a field of an options model, or None when the field
    has no flag.  The one reader of ``json_schema_extra["cli"]``."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    cli = extra.get("cli")
    if not isinstance(cli, dict):
        return None
    return OptionMeta(
        flag=cli["flag"],
        help=cli.get("help") or "",
        metavar=cli.get("metavar"),
        aliases=tuple(cli.get("aliases") or ()),
        elsewhere=cli.get("elsewhere") or "reject",
    )


class EngineOptions(BaseModel):
    """Base of every engine's options model: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: Options of other engines that were given and that this engine ignores
    #: (those declared with ``elsewhere="warn"``); set by ``engines.make_options``.
    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @property
    def ignored(self) -> tuple[str, ...]:
        return self._ignored

    def resolved(self) -> EngineOptions:
        """The options with presets applied and defaults filled in."""
        return self

    @classmethod
    def cli_options(cls) -> dict[str, OptionMeta]:
        """Field name → CLI metadata, for the fields that have a flag."""
        found = {}
        for name, info in cls.model_fields.items():
            meta = option_meta(info)
            if meta is not None:
                found[name] = meta
        return found


FaceInput = Literal["image", "video", "either"]


class Engine(ABC):
    name: ClassVar[str]
    display_name: ClassVar[str]
    Options: ClassVar[type[EngineOptions]]
    repo: ClassVar[RepoSpec]
    checkpoints: ClassVar[tuple[CheckpointSpec, ...]]
    #: Shown once before the first download of this engine's weights.
    licence_notice: ClassVar[str] = ""
    #: The entry script, relative to the repository root ...
    entry_script: ClassVar[str | None] = "inference.py"
    #: ... or the module run as ``python -m`` (it wins when both are set).
    entry_module: ClassVar[str | None] = None
    #: What the face input may be: a still image, a video, or either.
    face_input: ClassVar[FaceInput] = "image"
    #: Requirement specifiers for ``--install-deps``, in install order.
    #: Each item is (pip arguments, requirement strings).
    requirements: ClassVar[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = ()
    #: Whether upstream renders at --fps natively (otherwise the upscale converts).
    native_fps: ClassVar[bool] = False
    #: --chunk-seconds when the user gives none (None: long audio stays whole).
    default_chunk_seconds: ClassVar[float | None] = None
    #: The file (as upstream spells it) of upstream's final mux, which the
    #: tool's ffmpeg turns into a video stream copy (the tool encodes once).
    ffmpeg_copy_video_to: ClassVar[str | None] = None
    #: The warm worker's adapter file (docs/workers.md); None: the engine runs
    #: only as a subprocess.
    worker_adapter: ClassVar[str | None] = None
    #: The engine option that sets the generator's batch size (the worker
    #: sizes it from free VRAM when the user leaves it unset on a GPU).
    batch_size_option: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Plug-ins written before face_input said supports_video_face = True.
        legacy = cls.__dict__.get("supports_video_face")
        if isinstance(legacy, bool) and "face_input" not in cls.__dict__:
            cls.face_input = "either" if legacy else "image"

    @property
    def supports_video_face(self) -> bool:
        return self.face_input != "image"

    @property
    def supports_image_face(self) -> bool:
        return self.face_input != "video"

    # -- how upstream is started ---------------------------------------------------

    def entry_argv(self, python: str) -> list[str]:
        """The start of the argv: the interpreter and the script or module."""
        if self.entry_module:
            return [python, "-m", self.entry_module]
        if not self.entry_script:
            raise TypeError(f"engine {self.name!r} sets neither entry_script nor entry_module")
        return [python, self.entry_script]

    @property
    def entry_file(self) -> str:
        """The file that must exist at the pinned commit (a module's ``.py``;
        an engine whose module is a package overrides this)."""
        if self.entry_module:
            return self.entry_module.replace(".", "/") + ".py"
        return self.entry_script or ""

    @property
    def entry_copy(self) -> str | None:
        """The script to copy (not link) into the working dir, so that
        ``sys.path[0]`` is the working dir; None for a module (``-m`` puts
        the working dir first anyway)."""
        return None if self.entry_module else self.entry_script

    # -- hooks for the shared pipeline (the defaults suit most engines) ---------------

    def preprocess_key(self, options: EngineOptions) -> dict[str, Any] | None:
        """The options that change the worker's cached face preprocessing (with
        the face's content, commit and checkpoints they make its key); None:
        these options preprocess nothing worth caching."""
        return None

    #: Whether the portrait advisor (``lipsync-tool check``: face-alignment in the engine's interpreter) runs
    #: before each job on a still portrait, after the face pre-check (``--skip-face-check`` skips both).
    portrait_advice: ClassVar[bool] = True

    def check_runner(self, options: EngineOptions, runner_kind: str) -> None:
        """Raise a UsageError for options this runner kind (``worker`` or ``subprocess``) cannot honour."""

    #: The runner kinds under which the engine animates the face ``Job.face_hint`` chooses (``--face-index``); none by
    #: default, so an engine that never reads a hint is refused rather than left to animate another face.
    face_hint_runners: ClassVar[tuple[str, ...]] = ()

    def face_check_wanted(self, options: EngineOptions) -> bool:
        """Whether the pipeline's face pre-check is worth running (False where
        the options already place the face)."""
        return True

    def face_hints(self, options: EngineOptions) -> list[str]:
        """Extra things to try, named in the pre-check's no-face hint."""
        return []

    def run_warnings(self, options: EngineOptions, device: Device) -> list[str]:
        """Warnings about options this run will not honour on *device*."""
        from . import engine_classes, flag_of

        def owners(name: str) -> str:
            return " and ".join(c.display_name for c in engine_classes().values() if name in c.Options.model_fields)

        return [f"{flag_of(name)} applies to {owners(name)} only; {self.display_name} ignores it" for name in options.ignored]

    def requirements_for(self, options: EngineOptions | None = None) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
        """The ``--install-deps`` steps these options need: :attr:`requirements`, plus what an option adds."""
        return self.requirements

    def option_packages(self, options: EngineOptions) -> dict[str, str]:
        """Distributions these options need in the engine's interpreter beyond the defaults, each with the
        flag that needs it (checked before anything is downloaded; ``--install-deps`` installs them)."""
        return {}

    def checkpoint(self, name: str) -> CheckpointSpec:
        for spec in self.checkpoints:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @abstractmethod
    def required_checkpoints(self, options: EngineOptions) -> list[CheckpointSpec]:
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


class EngineRunner(ABC):
    """How an engine's :class:`Command` runs.

    The pipeline builds the command and its environment; a runner executes it
    and hands back the video the engine wrote.  ``SubprocessRunner``
    (:mod:`lipsync_tool.engines.runner`) starts a fresh process per job;
    ``WorkerRunner`` (:mod:`lipsync_tool.engines.worker`) keeps the models
    loaded in a warm worker and can also stream the frames (:meth:`streams_for`).
    """

    #: What the report calls this runner.
    kind: ClassVar[str] = "subprocess"

    def kind_for(self, engine: Engine) -> str:
        """How *engine*'s jobs run here ("worker" or "subprocess")."""
        return self.kind

    def streams_for(self, engine: Engine) -> bool:
        """Whether :meth:`stream` (frames straight into the encoders) serves *engine*."""
        return False

    def close(self) -> None:
        """Release what the runner keeps between jobs (warm workers)."""

    @abstractmethod
    def run(
        self,
        engine: Engine,
        command: Command,
        job: Job,
        ws: Workspace,
        *,
        env: dict[str, str],
        timeout: float,
        log_path: Path,
        on_line: Callable[[str], None] | None = None,
    ) -> Path:
        """Run *command* for *job* in *ws*, appending the engine's output to
        *log_path* and passing each line to *on_line*; return the engine's
        output video.  Raises ``EngineTimeoutError`` past *timeout* seconds,
        the engine's own translated error, or ``EngineError``."""
