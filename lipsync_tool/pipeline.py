"""LipSyncPipeline: validate → resources → stage → engine → upscale → publish → report.

Usable from Python::

    result = LipSyncPipeline(engine="wav2lip", wav2lip_box=(90, 40, 300, 330)).run("face.png", "speech.mp3", "out.mp4")
    result.output, result.report["timings"]

The pipeline never prints: it reports to an :class:`Observer` (the CLI draws
progress from it) and raises :mod:`lipsync_tool.errors`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunOptions, Settings
from .engines import DEFAULT_ENGINE, get_engine, make_options, validation_to_usage
from .engines.base import Engine, EngineOptions, EngineRunner
from .engines.runner import SubprocessRunner
from .outputs import check_output_name, check_published, output_format, temp_output_path
from .run import Run, RunFailure, RunResult
from .tts.speech import Speech

__all__ = [
    "STAGES",
    "LipSyncPipeline",
    "Observer",
    "OptionInfo",
    "Run",
    "RunFailure",
    "RunResult",
    "check_output_name",
    "check_published",
    "list_options",
    "output_format",
    "split_options",
    "temp_output_path",
]

log = logging.getLogger(__name__)

STAGES = ("validate", "resources", "stage", "engine", "upscale", "publish")


class Observer:
    """Callbacks for progress.  Every method is optional to override."""

    def stage(self, name: str, detail: str = "") -> None: ...

    def engine_line(self, line: str) -> None: ...

    def progress(self, stage: str, fraction: float) -> None: ...

    def notice(self, title: str, text: str) -> None: ...

    def download_bar(self, label: str, total: int, initial: int):
        from .resources.download import no_progress

        return no_progress(label, total, initial)

    def waiting(self, what: str) -> None: ...


def split_options(engine: Engine, values: dict[str, Any]) -> tuple[RunOptions, EngineOptions]:
    """Common options and the engine's own, each validated by its model."""
    from pydantic import ValidationError

    common = {k: v for k, v in values.items() if k in RunOptions.model_fields and v is not None}
    rest = {k: v for k, v in values.items() if k not in RunOptions.model_fields and v is not None}
    common["engine"] = engine.name
    try:
        run = RunOptions(**common)
    except ValidationError as exc:
        raise validation_to_usage(exc) from None
    return run, make_options(engine, rest)


@dataclass(frozen=True)
class OptionInfo:
    """One keyword of :class:`LipSyncPipeline` (see :meth:`LipSyncPipeline.options`)."""

    #: The Python keyword (the CLI flag with ``-`` → ``_``, e.g. ``wav2lip_pads``).
    name: str
    #: The accepted type, as written in the model (``float``, ``Literal['pad', 'crop']``, …).
    type: str
    #: The default (None: decided at run time, see ``help``).
    default: Any
    help: str
    #: The engine that has this option, or None for an option of every engine.
    engine: str | None
    #: The CLI spelling.
    flag: str


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return text or str(annotation).replace("typing.", "").replace("pathlib.", "")


def list_options(engine: str | None = None) -> list[OptionInfo]:
    """Every keyword a pipeline takes: the common ones, then each engine's
    (only *engine*'s when given)."""
    from .constants import OPTION_HELP
    from .engines import engine_classes, flag_of

    found = [
        OptionInfo(name, _type_name(info.annotation), info.default, OPTION_HELP.get(name, ""), None, "--" + name.replace("_", "-"))
        for name, info in RunOptions.model_fields.items()
        if name != "engine"
    ]
    for ename, cls in engine_classes().items():
        if engine is not None and ename != engine:
            continue
        for name, meta in cls.Options.cli_options().items():
            info = cls.Options.model_fields[name]
            found.append(OptionInfo(name, _type_name(info.annotation), info.default, meta.help, ename, flag_of(name)))
    return found


def _options_doc() -> str:
    lines = ["", "Keywords (``LipSyncPipeline.options()`` returns them as :class:`OptionInfo`):", ""]
    for o in list_options():
        owner = f" [{o.engine}]" if o.engine else ""
        lines.append(f"    {o.name}: {o.type} = {o.default!r}{owner}\n        {o.help}")
    return "\n".join(lines)


