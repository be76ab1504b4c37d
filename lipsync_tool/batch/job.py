"""A batch's jobs: what each one is, where its files go, and the hooks that
show a batch's progress.  Plain data; :mod:`.plan` makes the jobs and
:mod:`.run` runs them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import RunOptions, Settings

#: Run options that do not change the result, so a changed value does not
#: make a finished job run again.  ``seed`` is compared only when set.
VOLATILE_OPTIONS = frozenset(
    {"engine", "seed", "keep_temp", "timeout", "overwrite", "report", "install_deps", "python", "cache_dir", "offline", "registry", "skip_face_check", "device"}
)
REPORT_FILE = "batch_report.jsonl"
JOB_REPORT_SUFFIX = ".report.json"

Status = Literal["ok", "failed", "skipped", "not_run", "interrupted", "pending"]


# -- jobs -------------------------------------------------------------------------------------


@dataclass
class Decision:
    """What to do with a job whose inputs are valid."""

    action: Literal["run", "skip", "blocked"]
    reason: str
    overwrite: bool = False


@dataclass
class BatchJob:
    index: int  # 1-based position among the manifest's jobs
    line: int
    engine: str
    image: Path
    audio: Path
    output: Path
    #: LipSyncPipeline keywords (the row merged over the defaults; typed).
    options: dict[str, Any]
    run_options: RunOptions | None = None
    engine_options: Any = None
    image_sha256: str | None = None
    audio_sha256: str | None = None
    audio_seconds: float | None = None
    face_is_video: bool = False
    decision: Decision = field(default_factory=lambda: Decision("run", "new"))
    group: ResourceGroup | None = None

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def report_path(self) -> Path:
        return job_report_path(self.output)

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**self.options, "report": self.report_path, "overwrite": self.decision.overwrite or bool(self.options.get("overwrite"))}

    def expected(self) -> dict[str, Any]:
        """What a finished run's report must say for this job to be skipped."""
        assert self.run_options is not None and self.engine_options is not None
        return {
            "engine": self.engine,
            "image_sha256": self.image_sha256,
            "audio_sha256": self.audio_sha256,
            "seed": self.run_options.seed,
            "options": result_options(self.run_options.model_dump(mode="json")),
            "engine_options": self.engine_options.resolved().model_dump(mode="json", exclude_none=True),
            "commit": self.group.commit if self.group else None,
        }


def job_report_path(output: Path) -> Path:
    return output.with_name(output.stem + JOB_REPORT_SUFFIX)


def default_output(image: Path, audio: Path, out_dir: Path) -> Path:
    return out_dir / f"{image.stem}_{audio.stem}.mp4"


def result_options(options: dict[str, Any]) -> dict[str, Any]:
    """The run options that define the output (see :data:`VOLATILE_OPTIONS`)."""
    return {k: v for k, v in options.items() if k in RunOptions.model_fields and k not in VOLATILE_OPTIONS}


# -- results ----------------------------------------------------------------------------------


@dataclass
class JobResult:
    job: BatchJob
    status: Status
    error: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    output_info: dict[str, Any] | None = None
    note: str = ""
    #: With ``batch --score``: the score columns (compare's), "not computed" with a reason where they could not be.
    scores: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        j = self.job
        return {
            "job": j.index,
            "line": j.line,
            "name": j.name,
            "engine": j.engine,
            "image": str(j.image),
            "audio": str(j.audio),
            "output": str(j.output),
            "report": str(j.report_path),
            "status": self.status,
            "note": self.note or None,
            "error": self.error,
            "timings": self.timings,
            "wall_s": round(self.wall_s, 3),
            "output_info": self.output_info,
            **(self.scores or {}),
        }



def media_summary(media: dict[str, Any] | None) -> dict[str, Any] | None:
    """A published video's summary for the batch report (from its run report's ``output.media``)."""
    if not media:
        return None
    v = media.get("video") or {}
    a = media.get("audio") or {}
    path = media.get("path")
    size = None
    if path:
        try:
            size = os.path.getsize(path)
        except OSError:
            pass
    return {
        "path": path,
        "width": v.get("width"),
        "height": v.get("height"),
        "fps": v.get("fps"),
        "duration": v.get("duration") or media.get("duration"),
        "video_codec": v.get("codec"),
        "audio_codec": a.get("codec"),
        "size_bytes": size,
    }



# -- shared resources -------------------------------------------------------------------------


@dataclass
class ResourceGroup:
    """One engine's resources in one cache, shared by every job that uses them."""

    engine: str
    settings: Settings
    resources: Any = None  # EngineResources, made by plan_batch
    commit: str | None = None
    seconds: float = 0.0  # spent preparing it

    @property
    def key(self) -> tuple:
        return (self.engine, str(self.settings.cache_dir), str(self.settings.registry), self.settings.offline)


# -- progress ---------------------------------------------------------------------------------


class BatchObserver:
    """Callbacks for a batch's progress.  Every method is optional to override."""

    def validating(self, files: int) -> None:
        """*files* distinct input files are about to be checked."""

    def file_checked(self) -> None: ...

    def setup_observer(self, engine: str):
        """The pipeline Observer for preparing *engine* (download bars, licence notice)."""
        from ..pipeline import Observer

        return Observer()

    def started(self, to_run: int, skipped: int) -> None: ...

    def job_observer(self, job: BatchJob):
        """The pipeline Observer for one job's stages."""
        from ..pipeline import Observer

        return Observer()

    def job_started(self, job: BatchJob) -> None: ...

    def job_finished(self, result: JobResult) -> None: ...