class LipSyncPipeline:
    """One configured engine plus options; ``run()`` may be called many times.

    ``LipSyncPipeline(engine="wav2lip", fps=30, wav2lip_pads=(0, 20, 0, 0))``: the
    keywords are the CLI's options with ``_`` (listed below, and by
    :meth:`options`).  A bad value raises :class:`~lipsync_tool.errors.UsageError`
    naming the keyword.
    """

    @staticmethod
    def options(engine: str | None = None) -> list[OptionInfo]:
        """The keywords this class takes, typed and documented (one engine's with *engine*)."""
        return list_options(engine)

    def __init__(
        self,
        engine: str | None = None,
        *,
        observer: Observer | None = None,
        downloader=None,
        resources=None,
        device_decision=None,
        runner: EngineRunner | str | None = None,
        **options: Any,
    ):
        if isinstance(runner, str):  # --runner's value: "worker" or "subprocess"
            options["runner"], runner = runner, None
        self.engine: Engine = get_engine(engine or DEFAULT_ENGINE)
        self.options, self.engine_options = split_options(self.engine, options)
        self.observer = observer or Observer()
        self._downloader = downloader
        self.settings = Settings.from_env(cache_dir=self.options.cache_dir, offline=self.options.offline, registry=self.options.registry)
        #: An EngineResources to share between pipelines (batch runs pass one).
        self._resources = resources
        #: A runtime.DeviceDecision to share between pipelines with the same
        #: --device and --python (resolving it probes torch in a subprocess).
        self._device = device_decision
        #: How the engine's commands run (--runner; a warm worker by default).
        #: A runner passed in is shared (batch, compare) and closed by its owner.
        self._owns_runner = runner is None
        self.runner: EngineRunner = runner or make_runner(self.options.runner, self.engine)
        #: How the latest run that failed or was interrupted ended: its report,
        #: the temp dir kept for debugging, the outputs' notes.
        self.last_failure: RunFailure | None = None

    def close(self) -> None:
        """Stop the warm workers this pipeline started (not a runner it was given)."""
        if self._owns_runner:
            self.runner.close()

    def __enter__(self) -> LipSyncPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def device_decision(self):
        """The resolved device (None until a run has started)."""
        return self._device

    # -- resources (shared across runs: batch and compare reuse them) --------------------

    @property
    def resources(self):
        if self._resources is None:
            from .resources.download import Downloader
            from .resources.managers import resources_for

            downloader = self._downloader or Downloader(progress=self.observer.download_bar, on_wait=self.observer.waiting, offline=self.settings.offline)
            self._resources = resources_for(
                self.engine, self.settings.cache_dir, registry_file=self.settings.registry, offline=self.settings.offline, downloader=downloader, notice=self.observer.notice
            )
        return self._resources

    def prepare(self):
        """Clone and download what the options need (``setup`` and warm-up)."""
        self.observer.stage("resources")
        return self.resources.ensure(self.engine_options)

    # -- the run -------------------------------------------------------------------------

    def run(self, image: str | os.PathLike, audio: str | os.PathLike | Speech, output: str | os.PathLike | None) -> RunResult:
        """Validate, stage, render, upscale and publish one clip (OUTPUT may be
        None when the options ask for ``hls`` only).  *audio* may be text to
        speak: ``tts.Speech.from_text("Hello", voice="espeak-ng")``.

        A failure raises a :mod:`lipsync_tool.errors` error (or the unexpected
        one); :attr:`last_failure` then holds the run's report and the temp
        dir it kept for debugging."""
        job = self.start(image, audio, output)
        job.render()
        return job.finish()

    def start(self, image: str | os.PathLike, audio: str | os.PathLike | Speech, output: str | os.PathLike | None) -> Run:
        """Validate and stage the inputs (CPU only).  Then ``render()`` and ``finish()``."""
        run = Run(self, Path(image), audio if isinstance(audio, Speech) else Path(audio), Path(output) if output is not None else None)
        run.stage()
        return run

    def _device_and_python(self):
        from .runtime import engine_python, resolve_device

        python = engine_python(self.options.python)
        if self._device is None:
            self._device = resolve_device(self.options.device, python)
            dev = self._device.device
            if dev.kind == "cpu" and self.options.device == "auto":
                log.warning("running %s on the CPU (%s); this is much slower than a GPU", self.engine.display_name, dev.reason)
            log.info("device: %s (%s)", dev, dev.reason)
        return python, self._device


def make_runner(choice: str | None, engine: Engine | None = None) -> EngineRunner:
    """The runner --runner asks for: ``subprocess``; ``worker`` (refused for an
    engine without a worker adapter); None: a worker where the engine has one,
    its own CLI where it has none (the report says which ran)."""
    from .errors import UsageError

    if choice == "subprocess":
        return SubprocessRunner()
    from .engines.worker import WorkerRunner

    if choice == "worker":
        if engine is not None and not engine.worker_adapter:
            raise UsageError(f"{engine.display_name} has no warm worker", subject="--runner", hint="Use --runner subprocess.")
        return WorkerRunner()
    return WorkerRunner(fallback=SubprocessRunner())


try:
    LipSyncPipeline.__init__.__doc__ = "Configure *engine* with keyword options.\n" + _options_doc()
except Exception:
    log.debug("could not list the options for the docstring", exc_info=True)
